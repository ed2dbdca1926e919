"""The ``flashkernels`` command: ``info``, ``check``, ``bench``.

    flashkernels info [--json]        what was detected, and which backend each op picks, and why
    flashkernels check                every attention kernel on this machine vs float64 math
    flashkernels bench attention      flashkernels vs SDPA flash/cuDNN/efficient and FlexAttention
    flashkernels bench decode         KV-cache decode vs SDPA flash/cuDNN (K+V TB/s)
    flashkernels bench varlen         packed sequences vs the dense kernel at their mean length
    flashkernels bench ops            RMSNorm / residual / SwiGLU / RoPE vs copy, compile, Liger; Llama layer
    flashkernels bench features       softcap / ALiBi / sink / sliding-window overhead
    flashkernels memory ...           peak extra memory of attention, naive vs flashkernels

Also runs as ``python -m flashkernels``. Exit codes: 0 success, 1 a check failed (or our kernel
failed in a benchmark), 2 usage error or nothing to do on this machine (``bench`` on a CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from . import __version__, _backend

REEXEC_VAR = "_FLASHKERNELS_CHECK_REEXEC"
OP_NAMES = ("sdpa", "flash_attn_func")
DTYPES = (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32))


# ----------------------------------------------------------------------------------------- info
def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def backend_table(device: torch.device) -> list[dict]:
    """For each op and dtype on ``device``: what ``auto`` picks and why; and, when
    ``$FLASHKERNELS_BACKEND`` is set, what that request resolves to (or why it would fail)."""
    from ._validate import KERNEL_DTYPES

    env = os.environ.get(_backend.ENV_VAR, "").strip() or None
    rows = []
    for op in OP_NAMES:  # both ops dispatch through the same resolution (api._attention)
        for name, dt in DTYPES:
            row = {"op": op, "dtype": name, "device": str(device)}
            kw = dict(dtype_ok=dt in KERNEL_DTYPES, dtype=dt)
            choice = _backend.resolve(device, "auto", **kw)
            row["auto"] = {"backend": choice.backend, "reason": choice.reason}
            if env is not None:
                try:
                    c = _backend.resolve(device, None, **kw)
                    row["env"] = {"request": env, "backend": c.backend, "reason": c.reason}
                except (RuntimeError, ValueError) as exc:
                    row["env"] = {"request": env, "backend": None, "reason": str(exc)}
            if device.type == "cpu" and dt == torch.bfloat16 and _backend.interpreter_enabled():
                row["note"] = "Triton's interpreter cannot run bf16: a triton request will fail"
            rows.append(row)
    return rows


def hopper_fwd_info(device: torch.device) -> dict:
    """{"active": bool, "text": str}: whether the attention forward takes the Gluon Hopper kernel
    on ``device`` (for the cases it covers), and why not."""
    from .selfcheck import hopper_fwd_status

    active, text = hopper_fwd_status(device)
    return {"active": active, "text": text}


def cmd_info(args: argparse.Namespace) -> int:
    summary = _backend.device_summary()
    device = _default_device()
    table = backend_table(device)
    hopper = hopper_fwd_info(device)
    if args.json:
        print(json.dumps({"flashkernels": __version__, **summary, "default_device": str(device),
                          "ops": table, "hopper_fwd": hopper}, indent=2))
        return 0
    print(f"flashkernels {__version__}")
    print(f"torch {summary['torch']}, triton {summary['triton']}, python {sys.version.split()[0]}")
    if summary["cuda_available"]:
        print(f"CUDA runtime {summary.get('cuda_runtime')}")
        for d in summary["devices"]:
            print(f"  GPU {d['index']}: {d['name']}, compute capability {d['capability']}, "
                  f"{d['memory_gib']} GiB, {d['multiprocessors']} SMs")
    else:
        print("CUDA: no GPU visible to torch (CPU only)")
    print(f"TRITON_INTERPRET: {'on' if summary['interpreter'] else 'off'}")
    env = summary["env_backend"]
    print(f"{_backend.ENV_VAR}: {env if env else 'unset (auto)'}")
    print(f"Hopper attention forward (Gluon): {hopper['text']}")
    print(f"\nbackend per op on the default device ({device}):")
    env_col = f"{_backend.ENV_VAR}={env}" if env else None
    head = f"  {'op':16s} {'dtype':5s} {'auto picks':10s}"
    if env_col:
        head += f" {env_col:{max(24, len(env_col))}s}"
    print(head + " why (auto)")
    notes: list[str] = []

    def ref(text: str) -> str:  # footnote numbers for long, repeated reasons
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    for r in table:
        line = f"  {r['op']:16s} {r['dtype']:5s} {r['auto']['backend']:10s}"
        if env_col:
            e = r["env"]
            got = f"{e['backend']}" if e["backend"] else f"error {ref(e['reason'])}"
            line += f" {got:{max(24, len(env_col))}s}"
        line += f" {r['auto']['reason']}"
        if "note" in r:
            line += f" {ref(r['note'])}"
        print(line)
    for i, text in enumerate(notes, 1):
        print(f"  [{i}] {text}")
    return 0


# ---------------------------------------------------------------------------------------- check
def _reexec(argv: list[str], env_changes: dict[str, str | None]) -> None:
    """Start this command again in a fresh interpreter with the environment changed: Triton
    decides at @triton.jit time whether kernels are interpreted, so once the kernel modules are
    imported the flag can no longer change in this process."""
    if os.environ.get(REEXEC_VAR):
        raise RuntimeError("flashkernels check: re-executing did not take effect; set TRITON_INTERPRET "
                           "yourself (1 on a CPU, unset on a GPU) and run again")
    env = dict(os.environ)
    for k, val in env_changes.items():
        if val is None:
            env.pop(k, None)
        else:
            env[k] = val
    env[REEXEC_VAR] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "flashkernels", *argv], env)


def _check_device(arg: str) -> torch.device:
    if arg == "cpu":
        return torch.device("cpu")
    if arg == "cuda" and not torch.cuda.is_available():
        raise SystemExit("flashkernels check: --device cuda asked, but torch sees no CUDA GPU")
    return _default_device()


def cmd_check(args: argparse.Namespace) -> int:
    from . import selfcheck

    device = _check_device(args.device)
    backends = ("triton", "reference") if args.backend == "all" else (args.backend,)
    # TRITON_INTERPRET must be settled before triton.language is first imported: its own
    # @jit helpers (tl.max, tl.sum, ...) are decorated then, and compiled-mode helpers cannot be
    # called from an interpreted kernel. So no triton import (not even _backend's probe) before.
    if device.type == "cpu" and "triton" in backends and not _backend.interpreter_enabled():
        if selfcheck.triton_imported():
            _reexec(args.argv, {"TRITON_INTERPRET": "1"})
        os.environ["TRITON_INTERPRET"] = "1"
    if device.type == "cuda" and _backend.interpreter_enabled():
        if selfcheck.triton_imported():
            _reexec(args.argv, {"TRITON_INTERPRET": None})
        os.environ.pop("TRITON_INTERPRET", None)
    skipped = None
    if "triton" in backends and _backend.triton_import_error() is not None:
        skipped = f"Triton kernels not checked: triton does not import ({_backend.triton_import_error()})"
        backends = tuple(b for b in backends if b != "triton")
    if _backend.interpreter_enabled():
        selfcheck.interpreter_compat()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mode = ""
    if device.type == "cpu" and "triton" in backends:
        mode = ", Triton kernels through the interpreter (TRITON_INTERPRET=1)"
    print(f"flashkernels check: {where} ({device}), torch {torch.__version__}, "
          f"triton {_backend.triton_version() or 'none'}{mode}", flush=True)
    if skipped:
        print(skipped, flush=True)
    if "triton" in backends:
        print(f"Hopper attention forward (Gluon): {selfcheck.hopper_fwd_status(device)[1]}", flush=True)
    report = selfcheck.run(device, backends, seed=args.seed, verbose=args.verbose,
                           plan=None if args.plan == "auto" else args.plan)
    n, bad = len(report.rows), report.failed
    print()
    if bad:
        print(f"FAILED {len(bad)} of {n} comparisons:")
        for r in bad:
            print("  " + selfcheck.format_row(r))
    print(f"check: {n - len(bad)} of {n} comparisons within bounds, {len(bad)} outside, "
          f"in {report.seconds:.1f} s")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------- bench
def cmd_bench_attention(args: argparse.Namespace) -> int:
    from .bench import attention

    return attention.run(args)


# --------------------------------------------------------------------------------------- memory
def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _sm_count_here() -> int:
    """This machine's default GPU's SM count (132, an H100's or H200's, without one)."""
    if not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _hopper_here() -> bool:
    """Whether this machine's default GPU runs the Gluon Hopper kernels."""
    if not torch.cuda.is_available():
        return False
    from .selfcheck import hopper_fwd_status

    return hopper_fwd_status(torch.device("cuda", torch.cuda.current_device()))[0]


