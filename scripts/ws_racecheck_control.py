"""Control for compute-sanitizer racecheck: the smallest Gluon kernel with the partition layout of
kernels/fwd_hopper.py (a 4-warp default partition, workers of 4 and 1 warps with 240 / 24
registers, launched with maxnreg 168), each partition writing its own global rows; no shared
memory of its own, no barriers, no TMA, no wgmma. Any racecheck hazard it shows comes from the
warp-specialize lowering (Triton's partition-state handshake), not from a kernel's own code.

    compute-sanitizer --tool=racecheck python scripts/ws_racecheck_control.py

On an H200 (2026-11-26, CUDA 13 compute-sanitizer) it reports no hazard, while the library's Gluon
kernels show hazards on their handshake lines: why is open (docs/perf-notes.md).
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _store_rows(out, base: gl.constexpr, WARPS: gl.constexpr):
    offs = gl.arange(0, 32 * WARPS, layout=gl.BlockedLayout([1], [32], [WARPS], [0]))
    gl.store(out + gl.program_id(0) * 288 + base + offs, (base + offs).to(gl.float32))


@gluon.jit
def ws_control_kernel(out, num_warps: gl.constexpr):
    gl.warp_specialize([(_store_rows, (out, 0, 4)), (_store_rows, (out, 128, 4)), (_store_rows, (out, 256, 1))],
                       [4, 1], [240, 24])


if __name__ == "__main__":
    grid = 264  # two CTAs per SM of an H100 / H200, as a real launch has many
    out = torch.zeros(grid * 288, device="cuda")
    ws_control_kernel[(grid,)](out, num_warps=4, maxnreg=168)
    torch.cuda.synchronize()
    assert torch.equal(out.view(grid, 288), torch.arange(288, device="cuda").float().expand(grid, 288)), out
    print("done")
