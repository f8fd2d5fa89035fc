"""``python -m bench``: same as ``python bench/run.py``."""

import sys

from bench.run import cli

sys.exit(cli())
