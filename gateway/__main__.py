"""``python -m gateway`` is the same as the ``attachment-gateway`` command."""
from gateway.cli import main

raise SystemExit(main())
