"""Time candidate block configs of the attention kernels on the GPU (one device call).

    PYTHONPATH=src python3 scripts/tune_attention.py [--dims 64,128,256] [--seqlen 4096]

FA3-paper shapes (B*S = 16384 tokens, Hq*D = 2048), bf16, causal and not. For each head dim it
times every forward candidate and every (dK/dV, dQ) backward candidate by swapping the config
functions of launch.py, checks each against the default config's output, and prints TFLOP/s.
Rows go to $OUT/tune.jsonl when OUT is set. ``--seqlens 1024,2048`` sweeps several lengths,
``--fwd-only`` skips the backward, ``--direct`` calls the launcher as eager calls do (the custom
op's dispatcher costs host time of a short kernel's order).
"""
import argparse
import json
import os

import torch
from triton.testing import do_bench

from flashkernels.ops.attention import autograd as fk_autograd  # noqa: F401 (registers autograd)
from flashkernels.ops.attention import launch
from flashkernels.ops.attention.launch import Config

# The Triton kernels are what this script measures: on an H100 the library would otherwise run its
# Gluon kernels for D = 64/128 (launch.hopper_fwd_reason / hopper_bwd_reason).
os.environ["FLASHKERNELS_HOPPER_FWD"] = "0"
os.environ["FLASHKERNELS_HOPPER_BWD"] = "0"

FWD = [Config(128, 64, 8, 3), Config(128, 128, 8, 3), Config(128, 64, 4, 3), Config(64, 64, 4, 3),
       Config(128, 32, 4, 3), Config(128, 64, 8, 2), Config(64, 32, 4, 2), Config(64, 64, 8, 2),
       Config(128, 128, 4, 3), Config(128, 128, 8, 2), Config(64, 128, 4, 3)]
BWD_KV = [Config(32, 128, 8, 3), Config(64, 64, 8, 3), Config(32, 64, 4, 3), Config(64, 128, 8, 2),
          Config(16, 64, 8, 2), Config(32, 64, 8, 2), Config(16, 128, 8, 2)]
BWD_Q = [Config(128, 32, 8, 3), Config(128, 64, 8, 3), Config(64, 64, 4, 3), Config(64, 32, 4, 3),
         Config(64, 16, 8, 2), Config(64, 32, 8, 2), Config(128, 16, 8, 2)]
# D = 256 (block_d 256): its own lists, tiles that fit the 227 KB of shared memory (session 5:
# the first D = 256 benchmark read 0.6x cuDNN forward and 0.4x backward)
FWD_256 = [Config(64, 32, 4, 2), Config(64, 64, 4, 2), Config(64, 32, 8, 2), Config(128, 32, 8, 2),
           Config(128, 64, 8, 2), Config(64, 64, 8, 2), Config(64, 32, 4, 3), Config(32, 32, 4, 2),
           Config(128, 32, 4, 2)]
BWD_KV_256 = [Config(32, 64, 8, 2), Config(16, 32, 4, 2), Config(16, 32, 8, 2), Config(32, 32, 4, 2),
              Config(32, 32, 8, 2), Config(16, 64, 8, 2), Config(16, 64, 4, 2), Config(32, 32, 4, 3),
              Config(16, 32, 4, 3), Config(64, 32, 8, 2)]
