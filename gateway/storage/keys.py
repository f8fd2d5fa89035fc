"""Where a file goes in a store: ``PREFIX<customer key>/<UTC time>-<name>``.

The one builder of file keys: offloaded attachments (``uploads/``), files
stored through the API and the upload page, and the quarantine (the
route's prefix).  The customer id and the name are sanitised here, so no
key is ever made of text from a message.

The customer id itself is kept as given everywhere else (gateway.customers);
``customer_key`` is its form in keys, and the one function any code that
looks for a customer's objects (retention, erasure) must use."""
from __future__ import annotations

import hashlib
import re
import time
import unicodedata

from gateway import customers
from gateway.mime import filenames

UPLOADS = "uploads/"
# The longest customer key: the sanitised id, and when that is not the id
# itself, up to KEEP characters of it, "~" and a hash.
MAX_CUSTOMER_KEY = 128
_KEEP = 100
_HASH = 12
_UNSAFE = re.compile(r"[^a-z0-9@._+-]+")


def customer_key(customer_id: str) -> str:
    """The sanitised form of a customer id in object keys: one path segment
    of ``[a-z0-9@._+-]`` (never ".", ".." or a leading dot), at most
    MAX_CUSTOMER_KEY characters.

    Made from the case-folded id, so ids that differ only in case share a
    prefix (``CUST-998877`` and ``cust-998877`` are both
    ``cust-998877``).  An id that sanitising would change (a space, a
    slash, non-ASCII letters, over-long) gets ``~`` and 12 hex digits of the
    SHA-256 of its folded form after what is left of it
    (``../etc`` -> ``etc~f7f9121fdb53``), so two different ids never share a
    prefix by sanitising to the same text and a lookalike never lands in
    the prefix of the id it imitates.  The empty id is ``unknown``."""
    folded = customers.fold(customer_id.strip())
    if not folded:
        return customers.UNKNOWN
    ascii_form = unicodedata.normalize("NFKD", folded).encode("ascii", "ignore").decode("ascii")
    safe = _UNSAFE.sub("_", ascii_form).strip("._-")
    if safe == folded and len(safe) <= MAX_CUSTOMER_KEY:
        return safe
    digest = hashlib.sha256(folded.encode("utf-8")).hexdigest()[:_HASH]
    return f"{safe[:_KEEP].rstrip('._-')}~{digest}"


def utc_stamp() -> str:
    """UTC time to the microsecond, as object keys carry it."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000 // 1000:06d}Z"


def file_key(customer: str, name: str, prefix: str = UPLOADS) -> str:
    """The key for a file named ``name`` of ``customer`` (the id as given)
    under ``prefix``."""
    return f"{prefix}{customer_key(customer)}/{utc_stamp()}-{filenames.sanitise(name)}"
