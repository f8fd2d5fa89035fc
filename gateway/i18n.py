"""Texts people read, in their language.

Every sentence a customer or an agent reads comes from a gettext catalogue:
``gateway/locale/<lang>/LC_MESSAGES/<domain>.po``, one domain for the texts
added to forwarded mail and the automatic reply (``mail``) and one for the
web pages (``pages``). The English text is the message id, so a language
or a message that is missing falls back to English, never to an error.

Catalogues are read from their ``.po`` source with Babel when first used:
there is no compile step, so a clean clone, a wheel and an operator's own
directory of catalogues behave alike. An operator's directory
(``[i18n] directory`` in the config) is searched first, per language and
per domain, so one message can be reworded without copying the rest.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

#: Where the shipped catalogues live.
SHIPPED = Path(__file__).parent / "locale"

#: The default and fallback language: the language of the message ids.
DEFAULT = "en"

#: The catalogue domains: texts in mail, texts on pages.
DOMAINS = ("mail", "pages")


def shipped_languages() -> tuple[str, ...]:
    """The languages the gateway ships catalogues for, English first."""
    found = sorted(p.name for p in SHIPPED.iterdir() if (p / "LC_MESSAGES").is_dir()) if SHIPPED.is_dir() else []
    return (DEFAULT, *(lang for lang in found if lang != DEFAULT))


def _normalise(tag: str) -> str:
    """``es-MX`` and ``es_mx`` as ``es_MX``; ``FR`` as ``fr``."""
    parts = tag.strip().replace("-", "_").split("_")
    if not parts or not parts[0]:
        return ""
    head = parts[0].lower()
    return head if len(parts) == 1 else f"{head}_{parts[1].upper()}"


def normalise(tag: str) -> str:
    """A language tag as the catalogue directories name it: ``es-MX`` as ``es_MX``."""
    return _normalise(tag)


@lru_cache(maxsize=256)
def _load(path: Path, mtime_ns: int) -> gettext.GNUTranslations:
    """One ``.po`` file as translations (cached until the file changes)."""
    with path.open("rb") as f:
        catalog = read_po(f)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def _catalogue(directory: Path, lang: str, domain: str) -> gettext.GNUTranslations | None:
    path = directory / lang / "LC_MESSAGES" / f"{domain}.po"
    try:
        return _load(path, path.stat().st_mtime_ns)
    except FileNotFoundError:
        return None


class Catalogues:
    """The catalogues in use: the operator's directory, if any, before the
    shipped ones; English (the message ids) last."""

    def __init__(self, override: Path | None = None) -> None:
        self.override = override

    def languages(self) -> tuple[str, ...]:
        """Every language with a catalogue here, English first."""
        extra: list[str] = []
        if self.override is not None and self.override.is_dir():
            extra = sorted(p.name for p in self.override.iterdir() if (p / "LC_MESSAGES").is_dir())
        langs = list(shipped_languages())
        langs += [lang for lang in extra if lang not in langs]
        return tuple(langs)

    def _directories(self) -> list[Path]:
        return [d for d in (self.override, SHIPPED) if d is not None]

    def translations(self, lang: str, domain: str) -> gettext.NullTranslations:
        """The translations for ``lang`` (``es``, ``es_MX``...) in ``domain``:
        the most specific catalogue first, then the language's base, then
        English; a message found in none is its English id."""
        tag = _normalise(lang) or DEFAULT
        chain: list[str] = [tag]
        if "_" in tag:
            chain.append(tag.split("_")[0])
        if DEFAULT not in chain:
            chain.append(DEFAULT)
        head: gettext.NullTranslations = gettext.NullTranslations()
        found: list[gettext.NullTranslations] = []
        for code in chain:
            for directory in self._directories():
                t = _catalogue(directory, code, domain)
                if t is not None:
                    found.append(t)
        if not found:
            return head
        # gettext's fallback chain: each catalogue asks the next for what
        # it lacks. Copies, because add_fallback mutates and _load caches.
        chained = [_copy(t) for t in found]
        for a, b in zip(chained, chained[1:], strict=False):
            a.add_fallback(b)
        return chained[0]

    def negotiate(self, accept_language: str | None, available: Sequence[str] | None = None) -> str:
        """The best language for an ``Accept-Language`` header among those
        with catalogues; English when none matches or the header is absent."""
        return negotiate(accept_language, available if available is not None else self.languages())


def _copy(t: gettext.NullTranslations) -> gettext.NullTranslations:
    c = gettext.GNUTranslations.__new__(gettext.GNUTranslations)
    c.__dict__.update(t.__dict__)
    c._fallback = None  # type: ignore[attr-defined]
    return c


def parse_accept_language(header: str) -> list[str]:
    """The language tags of an ``Accept-Language`` header, best first
    (q=0 dropped; ties keep the header's order)."""
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(accept_language: str | None, available: Iterable[str]) -> str:
    """The first of the header's languages that ``available`` has, by exact
    tag and then by base language; English otherwise."""
    have = {_normalise(a): a for a in available}
    for tag in parse_accept_language(accept_language or ""):
        t = _normalise(tag)
        if t in have:
            return have[t]
        base = t.split("_")[0]
        if base in have:
            return have[base]
        for code, original in have.items():
            if code.split("_")[0] == base:
                return original
    return DEFAULT


_default = Catalogues()


def translations(lang: str, domain: str) -> gettext.NullTranslations:
    """The shipped catalogues' translations (see :meth:`Catalogues.translations`)."""
    return _default.translations(lang, domain)
