"""Whether a launcher switch changes the Gluon backward's block loops, compiled for sm_90a (no GPU needed): the SASS
of each loop that issues HGMMA, with register names masked, for the build under two values of the switch.

    PYTHONPATH=src python scripts/loop_diff.py --switch HOPPER_BWD_EPI_TMA --a "{}" --b "{(128, False): None}"
        [--head-dim 128] [--causal 0] [--keys 1024] [--dtype bf16] [--diff]

Why (docs/perf-notes.md, sessions 29 and 31): a change outside a loop can move ptxas's schedule of the loop itself
(the same instruction count, another order), and that alone cost up to 5%. Two builds whose loops print "same" run
the same loop; "different" means a paired A/B has to say what the change costs.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys

import torch

import compile_check as cc
from flashkernels.ops.attention import launch


def loops(cubin: bytes) -> list[list[str]]:
    """The instructions of each loop (a backward branch's body) that issues HGMMA, in order."""
    out = []
    for seg in cc.loop_segments(cc.disassemble(cubin).splitlines()):
        body = [x.split(";")[0].split("*/", 1)[1].strip() for x in seg if re.search(r"/\*[0-9a-f]{4,6}\*/", x)]
        if any("HGMMA" in b for b in body):
            out.append(body)
    return out


def masked(ins: str) -> str:
    """An instruction with its registers, predicates and branch labels masked."""
    ins = re.sub(r"\.L_x_\d+", "L", ins)
    return re.sub(r"\bU?R\d+\b", "R", re.sub(r"\bU?P\d+\b", "P", ins))


def build(args, value) -> list[list[str]]:
    setattr(launch, args.switch, value)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    cc.compile_hopper_bwd(dtype, bool(args.causal), sass=True, D=args.head_dim, keys=args.keys)
    return loops(cc._last_cubin)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switch", required=True, help="an attribute of flashkernels.ops.attention.launch")
    ap.add_argument("--a", required=True, help="its first value (a Python literal)")
    ap.add_argument("--b", required=True, help="its second value")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", type=int, default=0)
    ap.add_argument("--keys", type=int, default=4096, help="the launch's key count (for switches with a bound)")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--diff", action="store_true", help="print the masked diff of each loop that differs")
    args = ap.parse_args(argv)
    if not hasattr(launch, args.switch):
        sys.exit(f"launch has no switch {args.switch!r}")
    a, b = build(args, ast.literal_eval(args.a)), build(args, ast.literal_eval(args.b))
    if len(a) != len(b):
        print(f"{len(a)} loops against {len(b)}")
    same = True
    for i, (la, lb) in enumerate(zip(a, b)):
        ma, mb = [masked(x) for x in la], [masked(x) for x in lb]
        print(f"loop {i}: {len(la)} / {len(lb)} instructions, {'same' if ma == mb else 'different'}")
        if ma != mb:
            same = False
            if args.diff:
                print("\n".join(list(difflib.unified_diff(ma, mb, lineterm="", n=0))[2:]))
    return 0 if same and len(a) == len(b) else 1


if __name__ == "__main__":
    raise SystemExit(main())
