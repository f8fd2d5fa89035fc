"""Benchmark harness: the gateway against smtp-sink, aiosmtpd and plain Postfix.

Run from the repository root with ``python bench/run.py [--quick]`` (or
``python -m bench``). See docs/PERFORMANCE.md.
"""
