"""Seal what leaves: an ARC set (RFC 8617) and optionally a DKIM signature.

Runs on the final bytes of the forwarded message, after the rewrite and
with the gateway's ``Authentication-Results`` header already on top:
dkimpy's ``arc_sign`` copies that header into ARC-Authentication-Results,
takes the chain status (cv=) from its ``arc=`` result, and signs the
message exactly as the next hop will see it, so nothing may change after
this step.  The headers it returns are prepended.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dkim


@dataclass(frozen=True)
class Key:
    """A signing domain, selector and RSA private key (PEM)."""

    domain: str
    selector: str
    pem: bytes

    @classmethod
    def load(cls, domain: str, selector: str, path: Path) -> Key:
        return cls(domain, selector, path.read_bytes())


class Sealer:
    """Computes the headers to prepend; blocking (call from a thread)."""

    def __init__(self, authserv_id: str, arc: Key | None, dkim_key: Key | None) -> None:
        self.authserv_id = authserv_id
        self.arc = arc
        self.dkim = dkim_key

    def seal(self, message: bytes, *, sign: bool = True) -> bytes:
        """The DKIM-Signature (if configured and ``sign``) and ARC set for
        ``message``, in the order they go on top of it."""
        out = b""
        if self.dkim is not None and sign:
            # Signed first, so the ARC-Message-Signature covers it too.
            out = dkim.sign(message, self.dkim.selector.encode(), self.dkim.domain.encode(), self.dkim.pem,
                            linesep=b"\r\n")
        if self.arc is not None:
            lines = dkim.arc_sign(out + message, self.arc.selector.encode(), self.arc.domain.encode(),
                                  self.arc.pem, self.authserv_id.encode(), linesep=b"\r\n")
            if not lines:
                # arc_sign returns nothing when it finds no A-R of ours or the
                # chain it would extend is unusable; say so rather than
                # forward a message that looks sealed and is not.
                raise SealError("dkimpy produced no ARC set (no Authentication-Results of ours?)")
            out = b"".join(lines) + out
        return out


class SealError(Exception):
    """The message could not be sealed."""
