"""flash_attn_with_kvcache: the kernel's K/V paths (``launch.Config`` fast / evict / tma) against
the reference and against the first version's path (every tile masked, per-key addresses).

``fast``: unmasked tiles where every row sees every key of the tile, masked runs at the split's
edges, per-tile addresses (paged: one page index a tile when page % BLOCK_N == 0, a vector of
BLOCK_N / page indices when BLOCK_N % page == 0, per key otherwise). ``tma``: tensor-descriptor
loads (contiguous, or pages of a multiple of BLOCK_N stored back to back). Interpreter blocks are
16 or 32 keys, so the lengths (37, 50, 111, ...) end mid-tile, pages 8/16/32/48 hit every page
mode, and splits put tile runs of every kind (masked head, unmasked body, masked tail) in one
program.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import flashkernels.ops.kvcache.launch as kv_launch
from flashkernels.ops.kvcache.api import flash_attn_with_kvcache
from test_kvcache import Case, check_case, clone_args, make_inputs

f16, f32 = torch.float16, torch.float32

PATHS = {  # name: Config fields after (block_m, block_n, warps, stages)
    "fast": dict(fast=True),
    "fast-evict": dict(fast=True, evict="evict_first"),
    "tma": dict(fast=True, tma=True),
}


def use_path(monkeypatch, block_n, **opts):
    monkeypatch.setattr(kv_launch, "attn_config",
                        lambda *a: kv_launch.Config(16, block_n, 4, 1, **opts))


PATH_CASES = [
    # decode: lengths off the tile grid, splits cutting the rows, every layout
    Case(Hq=8, Hkv=2, S_cache=128, seqlens=(111, 60), Sn=1, num_splits=3),
    Case(Hq=8, Hkv=2, S_cache=128, seqlens=(111, 64), Sn=0, num_splits=2, page=16),
    Case(dtype=f16, Hq=4, Hkv=1, S_cache=128, seqlens=(97, 33), Sn=1, page=32, num_splits=0),
    Case(Hq=4, Hkv=2, S_cache=96, seqlens=(95, 40), page=48, num_splits=2),
    Case(Hq=4, Hkv=2, S_cache=128, seqlens=(127, 9), Sn=1, page=8, num_splits=3),
    Case(Hq=4, Hkv=2, S_cache=128, seqlens=(128, 96)),  # full rows, lengths on the grid
    Case(Hq=4, Hkv=2, D=40, S_cache=128, seqlens=(100, 77), Sn=1),  # BLOCK_D > D: the d mask
    # masked heads (leftpad, window) and tails (causal), chunked prefill
    Case(Sq=3, Sn=3, S_cache=128, seqlens=(90, 40), leftpad=(37, 5), causal=True, num_splits=2, page=16),
    Case(Sq=7, Sn=7, Hq=6, Hkv=2, S_cache=128, seqlens=(80, 40), causal=True, window=(21, -1), num_splits=2),
    Case(dtype=f16, Sq=5, Sn=5, S_cache=128, seqlens=(70, 12), window=(40, 2), softcap=2.0, alibi="bh", page=32),
    Case(Sq=2, seqlens=(0, 0), Sn=0, num_splits=3, page=16),  # nothing anywhere
]


@pytest.mark.parametrize("block_n", [16, 32])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", PATH_CASES, ids=[c.id for c in PATH_CASES])
def test_kernel_path(case, path, block_n, monkeypatch):
    """Each path against the reference (the tolerance policy), and bitwise against the first
    version's path on the same tiles: the same keys meet the same arithmetic in the same order."""
    opts = PATHS[path]
    if opts.get("tma") and case.D * case.dtype.itemsize % 16:
        pytest.skip("TMA needs 16-byte rows")
    use_path(monkeypatch, block_n, **opts)
    if opts.get("tma"):
        args = make_inputs(case)
        assert kv_launch.tma_ok(args["k_cache"], args["v_cache"], args.get("block_table"), block_n) == \
            (not case.page or case.page % block_n == 0)
    args = make_inputs(case)  # (the seed is conftest's, from the test's id: the same every run)
    out, lse = flash_attn_with_kvcache(**clone_args(args), return_softmax_lse=True, backend="triton")
    use_path(monkeypatch, block_n)  # the first version's path, same tiles
    out0, lse0 = flash_attn_with_kvcache(**clone_args(args), return_softmax_lse=True, backend="triton")
    torch.testing.assert_close(out, out0, rtol=0, atol=0)
    torch.testing.assert_close(lse, lse0, rtol=0, atol=0)
    use_path(monkeypatch, block_n, **opts)
    check_case(case, "triton")


