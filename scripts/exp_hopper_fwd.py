"""Experiment: which Hopper load/scheduling style moves the attention forward (issue 3)?

    PYTHONPATH=src python scripts/exp_hopper_fwd.py [--quick]

A stripped forward (no masks beyond causal, D in {64, 128}, (B, S, H, D) inputs, S a multiple of
the blocks) in four load/schedule variants, each swept over a few block configs, timed in one
process beside flashkernels' own kernel and SDPA cuDNN (bf16, FA3-paper shapes):

  bptr   block pointers (flashkernels' current loads)
  desc   on-device tensor descriptors (tl.make_tensor_descriptor: TMA loads on sm_90)
  ws     desc + tl.range(..., warp_specialize=True) (Triton's automatic warp specialization)
  pipe   bptr with the next block's q k^T issued before this block's softmax (software pipelined
         by hand: the wgmma of block j+1 may overlap the exp2 of block j)

Each variant is checked against SDPA (max abs error) before it is timed; a variant that fails to
compile prints its error and is skipped. Prints TF/s per (shape, variant, config), and the best
config per variant. Needs a CUDA GPU (sm_90 for desc/ws).
"""
import os
import argparse
import traceback

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel

# The Triton kernels are what this script measures: on an H100 the library would otherwise run its
# Gluon kernels for D = 64/128 (launch.hopper_fwd_reason / hopper_bwd_reason).
os.environ["FLASHKERNELS_HOPPER_FWD"] = "0"
os.environ["FLASHKERNELS_HOPPER_BWD"] = "0"

LOG2E = 1.4426950408889634


