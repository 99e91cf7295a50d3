"""Benchmark support: suites (datasets), speed metrics, quality metrics and reports.

Submodules are imported on demand (``from alignspec.bench import datasets``) so that loading
the benchmark data does not pull in matplotlib or the scoring libraries.
"""
