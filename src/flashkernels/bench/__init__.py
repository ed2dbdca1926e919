"""Benchmarks behind ``flashkernels bench``: each op times flashkernels against the peers users
would pick instead, in one process on one GPU, and reports ratios (absolute numbers drift between
cards and days; ratios measured side by side do not).

Modules: :mod:`.common` (timing, environment, CSV, FLOP/byte counts) and one module per op
(:mod:`.attention`).
"""
