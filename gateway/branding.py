"""Who the pages and the automatic reply speak for: the ``[branding]``
table as one small object, and the checks of its values.

The pages show the organisation's name and logo, use its colours and name
its support contact; the automatic reply can sign with the same name and
contact (``Branding.from_config(cfg)``).  The logo is a file the gateway
serves itself (``/assets/logo``): the pages fetch nothing from another site,
so their Content-Security-Policy stays ``img-src 'self'`` and no third party
learns who opens a page.  Defaults are neutral: no name, no logo, a dark
blue accent, no contact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Config

#: The largest logo accepted (it is sent with every page view).
MAX_LOGO_BYTES = 256 * 1024

#: WCAG 2's contrast minimum for normal text (success criterion 1.4.3).
MIN_CONTRAST = 4.5

_HEX = re.compile(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_PHONE = re.compile(r"\+?[0-9 ().-]{3,32}")


def check_colour(value: str) -> str:
    """``value`` as ``#rrggbb``; ValueError saying what was expected."""
    if not _HEX.fullmatch(value.strip()):
        raise ValueError("expected a colour as #rgb or #rrggbb, e.g. \"#1f5f99\"")
    v = value.strip().lower()
    return v if len(v) == 7 else "#" + "".join(c * 2 for c in v[1:])


def _luminance(colour: str) -> float:
    """Relative luminance (WCAG 2) of ``#rrggbb``."""
    channels = []
    for i in (1, 3, 5):
        c = int(colour[i:i + 2], 16) / 255
        channels.append(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = channels
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """The WCAG 2 contrast ratio of two ``#rrggbb`` colours (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def check_phone(value: str) -> str:
    """A phone number as written for people: digits, spaces, + ( ) . -"""
    if value and not _PHONE.fullmatch(value.strip()):
        raise ValueError("expected a phone number such as \"+44 20 7946 0000\"")
    return value.strip()


def check_email(value: str) -> str:
    """An address such as support@example.com (or "")."""
    v = value.strip()
    if v and not re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+", v):
        raise ValueError("expected an address such as \"support@example.com\"")
    return v


def check_url(value: str) -> str:
    """An https (or http) URL (or "")."""
    v = value.strip()
    if v and not re.fullmatch(r"https?://[^\s<>\"]+", v):
        raise ValueError("expected a URL such as \"https://example.com/help\"")
    return v


def logo_type(path: Path) -> str:
    """The logo's media type from its bytes; ValueError saying what is
    wrong (missing, unreadable, too large, not PNG, JPEG or SVG)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(1024)
    except OSError as e:
        raise ValueError(f"expected a readable PNG, JPEG or SVG file ({e.strerror})") from None
    if size > MAX_LOGO_BYTES:
        raise ValueError(f"the file has {size} bytes; expected at most {MAX_LOGO_BYTES} (it is sent with "
                         f"every page)")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    if (text.startswith(b"<?xml") or text.startswith(b"<svg") or text.startswith(b"<!--")) and b"<svg" in text:
        return "image/svg+xml"
    raise ValueError("expected a PNG, JPEG or SVG file; its bytes are none of these")


@dataclass(frozen=True)
class Branding:
    """The organisation the pages and replies speak for (``[branding]``)."""

    name: str = ""
    logo: Path | None = None
    accent: str = "#1f5f99"
    accent_text: str = "#ffffff"
    support_email: str = ""
    support_url: str = ""
    support_phone: str = ""

    @classmethod
    def from_config(cls, cfg: Config) -> Branding:
        """The ``[branding]`` table of ``cfg``, paths resolved."""
        b = cfg.branding
        return cls(name=b.name, logo=cfg.path(b.logo) if b.logo else None, accent=b.colours.accent,
                   accent_text=b.colours.accent_text, support_email=b.support.email, support_url=b.support.url,
                   support_phone=b.support.phone)

    @property
    def has_support(self) -> bool:
        """Whether any support contact is configured."""
        return bool(self.support_email or self.support_url or self.support_phone)

    def contact_lines(self) -> list[str]:
        """The support contact as plain lines (for a mail's signature)."""
        return [x for x in (self.name, self.support_email, self.support_phone, self.support_url) if x]


def check_branding(accent: str, accent_text: str) -> None:
    """Raise ValueError naming the key when the colours are too close to
    read: links are ``accent`` on the white page, buttons ``accent_text``
    on ``accent``."""
    for key, a, b in (("accent", accent, "#ffffff"), ("accent_text", accent_text, accent)):
        ratio = contrast(a, b)
        if ratio < MIN_CONTRAST:
            raise ValueError(f"branding.colours.{key}: {a!r}: contrast {ratio:.1f}:1 with {b} is too low to read; "
                             f"expected at least {MIN_CONTRAST}:1 (WCAG 2, criterion 1.4.3)")
