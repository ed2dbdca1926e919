"""The scripts' pure helpers (no GPU, no compiler): what the compile-only reports count."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import compile_check as cc  # noqa: E402

# One loop as nvdisasm prints it: a masked part the fast path jumps over, a wait's out-of-line
# retry (a branch out of the loop), an if / else, an inner loop that never iterates (the forward's
# scheduling fence), then the back edge.
LOOP = """
.L_x_1:
        /*0000*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], RZ, !UPT ;
        /*0010*/               @P0 BRA `(.L_x_2) ;
        /*0020*/                   FSEL R1, R1, -INF , P1 ;
        /*0030*/                   FSEL R2, R2, -INF , P1 ;
        /*0040*/                   FSEL R3, R3, -INF , P1 ;
.L_x_2:
        /*0050*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P2, [UR15+0x28120], R24 ;
        /*0060*/              @!P2 BRA `(.L_x_9) ;
        /*0070*/               @P4 BRA P5, `(.L_x_4) ;
        /*0080*/                   FADD R4, R4, R5 ;
        /*0090*/                   FADD R4, R4, R6 ;
        /*00a0*/                   BRA `(.L_x_5) ;
.L_x_4:
        /*00b0*/                   FMUL R4, R4, R5 ;
.L_x_5:
        /*00c0*/                   MUFU.EX2 R7, R7 ;
.L_x_3:
        /*00d0*/               @P3 BRA `(.L_x_3) ;
        /*00e0*/               @P6 BRA `(.L_x_1) ;
"""


def test_loop_shortest_path_skips_the_jumped_over_code_only():
    seg = LOOP.strip().splitlines()
    static = sum("/*" in ln for ln in seg)
    assert static == 15
    # HGMMA, BRA | (FSEL x3 skipped) | TRYWAIT, BRA (the retry not taken) | BRA P5 -> FMUL (else: 1
    # instead of 3) | MUFU | the inner loop once | the back edge
    assert cc.loop_shortest_path(seg) == 2 + 2 + 1 + 1 + 1 + 1 + 1


def test_loop_shortest_path_without_branches_is_the_loop():
    seg = [ln for ln in LOOP.strip().splitlines() if "BRA" not in ln or "L_x_1)" in ln]
    assert cc.loop_shortest_path(seg) == sum("/*" in ln for ln in seg)
