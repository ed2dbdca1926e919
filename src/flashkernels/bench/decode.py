"""``flashkernels bench decode``: one-token decode over a KV cache, flashkernels'
``flash_attn_with_kvcache`` (contiguous and paged caches) against SDPA flash and SDPA cuDNN.

Shapes (Llama-3-8B-like attention: bf16, D = 128, Hq = 32, Hkv = 8, one query token):
    B = 16, cache 8192        and        B = 1, cache 131072
every row holding ``cache`` keys. flashkernels runs on the contiguous cache (B, S, Hkv, D) and on
paged caches with page 16 and page 256 (pages in a random order), split-KV chosen by its
heuristic (``num_splits=0``) unless ``--num-splits`` says otherwise.

Peers: ``torch.nn.functional.scaled_dot_product_attention`` pinned with
``torch.nn.attention.sdpa_kernel`` to FLASH_ATTENTION / CUDNN_ATTENTION, on q (B, Hq, 1, D) and
k, v (B, Hkv, S, D) contiguous (their preferred layout; SDPA has no paged cache, so they are timed
once, on the contiguous layout). Grouped-query: ``enable_gqa=True`` first; when a backend refuses
it, K/V expanded to Hq heads (a copy made outside the timing, which then reads Hq/Hkv times the
bytes); the ``gqa`` column says which was used.

Counting: bytes = K + V read = 2 * B * Hkv * S * D * e (e the element size; q, out and the lse
are < 0.1% here); TB/s = bytes / time. FLOPs = 4 * B * Hq * S * D. Timing with
``triton.testing.do_bench`` (median, L2 flushed between repetitions), all providers in one
process; ``--graph`` times CUDA-graph replays of each call instead (GPU time, no host time: how a
server that captures its decode step runs it).

The card's copy ceiling (issue 5's yardstick: a decode step at 95% of it): a device-to-device copy
of COPY_BYTES (or a quarter of the free memory, if less), (bytes read + written) / time, do_bench
median, measured once a run; the table's ``of copy`` column is each row's TB/s over it
(``--no-ceiling`` skips it).
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import DTYPES, CsvSink, do_bench_median, dtype_name, environment, gpu_missing, graph_ms, warm_gpu

OURS = "flashkernels"
PROVIDERS = ("flashkernels", "sdpa-flash", "sdpa-cudnn")
LAYOUTS = ("contig", "paged16", "paged256")
HEADS_Q, HEADS_KV, HEAD_DIM = 32, 8, 128
CASES = ((16, 8192), (1, 131072))  # (batch, cache length)
COPY_BYTES = 1 << 30  # the copy ceiling's buffer (bytes read, as many written)


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    seqlen_k: int
    heads_q: int = HEADS_Q
    heads_kv: int = HEADS_KV
    head_dim: int = HEAD_DIM

    def label(self) -> str:
        return f"b{self.batch} s{self.seqlen_k} h{self.heads_q}/{self.heads_kv} d{self.head_dim}"

    def kv_bytes(self, elt: int) -> int:
        return 2 * self.batch * self.heads_kv * self.seqlen_k * self.head_dim * elt

    def flops(self) -> float:
        return 4.0 * self.batch * self.heads_q * self.seqlen_k * self.head_dim


def _paged(cache: torch.Tensor, page: int, table: torch.Tensor) -> torch.Tensor:
    """The contiguous cache (B, S, H, D) stored as pages ``table[b, j]`` of ``page`` positions."""
    B, S, H, D = cache.shape
    out = torch.empty(B * (S // page), page, H, D, dtype=cache.dtype, device=cache.device)
    out[table.long().flatten()] = cache.reshape(B * (S // page), page, H, D)
    return out


def make_fn(provider: str, layout: str, s: DecodeShape, dtype: torch.dtype, num_splits: int):
    """(zero-argument callable, gqa note) for one provider on freshly drawn inputs."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, S, Hq, Hkv, D = s.batch, s.seqlen_k, s.heads_q, s.heads_kv, s.head_dim
    q = torch.randn(B, 1, Hq, D, device="cuda", dtype=dtype, generator=g)
    if provider == OURS:
        import flashkernels.ops.kvcache.api as kv

        kc = torch.randn(B, S, Hkv, D, device="cuda", dtype=dtype, generator=g)
        vc = torch.randn(B, S, Hkv, D, device="cuda", dtype=dtype, generator=g)
        lens = torch.full((B,), S, dtype=torch.int32, device="cuda")
        table = None
        if layout != "contig":
            page = int(layout.removeprefix("paged"))
            table = torch.randperm(B * (S // page), device="cuda", generator=g).view(B, S // page).to(torch.int32)
            kc, vc = _paged(kc, page, table), _paged(vc, page, table)
        return (lambda: kv.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table,
                                                    num_splits=num_splits, check_inputs=False,
                                                    backend="triton")), ""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[provider]
    qs = q.transpose(1, 2).contiguous()  # (B, Hq, 1, D)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype, generator=g)

    def native():
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(qs, k, v, enable_gqa=True)
    try:
        native()
        torch.cuda.synchronize()
        return native, "native"
    except RuntimeError:
        ke = k.repeat_interleave(Hq // Hkv, dim=1)
        ve = v.repeat_interleave(Hq // Hkv, dim=1)

        def expanded():
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(qs, ke, ve)
        return expanded, "expanded"


def measure(provider: str, layout: str, s: DecodeShape, dtype: torch.dtype, num_splits: int,
            warmup_ms: float, rep_ms: float, graph: bool = False) -> dict:
    """One row; ``graph``: the call captured in a CUDA graph (on a side stream, as
    common.measure_graph does) and the replay timed (run_decode_bench then writes the CSV row's
    mode as e.g. "contig-graph")."""
    row = dict(op="decode", provider=provider, dtype=dtype_name(dtype), batch=s.batch, heads_q=s.heads_q,
               heads_kv=s.heads_kv, seqlen_q=1, seqlen_k=s.seqlen_k, head_dim=s.head_dim, causal=False,
               mode=layout, gqa="")
    try:
        fn, gqa = make_fn(provider, layout, s, dtype, num_splits)
        row["gqa"] = gqa
        with torch.no_grad():
            if graph:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn()
                    torch.cuda.synchronize()
                    ms = graph_ms(fn, stream)
                if ms is None:
                    raise RuntimeError("the call could not be captured in a CUDA graph")
            else:
                fn()
                torch.cuda.synchronize()
                ms = do_bench_median(fn, warmup_ms, rep_ms)
        nbytes = s.kv_bytes(torch.finfo(dtype).bits // 8)
        row.update(ms=ms, tflops=s.flops() / ms / 1e9, gbps=nbytes / ms / 1e6)
    except Exception as exc:  # a peer that cannot run a shape is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    torch.cuda.empty_cache()
    return row


def copy_ceiling(warmup_ms: float = 25, rep_ms: float = 100) -> dict:
    """The copy ceiling's row: a device-to-device copy of COPY_BYTES (a quarter of the free memory
    if less) on the current CUDA device, ``gbps`` = (bytes read + written) / time, as ANCHORS.md
    counts it."""
    free, _ = torch.cuda.mem_get_info()
    n = min(COPY_BYTES, free // 4) // 16 * 16
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = do_bench_median(functools.partial(dst.copy_, src), warmup_ms, rep_ms)
    del src, dst
    torch.cuda.empty_cache()
    return dict(op="copy", provider="torch", dtype="uint8", batch=1, heads_q=0, heads_kv=0, seqlen_q=0,
                seqlen_k=n, head_dim=0, causal=False, mode="d2d", gqa="", ms=ms, tflops=0.0, gbps=2 * n / ms / 1e6)


def format_table(rows: list[dict], ceiling: dict | None = None) -> str:
    """One line per (shape, provider, layout): ms, TB/s of K+V read, ``of copy``: that over the
    copy ceiling's TB/s (``ceiling``: :func:`copy_ceiling`'s row; none: blank), and ``vs fk``: its
    time over flashkernels' contiguous time (above 1: flashkernels is faster)."""
    head = (f"{'shape':28s} {'provider':13s} {'layout':9s} {'gqa':9s} {'ms':>9s} {'TB/s':>7s} {'of copy':>8s} "
            f"{'vs fk':>8s}")
    lines = [head, "-" * len(head)]
    if ceiling is not None:
        lines.insert(0, f"copy ceiling: {ceiling['gbps'] / 1e3:.2f} TB/s (device-to-device copy of "
                        f"{ceiling['seqlen_k'] >> 20} MiB, bytes read + written)")
    ours = {(r["batch"], r["seqlen_k"]): r for r in rows
            if r["provider"] == OURS and r["mode"] == "contig" and "error" not in r}
    for r in rows:
        s = DecodeShape(r["batch"], r["seqlen_k"], r["heads_q"], r["heads_kv"], r["head_dim"])
        if "error" in r:
            lines.append(f"{s.label():28s} {r['provider']:13s} {r['mode']:9s} {'':9s} error: {r['error']}")
            continue
        o = ours.get((r["batch"], r["seqlen_k"]))
        ratio = f"x{r['ms'] / o['ms']:.2f}" if o else ""
        of_copy = f"{r['gbps'] / ceiling['gbps']:.1%}" if ceiling is not None else ""
        lines.append(f"{s.label():28s} {r['provider']:13s} {r['mode']:9s} {r['gqa']:9s} {r['ms']:9.4f} "
                     f"{r['gbps'] / 1e3:7.2f} {of_copy:>8s} {ratio:>8s}")
    return "\n".join(lines)


def run_decode_bench(cases=CASES, providers=PROVIDERS, layouts=LAYOUTS, dtype: torch.dtype = torch.bfloat16,
                     num_splits: int = 0, warmup_ms: float = 25, rep_ms: float = 100, csv_path=None,
                     verbose: bool = True, repeat: int = 1, graph: bool = False) -> list[dict]:
    """Time every (case, provider, layout) on the current CUDA device; return the result rows
    (and append them to ``csv_path`` when given). SDPA peers run once a case (contiguous).
    ``repeat`` > 1 runs the whole list that many times in this process, each time on freshly
    allocated inputs: the spread between runs is the measurement's (session 3 saw one kernel
    read 30-40% apart between processes, docs/perf-notes.md). ``graph``: GPU time of CUDA-graph
    replays (see :func:`measure`)."""
    why = gpu_missing("run_decode_bench")
    if why:
        raise RuntimeError(why)
    env = environment()
    sink = CsvSink(csv_path)
    rows = []
    warm_gpu()
    try:
        for run in range(repeat):
            for batch, seqlen in cases:
                s = DecodeShape(batch, seqlen)
                for provider in providers:
                    for layout in (layouts if provider == OURS else ("contig",)):
                        row = measure(provider, layout, s, dtype, num_splits, warmup_ms, rep_ms, graph)
                        row.update(env)
                        rows.append(row)
                        sink.write(dict(row, mode=row["mode"] + "-graph") if graph else row)  # CSV: mode says it
                        if verbose:
                            msg = row.get("error") or f"{row['ms']:.4f} ms {row['gbps'] / 1e3:.2f} TB/s"
                            tag = f" (run {run + 1}/{repeat})" if repeat > 1 else ""
                            print(f"{s.label()} {provider} {layout}{tag}: {msg}", flush=True)
    finally:
        sink.close()
    return rows


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", metavar="PATH", help="append one row per measurement to this CSV file")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    p.add_argument("--providers", metavar="LIST", help=f"comma-separated subset of {','.join(PROVIDERS)}")
    p.add_argument("--layouts", metavar="LIST", help=f"flashkernels cache layouts, subset of {','.join(LAYOUTS)}")
    p.add_argument("--cases", metavar="LIST", help="BATCHxCACHE,... (default 16x8192,1x131072)")
    p.add_argument("--num-splits", type=int, default=0, help="flashkernels num_splits (default 0 = heuristic)")
    p.add_argument("--warmup", type=float, default=25, metavar="MS", help="do_bench warm-up in ms (default 25)")
    p.add_argument("--rep", type=float, default=100, metavar="MS", help="do_bench repetitions in ms (default 100)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run every measurement N times in this process, on fresh inputs (default 1)")
    p.add_argument("--graph", action="store_true",
                   help="time CUDA-graph replays of each call (GPU time without the host's; default: eager calls)")
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the device-to-device copy that the 'of copy' column compares with")


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        print(f"--repeat: expected a count >= 1, got {args.repeat}", file=sys.stderr)
        return 2
    why = gpu_missing("flashkernels bench decode")
    if why:
        print(why, file=sys.stderr)
        return 2
    providers = tuple(p.strip() for p in (args.providers or ",".join(PROVIDERS)).split(",") if p.strip())
    layouts = tuple(x.strip() for x in (args.layouts or ",".join(LAYOUTS)).split(",") if x.strip())
    bad = [p for p in providers if p not in PROVIDERS] + [x for x in layouts if x not in LAYOUTS]
    if bad:
        print(f"--providers/--layouts: unknown {bad}", file=sys.stderr)
        return 2
    cases = CASES
    if args.cases:
        try:
            cases = tuple(tuple(int(x) for x in c.lower().split("x")) for c in args.cases.split(","))
        except ValueError:
            print(f"--cases: expected BATCHxCACHE,..., got {args.cases!r}", file=sys.stderr)
            return 2
    try:
        env = environment()
        print(f"flashkernels bench decode: {env['gpu']}, torch {env['torch']}, triton {env['triton']}, "
              f"code {env['git_sha']}, {args.dtype}, do_bench median of "
              f"{'CUDA-graph replays' if args.graph else 'eager calls'}", flush=True)
        rows = run_decode_bench(cases, providers, layouts, DTYPES[args.dtype], args.num_splits, args.warmup,
                                args.rep, args.csv, repeat=args.repeat, graph=args.graph)
        ceiling = None
        if not args.no_ceiling:
            ceiling = dict(copy_ceiling(args.warmup, args.rep), **env)
            if args.csv:
                sink = CsvSink(args.csv)
                sink.write(ceiling)
                sink.close()
    except RuntimeError as exc:
        print(f"flashkernels bench decode: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(rows, ceiling))
    return 1 if any("error" in r and r["provider"] == OURS for r in rows) else 0
