"""Benchmarks: ``python -m benchmarks.bench_<area>`` prints figures measured in one run."""

# scanpixd pins OpenBLAS to one thread when it is imported before numpy, as the daemon and
# the CLI do; a benchmark that imported numpy first would measure a different program.
import scanpixd  # noqa: F401
