"""Benchmarks: ``python -m benchmarks.bench_<area>`` prints figures measured in one run."""