def test_tma_refuses_unaligned_or_scattered_pages():
    kc = torch.randn(4, 32, 2, 16)
    assert kv_launch.tma_ok(kc, kc, None, 16)
    assert kv_launch.tma_ok(kc, kc, torch.zeros(2, 2, dtype=torch.int32), 16)
    assert not kv_launch.tma_ok(kc, kc, torch.zeros(2, 2, dtype=torch.int32), 64)  # page 32 < BLOCK_N
    assert not kv_launch.tma_ok(kc[:, :, :, :3], kc[:, :, :, :3], None, 16)  # 12-byte rows
    sliced = torch.randn(4, 64, 2, 16)[:, :32]  # pages not back to back
    assert kv_launch.tma_ok(sliced, sliced, None, 16)
    assert not kv_launch.tma_ok(sliced, sliced, torch.zeros(2, 2, dtype=torch.int32), 16)


def test_fast_path_nan_beyond_the_row_stays_out(monkeypatch):
    """Stale NaN in the cache past a row's length (and in unused pages) must not reach the output
    on any path: the masked tail loads (or, with TMA, zeroes V) only [lo, hi)."""
    c = Case(Hq=4, Hkv=2, S_cache=128, seqlens=(70, 45), Sn=1, num_splits=2, page=32)
    for opts in PATHS.values():
        use_path(monkeypatch, 32, **opts)
        args = make_inputs(c)
        for name in ("k_cache", "v_cache"):
            cache = args[name]
            for b, L in enumerate(c.seqlens):
                keys = torch.arange(L + c.Sn, 128)
                cache[args["block_table"][b][keys // c.page].long(), keys % c.page] = float("nan")
        out = flash_attn_with_kvcache(**args, backend="triton")
        assert torch.isfinite(out).all()


def test_paged_decode_ring_as_deep_as_contiguous():
    """A paged cache's decode build holds as many K / V tiles in flight as the contiguous cache's:
    compiled for sm_90a as the launcher configures them (scripts/compile_check_kvcache.py, in its
    own process, no GPU), each paged build's shared memory is within 1 KB of the contiguous one's.
    (Triton 3.6's pipeliner spaces the page-table entry's load and the tile's loads it addresses
    ceil((stages - 2) / 2) stages apart: at the contiguous cache's 4 stages the paged ring was one
    tile deep, 39 KB against 102 KB; launch.PAGED_STAGES.)"""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton ships no ptxas here")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, str(root / "scripts" / "compile_check_kvcache.py"), "--dims", "128",
                          "--dtypes", "bf16", "--rows", "4", "--pages", "0,16,256", "--flags", "none",
                          "--paths", "fast"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    smem = {}
    for line in res.stdout.splitlines():
        m = re.match(r"attn bf16 D=128 rows=4\s+\(.*\) (\w+) split=(\d) fast\s+smem\s+(\d+)", line)
        if m:
            smem[m.group(1), m.group(2)] = int(m.group(3))
    assert len(smem) == 6, res.stdout[-3000:]
    for split in "01":
        contig = smem["contig", split]
        assert contig > 90_000, smem  # (three 64-key K and V tiles, 96 KB, and the rest)
        for layout in ("paged16", "paged256"):
            assert abs(smem[layout, split] - contig) <= 1024, smem
