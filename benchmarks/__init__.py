"""Profiling harness for the fused op and the supernets (issue 5).

`pytest benchmarks/` checks every available backend against the reference and
times it (pytest-benchmark); `python -m benchmarks.report` writes RESULTS.md,
results_<device>.csv, e2e_<device>.csv and speedups_<device>.png.
"""
