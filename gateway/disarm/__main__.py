"""``python -m gateway.disarm``: the child process of ``disarm_isolated``."""

import sys

from gateway.disarm import child_main

sys.exit(child_main())