@triton.jit
def _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, cols, MASKED: tl.constexpr):
    if MASKED:
        qk = tl.where(cols[None, :] <= offs_m[:, None], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i, acc


@triton.jit
def exp_fwd_kernel(Q, K, V, Out, sm_scale,
                   stride_b, stride_h, stride_s,  # shared by q, k, v, out (B, S, H, D) contiguous
                   H, S,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, VARIANT: tl.constexpr, STAGES: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    base = off_b * stride_b + off_h * stride_h
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + offs_m[:, None] * stride_s + offs_d[None, :])
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = m0 if CAUSAL else S

    if VARIANT == 1 or VARIANT == 2:  # descriptors
        kd = tl.make_tensor_descriptor(K + base, shape=[S, HEAD_DIM], strides=[stride_s, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
        vd = tl.make_tensor_descriptor(V + base, shape=[S, HEAD_DIM], strides=[stride_s, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
        for start_n in tl.range(0, hi, BLOCK_N, num_stages=STAGES, warp_specialize=VARIANT == 2):
            k = kd.load([start_n, 0])
            qk = tl.dot(q, k.T)
            v = vd.load([start_n, 0])
            m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, start_n + offs_n, False)
        if CAUSAL:
            for start_n in tl.range(m0, m0 + BLOCK_M, BLOCK_N, num_stages=STAGES):
                k = kd.load([start_n, 0])
                qk = tl.dot(q, k.T)
                v = vd.load([start_n, 0])
                m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, start_n + offs_n, True)
    else:
        kb = tl.make_block_ptr(K + base, shape=(HEAD_DIM, S), strides=(1, stride_s), offsets=(0, 0),
                               block_shape=(HEAD_DIM, BLOCK_N), order=(0, 1))
        vb = tl.make_block_ptr(V + base, shape=(S, HEAD_DIM), strides=(stride_s, 1), offsets=(0, 0),
                               block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
        if VARIANT == 3 and hi > 0:  # hand-pipelined: q k^T of the next block before this softmax
            qk = tl.dot(q, tl.load(kb))
            kb = tl.advance(kb, (0, BLOCK_N))
            for start_n in tl.range(0, hi - BLOCK_N, BLOCK_N, num_stages=STAGES):
                qk_next = tl.dot(q, tl.load(kb))
                v = tl.load(vb)
                m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, start_n + offs_n, False)
                qk = qk_next
                kb = tl.advance(kb, (0, BLOCK_N))
                vb = tl.advance(vb, (BLOCK_N, 0))
            v = tl.load(vb)
            m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, hi - BLOCK_N + offs_n, False)
            vb = tl.advance(vb, (BLOCK_N, 0))
        else:
            for start_n in tl.range(0, hi, BLOCK_N, num_stages=STAGES):
                qk = tl.dot(q, tl.load(kb))
                v = tl.load(vb)
                m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, start_n + offs_n, False)
                kb = tl.advance(kb, (0, BLOCK_N))
                vb = tl.advance(vb, (BLOCK_N, 0))
        if CAUSAL:
            for start_n in tl.range(m0, m0 + BLOCK_M, BLOCK_N, num_stages=STAGES):
                qk = tl.dot(q, tl.load(kb))
                v = tl.load(vb)
                m_i, l_i, acc = _softmax_step(qk, m_i, l_i, acc, v, qk_scale, offs_m, start_n + offs_n, True)
                kb = tl.advance(kb, (0, BLOCK_N))
                vb = tl.advance(vb, (BLOCK_N, 0))
    out = acc / l_i[:, None]
    tl.store(Out + base + offs_m[:, None] * stride_s + offs_d[None, :], out.to(Out.dtype.element_ty))


VARIANTS = {"bptr": 0, "desc": 1, "ws": 2, "pipe": 3}


def run(q, k, v, causal, variant, cfg):
    bm, bn, warps, stages = cfg
    B, S, H, D = q.shape
    out = torch.empty_like(q)
    grid = (S // bm, B * H)
    exp_fwd_kernel[grid](q, k, v, out, D ** -0.5, q.stride(0), q.stride(2), q.stride(1), H, S,
                         HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, VARIANT=VARIANTS[variant],
                         STAGES=stages, num_warps=warps, num_stages=stages)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default="bptr,desc,ws,pipe")
    args = ap.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    import flashkernels
    from flashkernels.bench.common import do_bench_median, warm_gpu
    warm_gpu()
    shapes = [(128, 4096), (128, 16384), (64, 4096)] if not args.quick else [(128, 4096)]
    configs = {128: [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (128, 128, 4, 2)],
               64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3)]}
    best = {}
    for D, S in shapes:
        H = 2048 // D
        B = 16384 // S
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        for causal in (False, True):
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ref = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)
                cudnn = flops / do_bench_median(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)) / 1e9
            ours = flops / do_bench_median(lambda: flashkernels.flash_attn_func(q, k, v, causal=causal)) / 1e9
            tag = f"D={D} S={S} causal={int(causal)}"
            print(f"{tag}: cudnn {cudnn:.0f} TF/s, flashkernels {ours:.0f} TF/s", flush=True)
            for variant in args.variants.split(","):
                for cfg in configs[D]:
                    if cfg[1] > cfg[0] and causal:
                        continue
                    try:
                        out = run(q, k, v, causal, variant, cfg)
                        torch.cuda.synchronize()
                        err = (out.float() - ref.float()).abs().max().item()
                        if not err < 2e-2:
                            print(f"  {variant:5s} {cfg}: WRONG max err {err:.3g}", flush=True)
                            continue
                        tf = flops / do_bench_median(lambda: run(q, k, v, causal, variant, cfg)) / 1e9
                    except Exception as e:  # noqa: BLE001 - an experiment: report and go on
                        msg = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()
                        print(f"  {variant:5s} {cfg}: FAILED {msg[0][:200]}", flush=True)
                        continue
                    print(f"  {variant:5s} {cfg}: {tf:6.0f} TF/s ({tf / cudnn:.2f}x cudnn, {tf / ours:.2f}x ours)",
                          flush=True)
                    key = (tag, variant)
                    if tf > best.get(key, (0, None))[0]:
                        best[key] = (tf, cfg, cudnn, ours)
    print("\nbest per (shape, variant):")
    for (tag, variant), (tf, cfg, cudnn, ours) in best.items():
        print(f"{tag:28s} {variant:5s} {tf:6.0f} TF/s {tf / cudnn:5.2f}x cudnn {tf / ours:5.2f}x ours  {cfg}")


if __name__ == "__main__":
    main()
