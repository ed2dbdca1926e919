"""flashkernels.bench.ops on a CPU: the byte counts, --ops parsing, the no-GPU exit, the goals
summary, and the plain-torch providers against the references. (The timings need a GPU.)"""
import argparse

import pytest
import torch

from flashkernels.bench import common, ops
from flashkernels.ops.rms_norm.reference import rms_norm_reference
from flashkernels.ops.rope.reference import rotary_emb_reference


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _parser():
    p = argparse.ArgumentParser(prog="flashkernels bench ops")
    ops.add_arguments(p)
    return p


# ----------------------------------------------------------------------------------- bytes
def test_rms_norm_bytes_small_shape():
    M, N = 3, 8
    x, dy, y, dx = (torch.empty(M, N, dtype=torch.bfloat16) for _ in range(4))
    w, dw = torch.empty(N, dtype=torch.bfloat16), torch.empty(N, dtype=torch.bfloat16)
    rstd = torch.empty(M, dtype=torch.float32)
    assert ops.rms_norm_bytes(M, N, 2) == _nbytes(x, w, y, rstd) == 2 * (2 * 24 + 8) + 12 == 124
    assert ops.rms_norm_bytes(M, N, 2, backward=True) == _nbytes(x, dy, w, rstd, dx, dw) == 188
    # fp32: the element size scales the tensors, not rstd
    assert ops.rms_norm_bytes(M, N, 4) == 4 * (2 * 24 + 8) + 12


def test_rms_norm_residual_bytes_small_shape():
    M, N = 3, 8
    x, r, y, h, dy, dh, dx = (torch.empty(M, N, dtype=torch.bfloat16) for _ in range(7))
    w, dw = torch.empty(N, dtype=torch.bfloat16), torch.empty(N, dtype=torch.bfloat16)
    rstd = torch.empty(M, dtype=torch.float32)
    assert ops.rms_norm_residual_bytes(M, N, 2) == _nbytes(x, r, w, y, h, rstd) == 2 * (4 * 24 + 8) + 12
    # the gradient of the residual has dx's values: counted once
    assert ops.rms_norm_residual_bytes(M, N, 2, backward=True) == _nbytes(dy, dh, h, w, rstd, dx, dw)


def test_swiglu_and_copy_bytes_small_shape():
    g, u, out, dout, dg, du = (torch.empty(5, 7, dtype=torch.bfloat16) for _ in range(6))
    assert ops.swiglu_bytes(35, 2) == _nbytes(g, u, out) == 210
    assert ops.swiglu_bytes(35, 2, backward=True) == _nbytes(dout, g, u, dg, du) == 350
    assert ops.copy_bytes(35, 2) == _nbytes(g, out) == 140


