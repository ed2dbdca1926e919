#!/usr/bin/env python3
"""Attention benchmark: a thin wrapper over ``flashkernels bench attention`` (the logic lives in
``src/flashkernels/bench/attention.py``), for running from a checkout without installing.

    python benchmarks/bench_attention.py --quick --csv out/bench.csv --plot out/bench.png
    python benchmarks/bench_attention.py --help
"""
import os
import sys

try:
    import flashkernels  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src"))

from flashkernels.bench.attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
