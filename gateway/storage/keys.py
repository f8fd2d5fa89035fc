"""Where a file goes in a store: ``PREFIX<customer>/<UTC time>-<name>``.

The one builder of file keys: offloaded attachments (``uploads/``), files
stored through the API and the upload page, and the quarantine (the
route's prefix).  The customer id and the name are sanitised here, so no
key is ever made of text from a message."""
from __future__ import annotations

import time

from gateway.mime import filenames

UPLOADS = "uploads/"


def utc_stamp() -> str:
    """UTC time to the microsecond, as object keys carry it."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000 // 1000:06d}Z"


def file_key(customer: str, name: str, prefix: str = UPLOADS) -> str:
    """The key for a file named ``name`` of ``customer`` under ``prefix``."""
    return f"{prefix}{customer}/{utc_stamp()}-{filenames.sanitise(name)}"
