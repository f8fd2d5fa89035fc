"""The catalogue layer: negotiation, fallback to English, operator override."""

from __future__ import annotations

from pathlib import Path

from gateway import i18n

PO = '''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\\n"

msgid "Hello"
msgstr "{text}"
'''


def _po(root: Path, lang: str, domain: str, text: str) -> None:
    d = root / lang / "LC_MESSAGES"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{domain}.po").write_text(PO.format(text=text), encoding="utf-8")


def test_accept_language_picks_by_quality_then_base_language() -> None:
    langs = ("en", "es", "fr")
    assert i18n.negotiate("fr-CA,fr;q=0.9,en;q=0.5", langs) == "fr"
    assert i18n.negotiate("de, es;q=0.2, fr;q=0.1", langs) == "es"
    assert i18n.negotiate("es;q=0, fr;q=0.1", langs) == "fr"
    assert i18n.negotiate("de-DE", langs) == "en"
    assert i18n.negotiate(None, langs) == "en"
    assert i18n.negotiate(";;;,q=,=,", langs) == "en"


def test_shipped_languages_include_spanish_and_french() -> None:
    assert {"en", "es", "fr"} <= set(i18n.shipped_languages())


def test_unknown_language_and_missing_message_fall_back_to_english(tmp_path: Path) -> None:
    cats = i18n.Catalogues(tmp_path)
    assert cats.translations("xx", "mail").gettext("Hello") == "Hello"
    assert cats.translations("es", "mail").gettext("No such message id") == "No such message id"


def test_operator_catalogue_overrides_and_regional_falls_back_to_base(tmp_path: Path) -> None:
    _po(tmp_path, "es", "mail", "Hola")
    _po(tmp_path, "en", "mail", "Good day")
    cats = i18n.Catalogues(tmp_path)
    assert cats.translations("es_MX", "mail").gettext("Hello") == "Hola"
    assert cats.translations("es-mx", "mail").gettext("Hello") == "Hola"
    # A language without the message gets the operator's English wording.
    assert cats.translations("fr", "mail").gettext("Hello") == "Good day"
    assert cats.translations("fr", "pages").gettext("Hello") == "Hello"
