"""Sweep the KV-cache decode kernel's block config and split count on the GPU (one device call).

    PYTHONPATH=src python3 scripts/tune_decode.py [--layouts contig,paged16,paged256]

Shapes of ``flashkernels bench decode`` (bf16, D = 128, Hq = 32, Hkv = 8, one query token):
B = 16 with cache 8192 and B = 1 with cache 131072. Every (BLOCK_N, warps, stages) candidate,
swapped in for ``launch.attn_config``, with the split heuristic; then the default config with
each split count of --splits-b16 / --splits-b1. Each run is checked the output against the default config's and prints K+V TB/s (bytes = 2 * B * Hkv * S
* D * 2 read, do_bench median, L2 flushed). SDPA cuDNN is timed once per shape for scale.
"""
import argparse
import itertools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashkernels
from flashkernels.bench.common import do_bench_median, warm_gpu
from flashkernels.ops.kvcache import launch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="contig,paged16")
    ap.add_argument("--block-n", default="64,128")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="2,3,4")
    ap.add_argument("--splits-b16", default="1,2,3,4,6,8,16",
                    help="split counts timed with the default config at B=16 (0 = the heuristic)")
    ap.add_argument("--splits-b1", default="8,16,33,64,128")
    args = ap.parse_args()
    warm_gpu()
    default = launch.attn_config
    Hq, Hkv, D = 32, 8, 128
    for B, S in ((16, 8192), (1, 131072)):
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(B, 1, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g)
        kc = torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        vc = torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        lens = torch.full((B,), S, dtype=torch.int32, device="cuda")
        nbytes = 2 * B * Hkv * S * D * 2
        qt, kt, vt = q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ms = do_bench_median(lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True))
        print(f"B={B} S={S}: sdpa-cudnn {nbytes / ms / 1e9:.2f} TB/s", flush=True)
        for layout in args.layouts.split(","):
            kw = dict(cache_seqlens=lens, check_inputs=False)
            k_use, v_use = kc, vc
            if layout != "contig":
                page = int(layout.removeprefix("paged"))
                nb = S // page
                table = torch.randperm(B * nb, device="cuda", generator=g).view(B, nb).to(torch.int32)
                k_use = torch.empty(B * nb, page, Hkv, D, device="cuda", dtype=torch.bfloat16)
                v_use = torch.empty_like(k_use)
                k_use[table.long().flatten()] = kc.reshape(B * nb, page, Hkv, D)
                v_use[table.long().flatten()] = vc.reshape(B * nb, page, Hkv, D)
                kw["block_table"] = table
            launch.attn_config = default
            ref = flashkernels.flash_attn_with_kvcache(q, k_use, v_use, **kw)
            sweep = [(launch.Config(16, bn, w, st), 0) for bn, w, st in itertools.product(
                map(int, args.block_n.split(",")), map(int, args.warps.split(",")), map(int, args.stages.split(",")))]
            splits = args.splits_b16 if B > 1 else args.splits_b1
            sweep += [(None, ns) for ns in map(int, splits.split(","))]
            for cfg, ns in sweep:
                launch.attn_config = default if cfg is None else (lambda *a, _c=cfg: _c)
                bn, w, st = (default(Hq // Hkv, D, q.dtype, q.device) if cfg is None else cfg)[1:4]
                try:
                    out = flashkernels.flash_attn_with_kvcache(q, k_use, v_use, num_splits=ns, **kw)
                    err = (out.float() - ref.float()).abs().max().item()
                    ms = do_bench_median(lambda: flashkernels.flash_attn_with_kvcache(q, k_use, v_use, num_splits=ns,
                                                                                      **kw))
                except Exception as e:  # noqa: BLE001 - a sweep: report and go on
                    print(f"  {layout:8s} bn={bn} w={w} st={st} splits={ns}: FAILED {str(e).splitlines()[0][:150]}")
                    continue
                print(f"  {layout:8s} bn={bn:3d} w={w} st={st} splits={ns:3d}: {nbytes / ms / 1e9:5.2f} TB/s "
                      f"({ms * 1e3:7.1f} us, max diff {err:.1e})", flush=True)
    launch.attn_config = default


if __name__ == "__main__":
    main()
