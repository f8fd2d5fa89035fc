"""Benchmark harness: the gateway against smtp-sink, aiosmtpd, plain Postfix and
Postfix with MIMEDefang.

Run from the repository root with ``python bench/run.py [--quick]`` (or
``python -m bench``). See docs/PERFORMANCE.md.
"""
