"""Fit the message to the next hop: the largest kept attachments give way.

Genesys Cloud and NICE CXone take inbound mail through Amazon SES, which
refuses messages over 40 MB including the base64 overhead, and Genesys
takes at most 50 attachments per message.  After the per-part policies
have decided, what is still kept may be too much for the route's
``next_hop_max_size`` or ``max_attachments``; this step names the extra
attachments to offload, largest first, until the message fits.  Unlike the
per-part policies it looks at the whole message, so the worker calls it
once per message, after them; it is still pure (sizes in, paths out).
"""
from __future__ import annotations

from dataclasses import dataclass

# What a replaced part's notice and its link lines add, at most, in bytes:
# the notice part and a link line in both the text and the HTML body, each
# with the file's name (up to 255 characters, which quoted-printable can
# triple and non-Latin UTF-8 triple again) and in the route's language
# (translations run longer than English).
NOTICE_ALLOWANCE = 4096


@dataclass(frozen=True)
class Kept:
    """An attachment the per-part policies kept: its part path and its size
    in the message as sent (encoded, headers included)."""

    path: str
    size: int


def extra_offloads(kept: list[Kept], message_size: int, max_size: int, max_count: int | None) -> list[str]:
    """Paths of the kept attachments to offload so that at most ``max_count``
    remain and the message (``message_size`` as planned so far) is at most
    ``max_size``; largest first.  When even offloading every kept
    attachment cannot make it fit, all of them are named."""
    chosen: list[str] = []
    remaining = sorted(kept, key=lambda k: (-k.size, k.path))
    size = message_size
    while remaining and max_count is not None and len(remaining) > max_count:
        k = remaining.pop(0)
        chosen.append(k.path)
        size += NOTICE_ALLOWANCE - k.size
    while remaining and size > max_size:
        k = remaining.pop(0)
        chosen.append(k.path)
        size += NOTICE_ALLOWANCE - k.size
    return chosen
