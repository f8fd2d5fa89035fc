"""The facts a queued message carries: its envelope and its delivery state.

``Envelope`` is fixed when the message is acknowledged (the SMTP envelope
and reception facts); ``State`` is rewritten as delivery goes on.  Both are
plain records: the ingresses build envelopes, the pipeline and delivery read
them, and the spool stores them; none of those needs the queue to use them.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


def new_queue_id() -> str:
    """A short, unique, roughly time-ordered queue id such as ``4KX9TQ2M7BCD1F``."""
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    stamp = "".join(reversed(out))
    return stamp + "".join(_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(4))


def to_json_bytes(record: Any) -> bytes:
    """A flat dataclass (fields of str, numbers, bools and lists of str) as
    JSON; ``vars()`` rather than ``dataclasses.asdict``, whose recursive
    deep copy cost more than the rest of a commit's Python work."""
    return json.dumps(vars(record), ensure_ascii=False).encode()


@dataclass
class Envelope:
    """The SMTP envelope and reception facts, fixed when the message is queued."""

    queue_id: str
    mail_from: str
    rcpt_tos: list[str]
    route: str
    received_at: float
    client_addr: str = ""
    client_name: str = ""
    helo: str = ""
    size: int = 0
    smtputf8: bool = False
    body_8bit: bool = False
    tls: str = ""
    # A customer id the gateway vouches for itself (the invitation of an
    # upload-page message), believed before any header of the message.
    customer_id: str = ""

    def to_json(self) -> bytes:
        return to_json_bytes(self)

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class State:
    """Delivery progress, rewritten as a whole at each change."""

    attempts: int = 0
    first_attempt: float = 0.0
    next_attempt: float = 0.0
    last_error: str = ""
    # Recipients still to deliver; empty means "all of the envelope's".
    pending: list[str] = field(default_factory=list)
    # Why a message is on hold.
    hold_reason: str = ""
    # When the sender was told the message is delayed ([delivery]
    # delay_warning); 0: not yet.  The warning goes once.
    delay_warned: float = 0.0

    def to_json(self) -> bytes:
        return to_json_bytes(self)

    @classmethod
    def from_json(cls, data: bytes) -> State:
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})