BWD_Q_256 = [Config(64, 32, 4, 3), Config(32, 32, 4, 2), Config(64, 32, 8, 2), Config(32, 64, 4, 2),
             Config(64, 16, 4, 3), Config(128, 32, 8, 2), Config(64, 64, 8, 2), Config(32, 32, 4, 3)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--seqlens", default="", help="several sequence lengths (comma list); overrides --seqlen")
    ap.add_argument("--fwd-only", action="store_true", help="the forward candidates only")
    ap.add_argument("--direct", action="store_true",
                    help="call the launcher (launch.attn_fwd_impl, wrap_triton off) as eager calls do, not the "
                         "custom op: at S <= 2k the op's dispatcher time is of the kernel's order")
    args = ap.parse_args()
    log = open(os.path.join(os.environ["OUT"], "tune.jsonl"), "a") if os.environ.get("OUT") else None
    try:
        for S in (map(int, args.seqlens.split(",")) if args.seqlens else (args.seqlen,)):
            args.seqlen = S
            sweep(args, log)
    finally:
        if log:
            log.close()


def sweep(args, log):
    """Every candidate at ``args.seqlen`` (rows printed, and written to ``log`` when given)."""
    default_fwd, default_bwd = launch.fwd_config, launch.bwd_configs
    S = args.seqlen
    for D in map(int, args.dims.split(",")):
        H, B = 2048 // D, 16384 // S
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        do = torch.randn_like(q)
        for causal in map(bool, map(int, args.causal.split(","))):
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            call = (q, k, v, None, D ** -0.5, causal, 0, False, False, -1, -1, 0.0)
            launch.fwd_config, launch.bwd_configs = default_fwd, default_bwd
            ref_o, ref_lse = torch.ops.flashkernels.attn_fwd(*call)
            ref_g = torch.ops.flashkernels.attn_bwd(do, q, k, v, ref_o, ref_lse, None, *call[3:])
            fwd_cands = FWD_256 if D > 128 else FWD
            if args.direct:
                from torch._library.triton import set_wrap_triton_enabled

                def fwd():
                    with set_wrap_triton_enabled(False):
                        return launch.attn_fwd_impl(*call)
            else:
                def fwd():
                    return torch.ops.flashkernels.attn_fwd(*call)
            for cfg in fwd_cands:
                launch.fwd_config = lambda *a, cfg=cfg: cfg
                try:
                    o, lse = fwd()
                    err = (o.float() - ref_o.float()).abs().max().item()
                    ms = do_bench(fwd, warmup=25, rep=100, return_mode="median")
                    row = dict(kind="fwd", D=D, S=S, causal=causal, cfg=tuple(cfg), ms=ms,
                               tflops=flops / ms / 1e9, err=err)
                except Exception as e:  # out of resources, say
                    row = dict(kind="fwd", D=D, S=S, causal=causal, cfg=tuple(cfg), error=repr(e)[-200:])
                print(json.dumps(row), flush=True)
                if log:
                    log.write(json.dumps(row) + "\n")
            launch.fwd_config = default_fwd
            if args.fwd_only:
                continue
            # The dK/dV and dQ kernels run one after the other, so their times add: sweep each
            # with the other at its default.
            kv0, q0 = default_bwd(D, q.dtype, q.device)
            kvs, qs = (BWD_KV_256, BWD_Q_256) if D > 128 else (BWD_KV, BWD_Q)
            pairs = [(kv, q0) for kv in kvs] + [(kv0, qc) for qc in qs if qc != q0]
            for kv, qc in pairs:
                launch.bwd_configs = lambda *a, kv=kv, qc=qc: (kv, qc)
                bwd = lambda: torch.ops.flashkernels.attn_bwd(do, q, k, v, ref_o, ref_lse, None, *call[3:])
                try:
                    g = bwd()
                    err = max((a.float() - b.float()).abs().max().item() for a, b in zip(g[:3], ref_g[:3]))
                    ms = do_bench(bwd, warmup=25, rep=100, return_mode="median")
                    row = dict(kind="bwd", D=D, S=S, causal=causal, kv=tuple(kv), q=tuple(qc), ms=ms,
                               tflops=2.5 * flops / ms / 1e9, err=err)
                except Exception as e:
                    row = dict(kind="bwd", D=D, S=S, causal=causal, kv=tuple(kv), q=tuple(qc),
                               error=repr(e)[-200:])
                print(json.dumps(row), flush=True)
                if log:
                    log.write(json.dumps(row) + "\n")
            launch.bwd_configs = default_bwd


if __name__ == "__main__":
    main()
