"""Benchmarks: `make bench`. Ratios taken side by side in one run, medians of repeats."""
