"""The mail catalogue (gateway/mailtext.py, gateway/locale/*/LC_MESSAGES/mail.po):
every text the code marks is translated in every shipped language with the
same fields, a message a catalogue lacks is English, filling never expands
what a sender wrote, and an operator's catalogue with a wrong field is
reported by file, message and field."""
from __future__ import annotations

import email
import email.policy
from functools import lru_cache
from pathlib import Path

import pytest
from babel.messages.extract import extract
from babel.messages.pofile import read_po

import policies
from gateway import i18n, mailtext
from gateway.delivery.dsn import build_dsn
from gateway.disarm import ooxml, pdf
from gateway.lineends import is_clean
from gateway.spool.envelope import Envelope
from policies.filetypes import TYPE_NAMES

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = [lang for lang in i18n.shipped_languages() if lang != i18n.DEFAULT]


@lru_cache(maxsize=1)
def code_messages() -> frozenset[str | tuple[str, str]]:
    """Every mail message id the code uses: marked with M_/MN_ (Babel's own
    extractor), the type names and the words disarming reports."""
    found: set[str | tuple[str, str]] = set()
    for package in ("gateway", "policies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "M_(" not in path.read_text(encoding="utf-8"):
                continue  # only files that mark messages are worth Babel's parse
            with path.open("rb") as f:
                for _, msg, _, _ in extract("python", f, keywords={"M_": None, "MN_": (1, 2)}):
                    found.add(msg)
    found |= set(TYPE_NAMES.values())
    found |= set(pdf._ORDER) | set(ooxml._ORDER)
    return frozenset(found)


def catalogue(lang: str):  # type: ignore[no-untyped-def]
    with (i18n.SHIPPED / lang / "LC_MESSAGES" / "mail.po").open("rb") as f:
        return read_po(f)


def test_two_languages_besides_english_are_shipped() -> None:
    assert {"es", "fr"} <= set(LANGUAGES)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_message_in_the_code_is_translated(lang: str) -> None:
    cat = catalogue(lang)
    have = {m.id if isinstance(m.id, str) else tuple(m.id): m for m in cat if m.id}
    missing = [m for m in code_messages() if m not in have]
    assert not missing, f"{lang}: not in mail.po: {missing}"
    untranslated = [k for k, m in have.items()
                    if not (m.string if isinstance(m.string, str) else all(m.string))]
    assert not untranslated, f"{lang}: empty translations: {untranslated}"
    stale = [k for k in have if k not in code_messages()]
    assert not stale, f"{lang}: messages no code uses: {stale}"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_translation_keeps_the_fields_of_its_message(lang: str) -> None:
    for m in catalogue(lang):
        if not m.id:
            continue
        ids = (m.id,) if isinstance(m.id, str) else tuple(m.id)
        strings = (m.string,) if isinstance(m.string, str) else tuple(m.string)
        want = mailtext.template_fields(ids[-1])
        for s in strings:
            assert mailtext.template_fields(s) == want, (lang, ids[0], s)
            assert not mailtext.template_errors(s, want), (lang, ids[0], s)
        assert mailtext.catalogue_errors(i18n.SHIPPED / lang / "LC_MESSAGES" / "mail.po") == []


def test_spanish_and_french_sentences() -> None:
    es = mailtext.for_language(i18n.Catalogues(), "es")
    fr = mailtext.for_language(i18n.Catalogues(), "fr-FR")
    assert es.link_label(None, "factura.pdf", 12 << 20) == "Archivo adjunto seguro: factura.pdf"
    assert es.size(12 << 20) == "12,0 MB" and fr.size(12 << 20) == "12,0 Mo" and fr.size(1) == "1 octet"
    assert fr.landing_label(None, 3, 5 << 20) == "Pièces jointes sécurisées : 3 fichiers"
    d = policies.Decision(policies.Action.REFUSE, "refuse_executables", **policies.explained(
        "it is {type}, and programs and scripts are not accepted", type=policies.TypeName("application/x-dosexec")))
    assert d.reason == "it is a Windows program, and programs and scripts are not accepted"
    assert es.reason(d) == "es un programa de Windows, y no se aceptan programas ni scripts"
    assert fr.text(mailtext.REMOVED, filename="a.exe", reason=fr.reason(d)) == \
        "La pièce jointe « a.exe » a été retirée : c'est un programme Windows, et les programmes et scripts " \
        "ne sont pas acceptés."
    assert fr.disarmed(("scripts", "2 embedded files")) == "suppression de scripts et 2 fichiers incorporés"


def test_a_message_or_a_language_without_a_translation_is_english(tmp_path: Path) -> None:
    es = mailtext.for_language(i18n.Catalogues(), "es")
    assert es.text("A sentence no catalogue has: {x}.", x="{size}") == "A sentence no catalogue has: {size}."
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "de" / "LC_MESSAGES" / "mail.po").write_text(
        'msgid "Secure Attachment: {filename}"\nmsgstr "Sicherer Anhang: {filename}"\n', encoding="utf-8")
    de = mailtext.for_language(mailtext.catalogues(tmp_path), "de")
    assert de.link_label(None, "x.pdf", 10) == "Sicherer Anhang: x.pdf"
    assert de.text(mailtext.REMOVED, filename="x.exe", reason="r") == 'The attachment "x.exe" was removed: r.'
    assert set(mailtext.mail_languages(mailtext.catalogues(tmp_path))) == {"en", "de", "es", "fr"}


def test_filling_never_expands_what_came_from_the_message() -> None:
    assert mailtext.fill("{filename} ({size}) {{literal}} {unknown}", filename="{size}", size="1 KB") == \
        "{size} (1 KB) {literal} {unknown}"
    es = mailtext.for_language(i18n.Catalogues(), "es")
    assert es.link_label("Doc: {filename}", "{size}.pdf", 2048) == "Doc: {size}.pdf"


def test_template_errors_name_the_field_and_the_fields_allowed() -> None:
    assert mailtext.template_errors("File {filname}", ("filename", "size")) == \
        ["unknown field {filname}; the fields allowed are {filename}, {size}"]
    assert mailtext.template_errors("{0} and {size:>9}", ("size",))
    assert mailtext.template_errors("{{braces}} and {size}", ("size",)) == []


def test_an_operator_catalogue_with_an_unknown_field_is_reported(tmp_path: Path) -> None:
    po = tmp_path / "es" / "LC_MESSAGES" / "mail.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid "Secure Attachment: {filename}"\nmsgstr "Adjunto: {filname}"\n', encoding="utf-8")
    [error] = mailtext.catalogue_errors(po)
    assert str(po) in error and "'Secure Attachment: {filename}'" in error
    assert "unknown field {filname}; the fields allowed are {filename}" in error


def test_a_delivery_report_in_french_is_clean_and_encoded() -> None:
    fr = mailtext.for_language(i18n.Catalogues(), "fr")
    env = Envelope(queue_id="Q1", mail_from="customer@example.net", rcpt_tos=["a@contact.example"],
                   route="contact", received_at=1.7e9)
    data = build_dsn(env, {"a@contact.example": "550 5.1.1 no such user"}, b"Subject: hi\r\n", "gw.test",
                     texts=fr)
    assert is_clean(data) and data.split(b"\r\n\r\n", 1)[0].isascii()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert str(msg["Subject"]) == "Message non remis retourné à l'expéditeur"
    human = msg.get_payload()[0].get_content()  # type: ignore[index]
    assert "Votre message n'a pas pu être remis" in human and "Ceci est le système de messagerie" in human
    assert "Undelivered" not in build_dsn(env, {}, b"", "gw.test", texts=fr).decode("utf-8")
