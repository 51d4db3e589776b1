"""Benchmarks: block I/O against Keras's own save and load, and sweep overhead.

Run `python benchmarks/run.py [--quick] [--out report.md]`. These are measurements, not tests:
nothing here asserts a time.
"""