def test_rope_bytes_small_shape():
    B, S, H, D, R = 2, 5, 3, 8, 8
    x, out = torch.empty(B, S, H, D, dtype=torch.bfloat16), torch.empty(B, S, H, D, dtype=torch.bfloat16)
    cos, sin = torch.empty(S, R // 2, dtype=torch.bfloat16), torch.empty(S, R // 2, dtype=torch.bfloat16)
    assert ops.rope_bytes(B, S, H, D, R, 2) == _nbytes(x, cos, sin, out) == 2 * 240 * 2 + 2 * 20 * 2
    assert ops.rope_bytes(B, S, H, D, R, 2, backward=True) == ops.rope_bytes(B, S, H, D, R, 2)
    # partial rotary: the pass-through dims are still read and written, the tables shrink
    assert ops.rope_bytes(B, S, H, D, 4, 2) == 2 * 240 * 2 + 2 * 10 * 2


def test_issue_shapes_bytes():
    # RMSNorm 16384 x 4096 bf16 forward: x and y (128 MiB each), w, rstd
    assert ops.rms_norm_bytes(*ops.RMS_SHAPE, 2) == 2 * 2 * 16384 * 4096 + 2 * 4096 + 4 * 16384
    assert ops.swiglu_bytes(16384 * 14336, 2, backward=True) == 5 * 2 * 16384 * 14336
    assert ops.rope_bytes(*ops.ROPE_SHAPE, 128, 2) == 2 * 2 * 4 * 4096 * 32 * 128 + 2 * 2 * 4096 * 64


# ------------------------------------------------------------------------------- arguments
def test_ops_default_and_selection():
    a = _parser().parse_args([])
    assert a.ops == ops.OPS and a.csv is None and not a.no_backward
    a = _parser().parse_args(["--ops", " rope, RMSNorm ,rope", "--no-backward", "--csv", "x.csv"])
    assert a.ops == ("rmsnorm", "rope") and a.no_backward and a.csv == "x.csv"  # OPS order, no duplicates
    assert _parser().parse_args(["--ops", "all"]).ops == ops.OPS


@pytest.mark.parametrize("value, bad", [("rmsnorm,bogus", "'bogus'"), ("attention", "'attention'"), (",", "got")])
def test_ops_bad_name_is_a_clear_error(capsys, value, bad):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--ops", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ops" in err and bad in err
    assert "rmsnorm, residual, swiglu, rope, layer" in err


def test_layer_batch_default_and_bad_values(capsys):
    assert _parser().parse_args([]).layer_batch == 1
    assert _parser().parse_args(["--layer-batch", "4"]).layer_batch == 4
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args(["--layer-batch", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--layer-batch" in err and f"expected a positive integer, got {bad!r}" in err


def test_parse_ops_raises_argument_type_error():
    with pytest.raises(argparse.ArgumentTypeError, match="unknown ops 'a', 'b'"):
        ops.parse_ops("a,swiglu,b")


# -------------------------------------------------------------------------------------- run
def test_run_without_cuda_returns_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    csv = tmp_path / "ops.csv"
    args = _parser().parse_args(["--csv", str(csv)])
    assert ops.run(args) == 2
    out = capsys.readouterr()
    assert "flashkernels bench ops: needs a CUDA GPU" in out.err
    assert not csv.exists()  # nothing written


# ------------------------------------------------------------------------------------ goals
def test_goals_summary():
    rep = ops._Report(ops.CsvSink(None), {}, {ops.RMS_SHAPE: 1000.0, ops.SWIGLU_SHAPE: 4000.0})
    fwd_bytes = ops.rms_norm_bytes(*ops.RMS_SHAPE, 2)
    ms_at_96 = fwd_bytes / (0.96 * 1000.0) / 1e6  # 96% of the ceiling
    rep.ms[("rms_norm", "flashkernels", "fwd")] = ms_at_96
    rep.ms[("rms_norm", "compile", "fwd")] = 0.9 * ms_at_96  # compile faster: not met
    # eager timings (host time included) are reported, never used by the goals
    rep.ms[("rms_norm", "flashkernels", "fwd_eager")] = 100 * ms_at_96
    rep.ms[("rms_norm", "compile", "fwd_eager")] = 200 * ms_at_96
    rep.ms[("rms_norm_residual", "flashkernels", "fwd")] = 1.0
    rep.ms[("rms_norm_residual", "two_op", "fwd")] = 1.5
    rep.ms[("llama_layer", "flashkernels", "fwd+bwd")] = 10.0
    rep.ms[("llama_layer", "transformers_sdpa", "fwd+bwd")] = 12.0
    got = {what: (val, met) for what, val, met in ops.goals(rep, ("rmsnorm", "residual", "layer"), backward=False)}
    assert got["rms_norm fwd >= 95% of copy"][0] == pytest.approx(0.96) and got["rms_norm fwd >= 95% of copy"][1]
    assert got["rms_norm fwd >= 1.0x compile"] == (pytest.approx(0.9), False)
    assert got["rms_norm fwd >= 1.0x liger"] == (None, None)  # not measured: n/a
    assert got["rms_norm_residual fwd fused >= 1.4x two-op"] == (pytest.approx(1.5), True)
    assert got["llama_layer fwd+bwd >= 1.3x eager SDPA"] == (pytest.approx(1.2), False)
    assert not any(w.startswith(("swiglu", "rope")) or " bwd " in w for w in got)


def test_each_op_is_held_to_the_copy_of_its_own_size():
    """The issue's "about 2.85 TB/s" is the copy of the norm's size; SwiGLU's tensors are larger
    and so is their copy's bandwidth: each op gets the copy of its own element count."""
    assert ops.ceiling_shape("rms_norm") == ops.ceiling_shape("rms_norm_residual") == ops.RMS_SHAPE
    assert ops.ceiling_shape("swiglu") == ops.SWIGLU_SHAPE
    assert ops.ceiling_shape("rope") == ops.RMS_SHAPE
    assert torch.Size(ops.ROPE_SHAPE).numel() == torch.Size(ops.RMS_SHAPE).numel()
    rep = ops._Report(ops.CsvSink(None), {}, {ops.RMS_SHAPE: 1000.0, ops.SWIGLU_SHAPE: 4000.0})
    n = torch.Size(ops.SWIGLU_SHAPE).numel()
    rep.ms[("swiglu", "flashkernels", "fwd")] = ops.swiglu_bytes(n, 2) / (0.5 * 4000.0) / 1e6
    got = {what: (val, met) for what, val, met in ops.goals(rep, ("swiglu",), backward=False)}
    assert got["swiglu fwd >= 95% of copy"] == (pytest.approx(0.5), False)  # 50% of 4000, not 200% of 1000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measure_times_the_gpu_through_a_cuda_graph():
    """Forward and backward of a Triton op are captured (GPU times present) and no slower than
    the eager call, and the graph replays compute what the eager call computes."""
    import flashkernels

    x = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    m = common.measure_graph(lambda: flashkernels.rms_norm(x, w, backend="triton"), (x, w), backward=True)
    assert all(m[k] is not None and m[k] > 0 for k in ("fwd", "bwd", "fwd_eager", "bwd_eager"))
    assert m["fwd"] <= m["fwd_eager"] * 1.05 and m["bwd"] <= m["bwd_eager"] * 1.05
    out = {}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            out["y"] = flashkernels.rms_norm(x.detach(), w.detach(), backend="triton")
        g.replay()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    torch.testing.assert_close(out["y"], flashkernels.rms_norm(x.detach(), w.detach(), backend="triton"),
                               rtol=0, atol=0)


# ------------------------------------------------------------------------------- providers
def test_torch_providers_are_the_references():
    torch.manual_seed(0)
    x, r = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(4, 16, dtype=torch.bfloat16)
    w = torch.randn(16, dtype=torch.bfloat16)
    assert torch.equal(ops._torch_rms_norm(x, w), rms_norm_reference(x, w, ops.EPS))
    y, h = ops._torch_rms_norm_residual(x, r, w)
    assert torch.equal(h, x + r) and torch.equal(y, rms_norm_reference(x + r, w, ops.EPS))
    g, u = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(ops._torch_swiglu(g, u), torch.nn.functional.silu(g) * u)
    cos, sin = ops.rope_tables(6, 8, "cpu", torch.float32)
    assert cos.shape == sin.shape == (6, 4)
    assert torch.allclose(cos ** 2 + sin ** 2, torch.ones(6, 4))
    assert torch.equal(cos[0], torch.ones(4)) and torch.allclose(sin[1, 0], torch.tensor(1.0).sin())
    xr = torch.randn(2, 6, 3, 8)
    assert torch.equal(ops._torch_rope(xr, cos, sin), rotary_emb_reference(xr, cos, sin))


def test_bench_decode_refuses_a_bad_repeat_count(capsys):
    """`flashkernels bench decode --repeat N` checks N before it looks for a GPU."""
    from flashkernels.cli import main

    assert main(["bench", "decode", "--repeat", "0"]) == 2
    assert "--repeat: expected a count >= 1, got 0" in capsys.readouterr().err


def test_bench_decode_table_reads_rows_against_the_copy_ceiling():
    """format_table's ``of copy`` column: each row's K+V TB/s over the copy ceiling's (read + written)
    TB/s, blank without a ceiling; ``vs fk``: time over flashkernels' contiguous time; the ceiling's
    line names its TB/s and buffer."""
    from flashkernels.bench import decode

    base = dict(op="decode", dtype="bf16", batch=16, heads_q=32, heads_kv=8, seqlen_q=1, seqlen_k=8192,
                head_dim=128, causal=False, gqa="", tflops=0.0)
    rows = [dict(base, provider="flashkernels", mode="contig", ms=0.10, gbps=4000.0),
            dict(base, provider="flashkernels", mode="paged16", ms=0.125, gbps=3200.0),
            dict(base, provider="sdpa-cudnn", mode="contig", ms=0.08, gbps=5000.0)]
    ceiling = dict(op="copy", provider="torch", seqlen_k=1 << 30, gbps=5000.0, ms=0.43)
    lines = decode.format_table(rows, ceiling).splitlines()
    assert lines[0] == "copy ceiling: 5.00 TB/s (device-to-device copy of 1024 MiB, bytes read + written)"
    assert "of copy" in lines[1]
    body = lines[3:]
    assert body[0].split()[-3:] == ["4.00", "80.0%", "x1.00"], body[0]
    assert body[1].split()[-3:] == ["3.20", "64.0%", "x1.25"], body[1]
    assert body[2].split()[-3:] == ["5.00", "100.0%", "x0.80"], body[2]
    plain = decode.format_table(rows).splitlines()
    assert "copy ceiling" not in plain[0] and plain[2].split()[-2:] == ["4.00", "x1.00"]


class _FakeClock:
    """A clock whose time the fake calls advance: paired_ms's marks read it."""

    def __init__(self):
        self.now = 0.0
        self.synced = False

    def mark(self):
        return self.now

    def sync(self):
        self.synced = True

    def elapsed(self, a, b):
        return b - a


def test_paired_ms_alternates_and_pairs_each_repetition():
    """paired_ms runs the calls in an order rotated by repetition (A B, B A, ...), flushes before
    each, and returns one time per call and repetition: with a clock that drifts (each call slower
    than the one before) the per-repetition ratio stays the variants' true ratio where medians of
    the two lists alone would not."""
    clock = _FakeClock()
    order, flushes = [], []

    def call(name, cost):
        def f():
            order.append(name)
            clock.now += cost * (1 + 0.01 * len(order))  # (a drift: 1% slower per call)
        return f

    t_a, t_b = common.paired_ms([call("a", 2.0), call("b", 1.0)], reps=4, flush=lambda: flushes.append(1),
                                clock=clock)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(flushes) == 8 and clock.synced
    assert len(t_a) == len(t_b) == 4
    ratio, p10, p90 = common.paired_ratio(t_a, t_b)
    assert ratio == pytest.approx(2.0, rel=0.02) and p10 <= ratio <= p90
    assert common.paired_ratio([1.0, 2.0, 4.0], [1.0, 1.0, 1.0]) == pytest.approx((2.0, 1.2, 3.6))


@pytest.mark.parametrize("calls,reps", [([], 3), ([lambda: None], 0)])
def test_paired_ms_refuses_no_calls_or_reps(calls, reps):
    with pytest.raises(ValueError):
        common.paired_ms(calls, reps=reps, clock=_FakeClock())


def test_paired_ratio_refuses_unequal_lists():
    with pytest.raises(ValueError):
        common.paired_ratio([1.0], [1.0, 2.0])


def test_capture_calls_warms_each_call_and_names_one_that_cannot_be_captured(monkeypatch):
    """capture_calls runs each call once before capturing it, returns the graphs in order, and
    raises naming the first call capture_graph could not capture (CUDA graphs stubbed: CPU)."""
    ran = []
    fns = [lambda: ran.append("a"), lambda: ran.append("b")]
    monkeypatch.setattr(common.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(common, "capture_graph", lambda fn, stream: f"graph of {fns.index(fn)}")
    assert common.capture_calls(fns, stream=None) == ["graph of 0", "graph of 1"]
    assert ran == ["a", "b"]
    monkeypatch.setattr(common, "capture_graph", lambda fn, stream: None if fn is fns[1] else "g")
    with pytest.raises(RuntimeError, match="call 1 could not be captured"):
        common.capture_calls(fns, stream=None)


# ------------------------------------------------------------------------------- bench attention
def test_bench_attention_graph_flag_parses_and_needs_a_gpu(monkeypatch, capsys):
    """``flashkernels bench attention --graph`` is an option of the command (CUDA-graph replays), and
    without a GPU the command says so and exits 2 before measuring anything."""
    import argparse

    from flashkernels.bench import attention

    p = argparse.ArgumentParser()
    attention.add_arguments(p)
    assert p.parse_args(["--graph"]).graph and not p.parse_args([]).graph
    monkeypatch.setattr(attention, "gpu_missing", lambda what: f"{what}: no CUDA GPU")
    assert attention.run(p.parse_args(["--graph", "--quick"])) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_attention_measures_cuda_graph_replays():
    """bench attention's measure with graph=True: forward and backward timed from CUDA-graph replays
    (present, positive, no slower than the eager calls by more than the timing's spread), with the
    same FLOP count per ms as its eager row."""
    from flashkernels.bench import attention

    s = attention.Shape(4, 8, 8, 512, 512, 64, True)
    for mode in ("fwd", "bwd"):
        inputs = attention.make_inputs(s, torch.bfloat16, requires_grad=mode == "bwd")
        eager = attention.measure("flashkernels", s, mode, torch.bfloat16, 25, 100, inputs)
        graph = attention.measure("flashkernels", s, mode, torch.bfloat16, 25, 100, inputs, graph=True)
        assert "error" not in eager and "error" not in graph, (eager, graph)
        assert 0 < graph["ms"] <= eager["ms"] * 1.1, (mode, graph["ms"], eager["ms"])
        assert graph["tflops"] == pytest.approx(attention.flops(s, mode) / graph["ms"] / 1e9)


def test_bench_attention_paired_flag_checks_its_count_then_needs_a_gpu(monkeypatch, capsys):
    """``flashkernels bench attention --paired N`` (every provider's graph replayed in alternation) refuses a
    negative N before it looks for a GPU; without a GPU it says so and exits 2."""
    from flashkernels.bench import attention
    from flashkernels.cli import main

    assert main(["bench", "attention", "--paired", "-2"]) == 2
    assert "--paired must be 0 or more, got -2" in capsys.readouterr().err
    monkeypatch.setattr(attention, "gpu_missing", lambda what: f"{what}: no CUDA GPU")
    assert main(["bench", "attention", "--paired", "5", "--quick"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_bench_attention_paired_rows_are_each_providers_median(monkeypatch):
    """measure_paired (CUDA stubbed): each provider's call prepared and captured, the captured graphs handed to
    paired_ms in provider order, each row's ms the median of its provider's times there (TFLOP/s from it); a
    provider whose call fails, or that cannot be captured, gets an error row and stays out of the replays."""
    import contextlib

    from flashkernels.bench import attention

    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def prepare(provider, s, mode, inputs):
        if provider == "sdpa-efficient":
            raise RuntimeError("no kernel for this shape\nsecond line")
        return (lambda: provider), {"flashkernels": 2 ** 20, "sdpa-flash": 3 * 2 ** 20, "flex": 0}[provider]

    class Graph:
        def __init__(self, name):
            self.replay = name

    monkeypatch.setattr(attention, "_prepare", prepare)
    monkeypatch.setattr(attention, "capture_graph", lambda call, stream: None if call() == "flex" else Graph(call()))
    seen = {}
    times = {"flashkernels": [1.0, 6.0, 2.0], "sdpa-flash": [4.0, 9.0, 5.0]}  # (medians 2 and 5, means 3 and 6)

    def paired(calls, reps):
        seen["calls"], seen["reps"] = list(calls), reps
        return [times[c] for c in calls]

    monkeypatch.setattr(attention, "paired_ms", paired)
    s = attention.Shape(2, 4, 4, 256, 256, 64, False)
    inputs = (torch.zeros(1, dtype=torch.bfloat16),) * 3
    rows = attention.measure_paired(["flashkernels", "sdpa-efficient", "sdpa-flash", "flex"], s, "fwd",
                                    torch.bfloat16, inputs, 3)
    assert seen == {"calls": ["flashkernels", "sdpa-flash"], "reps": 3}
    by = {r["provider"]: r for r in rows}
    assert [r["provider"] for r in rows] == ["flashkernels", "sdpa-efficient", "sdpa-flash", "flex"]
    assert by["flashkernels"]["ms"] == 2.0 and by["sdpa-flash"]["ms"] == 5.0
    assert by["flashkernels"]["tflops"] == pytest.approx(attention.flops(s, "fwd") / 2.0 / 1e9)
    assert by["flashkernels"]["peak_mem_mb"] == 1.0 and by["sdpa-flash"]["peak_mem_mb"] == 3.0
    assert by["sdpa-efficient"]["error"] == "RuntimeError: no kernel for this shape" and "ms" not in by["sdpa-efficient"]
    assert "could not be captured" in by["flex"]["error"] and "ms" not in by["flex"]
    assert all("peak" not in r for r in rows)


def test_bench_attention_measure_prepares_each_mode(monkeypatch):
    """measure (CUDA's memory counters and the timer stubbed, SDPA's math on CPU tensors as the provider): the
    forward's call runs under no_grad, the backward's is autograd.grad over a retained graph (repeatable, the
    three gradients), each run before its peak memory is read; a provider that raises gets an error row."""
    from flashkernels.bench import attention

    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5 * 2 ** 20)
    monkeypatch.setattr(attention, "make_fn", lambda provider, q, k, v, s: (
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=s.causal)))
    outs = {}

    def timed(call, warmup_ms, rep_ms, stream):
        outs[mode] = (call(), call())
        return 2.0

    monkeypatch.setattr(attention, "_timed", timed)
    s = attention.Shape(1, 2, 2, 16, 16, 8, True)
    for mode in ("fwd", "bwd"):
        q, k, v = (torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3))  # (the forward: no graph kept)
        row = attention.measure("flashkernels", s, mode, torch.float32, 1, 1, (q, k, v))
        assert "error" not in row and row["ms"] == 2.0 and row["peak_mem_mb"] == 5.0, row
        assert row["tflops"] == pytest.approx(attention.flops(s, mode) / 2.0 / 1e9)
        first, second = outs[mode]
        if mode == "fwd":
            assert first.shape == q.shape and not first.requires_grad
        else:
            assert [g.shape for g in second] == [q.shape, k.shape, v.shape]
            assert all(torch.equal(a, b) for a, b in zip(first, second))
    monkeypatch.setattr(attention, "make_fn", lambda *a: (_ for _ in ()).throw(ValueError("unsupported")))
    assert attention.measure("flex", s, "fwd", torch.float32, 1, 1, (q, k, v))["error"] == "ValueError: unsupported"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_attention_paired_times_every_provider():
    """measure_paired on a small shape, forward and backward: flashkernels and SDPA flash timed in alternating
    replays, each row with a positive median and TF/s, within 2x of its own --graph timing."""
    from flashkernels.bench import attention

    s = attention.Shape(4, 8, 8, 512, 512, 64, True)
    for mode in ("fwd", "bwd"):
        inputs = attention.make_inputs(s, torch.bfloat16, requires_grad=mode == "bwd")
        rows = attention.measure_paired(["flashkernels", "sdpa-flash"], s, mode, torch.bfloat16, inputs, 6)
        for r in rows:
            assert "error" not in r, r
            alone = attention.measure(r["provider"], s, mode, torch.bfloat16, 25, 100, inputs, graph=True)
            assert 0.5 * alone["ms"] < r["ms"] < 2 * alone["ms"], (mode, r, alone["ms"])
            assert r["tflops"] == pytest.approx(attention.flops(s, mode) / r["ms"] / 1e9)


# ------------------------------------------------------------------------------- bench varlen
def test_bench_varlen_paired_flag_checks_its_count_then_needs_a_gpu(monkeypatch, capsys):
    """``flashkernels bench varlen --paired N`` (varlen's TF/s over dense's from alternating graph
    replays) refuses a negative N before it looks for a GPU; without a GPU it says so and exits 2."""
    from flashkernels.bench import features
    from flashkernels.cli import main

    assert main(["bench", "varlen", "--paired", "-1"]) == 2
    assert "--paired must be 0 or more, got -1" in capsys.readouterr().err
    monkeypatch.setattr(features, "gpu_missing", lambda what: f"{what}: no CUDA GPU")
    assert main(["bench", "varlen", "--paired", "4"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_varlen_paired_prints_the_ratio(capsys):
    """``bench varlen --paired 3 --no-backward`` prints, per causal setting, the table's rows and the
    paired forward's line: both medians and varlen / dense TF/s between its 10th and 90th percentile."""
    import re

    from flashkernels.cli import main

    assert main(["bench", "varlen", "--paired", "3", "--no-backward"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "paired fwd" in ln]
    assert len(lines) == 2, lines
    for ln in lines:
        med, lo, hi = map(float, re.search(r"TF/s ([\d.]+) \[([\d.]+), ([\d.]+)\]", ln).groups())
        assert 0.3 < lo <= med <= hi < 2.0, ln
