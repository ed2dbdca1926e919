"""How much of the Llama layer's step is transformers' packed-sequence check's host sync (issue 4).

    PYTHONPATH=src python scripts/exp_layer_sync.py [--rounds 3] [--seqlen 4096]

The model, input and loss of ``flashkernels bench ops --ops layer``. transformers 5.x's
``create_causal_mask`` calls ``masking_utils.find_packed_sequence_indices(position_ids)`` when
no attention mask and no cache are given, and that function reads a device tensor on the host
(``(mask[:, -1] == 0).all()`` as a Python bool): one device sync a step, after which the GPU
idles until the host has issued the layer's first kernels. Each round times eager transformers
+ SDPA and the flashkernels model as they are, then both with that function replaced by one
returning None (what it returns here without the sync: the benchmark's positions are an arange).
Since ``integrations.transformers.apply`` skips the check itself when no position ids are
given (session 11), the flashkernels model reads the same in both columns; the eager columns
still show the sync's cost.
"""
import argparse

from flashkernels.bench import ops
from flashkernels.bench.common import do_bench_median


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seqlen", type=int, default=ops.LAYER["seqlen"])
    a = ap.parse_args()
    steps = ops.layer_steps(a.seqlen)
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices

    def timed(name, sync):
        masking_utils.find_packed_sequence_indices = original if sync else (lambda position_ids: None)
        try:
            return do_bench_median(steps[name], warmup_ms=200, rep_ms=1500)
        finally:
            masking_utils.find_packed_sequence_indices = original

    print(f"seqlen {a.seqlen}: ms a forward + backward step (do_bench median)")
    for r in range(a.rounds):
        t = {(n, s): timed(n, s) for s in ((True, False) if r % 2 == 0 else (False, True)) for n in ("eager", "ours")}
        print(f"  round {r}: with the sync: eager {t['eager', True]:6.2f} ours {t['ours', True]:6.2f} "
              f"({t['eager', True] / t['ours', True]:.3f}x) | without: eager {t['eager', False]:6.2f} "
              f"ours {t['ours', False]:6.2f} ({t['eager', False] / t['ours', False]:.3f}x; "
              f"ours vs eager with the sync {t['eager', True] / t['ours', False]:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