def cmd_memory(args: argparse.Namespace) -> int:
    from .ops.attention.memory import attention_memory

    try:
        m = attention_memory(args.batch, args.heads, args.seqlen, args.head_dim, kv_heads=args.kv_heads,
                             seqlen_k=args.seqlen_k, dtype=args.dtype, causal=args.causal, device=args.device,
                             hopper=_hopper_here() if args.hopper == "auto" else args.hopper == "yes",
                             sms=_sm_count_here())
    except ValueError as exc:
        print(f"flashkernels memory: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
        return 0
    print(f"attention memory: B={m.batch} Hq={m.heads} Hkv={m.kv_heads} Sq={m.seqlen_q} Sk={m.seqlen_k} "
          f"D={m.head_dim} {m.dtype}{' causal' if m.causal else ''}; peak bytes beyond q, k, v (and grad_out)")
    print(f"  {'':9s} {'naive (SDPA math)':>18s} {'flashkernels':>14s} {'reduction':>10s}")
    for name, naive, ours, red in (("forward", m.naive_forward, m.flash_forward, m.forward_reduction_pct),
                                   ("backward", m.naive_backward, m.flash_backward, m.backward_reduction_pct)):
        print(f"  {name:9s} {_fmt_bytes(naive):>18s} {_fmt_bytes(ours):>14s} {red:9.1f}%")
    return 0


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="flashkernels", formatter_class=fmt,
        description="flashkernels: flash attention in Triton, with an exact PyTorch path.",
        epilog="Run `flashkernels COMMAND --help` for each command's options.")
    p.add_argument("--version", action="version", version=f"flashkernels {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pi = sub.add_parser(
        "info", formatter_class=fmt, help="what was detected, and which backend each op picks",
        description="Print the devices (name, compute capability, memory), torch and triton versions, "
                    "TRITON_INTERPRET and FLASHKERNELS_BACKEND, and for each op (sdpa, flash_attn_func) "
                    "and dtype (fp16, bf16, fp32) on the default device which backend `auto` picks and "
                    "why (and what FLASHKERNELS_BACKEND resolves to, when set).")
    pi.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    pi.set_defaults(func=cmd_info)

    pc = sub.add_parser(
        "check", formatter_class=fmt, help="run every attention kernel here against float64 math",
        description="Run each attention op (sdpa, flash_attn_func) on each backend this machine has, "
                    "forward and backward, and compare with a float64 reference.\n\n"
                    "Pass rule (the test suite's, shared/TESTING.md):\n"
                    "  forward   max|out - ref| <= 2 * max|pt - ref| + atol\n"
                    "  gradients max|g - g_ref| <= 3 * max|g_pt - g_ref| + atol\n"
                    "pt: the reference computed in the input dtype; atol: one rounding step of the dtype\n"
                    "at max|ref|; fp32 outputs also within 1e-5.\n\n"
                    "On a GPU: the compiled Triton kernels, fp16/bf16/fp32, causal, masks, GQA, medium\n"
                    "shapes. On a CPU: the reference path, and the Triton kernels through Triton's\n"
                    "interpreter on small fp32/fp16 shapes (TRITON_INTERPRET=1 is set automatically;\n"
                    "about 20 s on 2 cores).\n\nExit code 1 if any comparison fails.")
    pc.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to run (default: the GPU if there is one, else the CPU)")
    pc.add_argument("--backend", choices=("all", "triton", "reference"), default="all",
                    help="which backends to check (default all)")
    pc.add_argument("--plan", choices=("auto", "cpu", "gpu"), default="auto",
                    help="which list of cases: the small CPU one or the medium GPU one (default: "
                         "by device; `--plan gpu --backend reference` on a CPU dry-runs the GPU list)")
    pc.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    pc.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of errors")
    pc.set_defaults(func=cmd_check)

    pb = sub.add_parser(
        "bench", formatter_class=fmt, help="time flashkernels against its peers (GPU only)",
        description="Benchmarks, one sub-command per op. GPU only: on a CPU they say so and exit 2.")
    bsub = pb.add_subparsers(dest="bench_op", metavar="OP")
    from .bench import attention as bench_attention  # light: no triton import until run

    pa = bsub.add_parser("attention", formatter_class=fmt, help="attention forward and backward",
                         description=bench_attention.__doc__)
    bench_attention.add_arguments(pa)
    pa.set_defaults(func=cmd_bench_attention)
    from .bench import decode as bench_decode  # light: no triton import until run

    pd = bsub.add_parser("decode", formatter_class=fmt, help="KV-cache decode (flash_attn_with_kvcache) vs SDPA",
                         description=bench_decode.__doc__)
    bench_decode.add_arguments(pd)
    pd.set_defaults(func=lambda a: bench_decode.run(a))
    from .bench import features as bench_features

    for name, fn, hlp in (("varlen", bench_features.run_varlen, "packed sequences vs the dense kernel"),
                          ("features", bench_features.run_features,
                           "softcap / ALiBi / sink / sliding-window overhead vs plain attention")):
        pf = bsub.add_parser(name, formatter_class=fmt, help=hlp, description=bench_features.__doc__)
        bench_features.add_arguments(pf)
        pf.set_defaults(func=fn)
    from .bench import ops as bench_ops

    po = bsub.add_parser("ops", formatter_class=fmt,
                         help="RMSNorm, residual norm, SwiGLU, RoPE vs the copy ceiling, compile, Liger; a Llama layer",
                         description=bench_ops.__doc__)
    bench_ops.add_arguments(po)
    po.set_defaults(func=bench_ops.run)
    pb.set_defaults(func=lambda a: (pb.print_help(), 2)[1])

    pm = sub.add_parser(
        "memory", formatter_class=fmt, help="peak extra memory of attention, naive vs flashkernels",
        description="Estimate the peak extra bytes (beyond q, k, v and grad_out) of attention forward "
                    "and backward for naive attention (torch SDPA's math backend) and for flashkernels, "
                    "and the reduction in percent. Arithmetic only: runs anywhere, allocates nothing. "
                    "Formulas: flashkernels.ops.attention.memory.")
    for flag, hlp in (("--batch", "batch size B"), ("--heads", "query heads Hq"),
                      ("--seqlen", "query length Sq"), ("--head-dim", "head dim D")):
        pm.add_argument(flag, type=int, required=True, help=hlp)
    pm.add_argument("--kv-heads", type=int, default=None, help="key/value heads Hkv (default: --heads)")
    pm.add_argument("--seqlen-k", type=int, default=None, help="key length Sk (default: --seqlen)")
    pm.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="bf16", help="default bf16")
    pm.add_argument("--causal", action="store_true", help="causal attention")
    pm.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="where the naive path runs (its softmax backward allocates more on CUDA; default cuda)")
    pm.add_argument("--hopper", choices=("auto", "yes", "no"), default="auto",
                    help="whether flashkernels runs its Hopper (Gluon) backward, which adds an fp32 dQ "
                         "accumulator on the shapes it covers; auto: yes on an sm_90 GPU here")
    pm.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    pm.set_defaults(func=cmd_memory)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `flashkernels info | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
