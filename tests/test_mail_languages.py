"""Mail in the route's language (issue 19, item 4): real mail sent with
smtplib through ``attachment-gateway serve`` to a real SMTP sink, the
forwarded message and the automatic reply decoded and read; the config
checked by ``check-config`` as an administrator runs it."""
from __future__ import annotations

import email
import email.policy
import html
from collections.abc import Callable
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

from gateway.lineends import is_clean
from tests.harness import GatewayProcess, SmtpSink, strip_maildir_headers, wait_until
from tests.messages import leaves, message, parse, payload, pdf_bytes, send

EXECUTABLE = Path("/bin/true").read_bytes()  # a real ELF program


def route(sink: SmtpSink, language: str, **extra: Any) -> dict[str, Any]:
    """A route forwarding to ``sink``, offloading above 4 KiB, in ``language``."""
    return {"next_hop": f"smtp://127.0.0.1:{sink.port}", "offload_threshold": "4KiB", "language": language,
            **extra}


def send_pdf_and_program(gw: GatewayProcess) -> None:
    send(gw.smtp_port, message("Adjunto la factura.\n", "<html><body><p>Adjunto la factura.</p></body></html>",
                               [(pdf_bytes(20000), "application/pdf", "factura.pdf"),
                                (EXECUTABLE, "application/octet-stream", "programa.exe")], Subject="Mi reclamación"))


def texts_of(data: bytes) -> tuple[str, str, list[str]]:
    """The decoded text and HTML bodies and the inline notices of a message."""
    parts = leaves(parse(data))
    text = next(p for p in parts if p.get_content_type() == "text/plain" and p.get("Content-Disposition") is None)
    htm = next(p for p in parts if p.get_content_type() == "text/html")
    notices = [payload(p).decode("utf-8").replace("\r\n", "\n") for p in parts
               if p.get_content_type() == "text/plain" and p.get("Content-Disposition") == "inline"]
    return (payload(text).decode("utf-8").replace("\r\n", "\n"), payload(htm).decode("utf-8").replace("\r\n", "\n"),
            notices)


def wire_is_clean(data: bytes) -> None:
    """What the gateway added is 7-bit, CRLF-only: the wire rules hold in any language."""
    body = data.replace(b"\r\n", b"")
    assert b"\r" not in body and b"\n" not in body and b"\0" not in body
    assert data.isascii(), "added text is UTF-8 inside quoted-printable or base64"


def test_a_spanish_route_forwards_spanish_notices_and_link_lines(make_gateway: Callable[..., GatewayProcess],
                                                                 sink: SmtpSink) -> None:
    gw = make_gateway(route=route(sink, "es"))
    send_pdf_and_program(gw)
    [got] = sink.wait(1)
    wire_is_clean(got.data)
    text, htm, notices = texts_of(got.data)
    assert "[Archivo adjunto seguro: factura.pdf](http://127.0.0.1:" in text
    # /bin/true is "a program" or "a program library" as libmagic sees the build.
    assert "Se ha eliminado el archivo adjunto «programa.exe»: es un" in text
    assert " de programa, y no se aceptan programas ni scripts." in text or \
        "es un programa, y no se aceptan programas ni scripts." in text
    assert ">Archivo adjunto seguro: factura.pdf</a> (20 KB)" in htm
    assert html.escape("Se ha eliminado el archivo adjunto «programa.exe»: es un") in htm
    assert any("se ha trasladado a un almacenamiento seguro" in n for n in notices)
    assert any(n.startswith("Se ha eliminado el archivo adjunto «programa.exe»") for n in notices)
    assert "Secure Attachment" not in text and "was removed" not in text
    # The log and the audit stay in English: they are read by tools.
    [refused] = [e for e in gw.audit() if e["EventType"] == "FileRefused"]
    assert refused["EventResultDetails"].endswith("and programs and scripts are not accepted")


def test_a_french_route_answers_the_customer_in_french(make_gateway: Callable[..., GatewayProcess],
                                                       sink: SmtpSink) -> None:
    replies = SmtpSink().start()
    try:
        gw = make_gateway(route=route(sink, "fr", autoreply={
            "from": "Support <support@contact.example>", "next_hop": f"smtp://127.0.0.1:{replies.port}",
            "upload_url": "https://upload.contact.example/"}),
            sections={"branding": {"name": "Assurances Exemple",
                                   "support": {"email": "aide@contact.example", "phone": "+33 1 00 00 00 00"}}})
        send_pdf_and_program(gw)
        [reply] = replies.wait(1)
        wire_is_clean(reply.data)
        r = parse(reply.data)
        assert r["Auto-Submitted"] == "auto-replied" and reply.mail_from == "<>"
        assert str(make_header(decode_header(r["Subject"]))) == "Votre pièce jointe n'a pas pu être acceptée"
        body = payload(r).decode("utf-8").replace("\r\n", "\n")
        assert body.startswith("Bonjour,\n\nMerci pour votre message « Mi reclamación ».")
        assert "- programa.exe: c'est un" in body
        assert "et les programmes et scripts ne sont pas acceptés" in body
        assert "page de dépôt sécurisée : http://127.0.0.1:" in body  # a fresh invitation
        assert "Hello" not in body
        # Signed as [branding] says, below the signature separator.
        assert body.endswith("\n-- \nAssurances Exemple\naide@contact.example\n+33 1 00 00 00 00\n"), body
        [forwarded] = sink.wait(1)
        assert "Pièce jointe sécurisée : factura.pdf" in texts_of(forwarded.data)[0]
    finally:
        replies.stop()


def test_an_unknown_language_is_a_config_error(make_gateway: Callable[..., GatewayProcess],
                                               sink: SmtpSink) -> None:
    gw = make_gateway(start=False, route=route(sink, "xx"))
    r = gw.command("check-config")
    assert r.returncode == 78, r.stderr
    assert "routes[0].language: 'xx': no mail catalogue for this language; expected one of en, es, fr" in r.stderr


def write_catalogue(directory: Path, lang: str, entries: dict[str, str]) -> None:
    po = directory / lang / "LC_MESSAGES" / "mail.po"
    po.parent.mkdir(parents=True, exist_ok=True)
    po.write_text('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  + "".join(f'msgid "{k}"\nmsgstr "{v}"\n\n' for k, v in entries.items()), encoding="utf-8")


def test_an_operator_catalogue_rewords_one_message(make_gateway: Callable[..., GatewayProcess], sink: SmtpSink,
                                                   tmp_path: Path) -> None:
    locale = tmp_path / "locale"
    write_catalogue(locale, "es", {"Secure Attachment: {filename}": "Descargue {filename} aquí"})
    gw = make_gateway(route=route(sink, "es"), sections={"i18n": {"directory": str(locale)}})
    assert gw.command("check-config").returncode == 0
    send_pdf_and_program(gw)
    [got] = sink.wait(1)
    text, _, _ = texts_of(got.data)
    assert "[Descargue factura.pdf aquí](http://127.0.0.1:" in text
    # The messages the operator left alone are still the shipped Spanish ones.
    assert "Se ha eliminado el archivo adjunto «programa.exe»" in text


def test_a_missing_translation_falls_back_to_english(make_gateway: Callable[..., GatewayProcess], sink: SmtpSink,
                                                     tmp_path: Path) -> None:
    locale = tmp_path / "locale"
    write_catalogue(locale, "de", {"Secure Attachment: {filename}": "Sicherer Anhang: {filename}"})
    gw = make_gateway(route=route(sink, "de"), sections={"i18n": {"directory": str(locale)}})
    send_pdf_and_program(gw)
    [got] = sink.wait(1)
    text, _, notices = texts_of(got.data)
    assert "[Sicherer Anhang: factura.pdf](http://127.0.0.1:" in text
    assert 'The attachment "programa.exe" was removed: it is a program' in text
    assert "and programs and scripts are not accepted." in text
    assert any("was moved to secure storage" in n for n in notices)


def test_check_config_rejects_a_template_or_a_catalogue_with_an_unknown_field(
        make_gateway: Callable[..., GatewayProcess], sink: SmtpSink, tmp_path: Path) -> None:
    gw = make_gateway(start=False, route=route(sink, "es", link_text="Archivo: {filname}"))
    r = gw.command("check-config")
    assert r.returncode == 78, r.stderr
    assert ("routes[0].link_text: 'Archivo: {filname}': unknown field {filname}; the fields allowed are "
            "{filename}, {size}") in r.stderr
    locale = tmp_path / "locale"
    write_catalogue(locale, "es", {"The attachment \\\"{filename}\\\" was removed: {reason}.":
                                   "Quitamos {filname}: {razon}."})
    gw = make_gateway(start=False, route=route(sink, "es"), sections={"i18n": {"directory": str(locale)}})
    r = gw.command("check-config")
    assert r.returncode == 78, r.stderr
    po = locale / "es" / "LC_MESSAGES" / "mail.po"
    assert f"i18n.directory: {po}: message 'The attachment \"{{filename}}\" was removed: {{reason}}.': " \
           "unknown field {filname}; the fields allowed are {filename}, {reason}" in r.stderr
    assert "unknown field {razon}" in r.stderr


def test_a_spanish_route_returns_undeliverable_mail_with_a_spanish_report(
        make_gateway: Callable[..., GatewayProcess]) -> None:
    refusing = SmtpSink(reply_data="550 5.1.1 no such mailbox").start()
    try:
        gw = make_gateway(route=route(refusing, "es"))
        send(gw.smtp_port, message("Hola.\n", Subject="Factura 42"))
        bounces = gw.tmp / "bounces" / "new"
        wait_until(lambda: bounces.exists() and any(bounces.iterdir()), timeout=30, what="a DSN")
        [data] = [p.read_bytes() for p in bounces.iterdir()]
        assert is_clean(strip_maildir_headers(data))  # CRLF only; the report's header block is ASCII
        assert data.split(b"\r\n\r\n", 1)[0].isascii()
        dsn = email.message_from_bytes(data, policy=email.policy.default)
        assert dsn["Subject"] == "Correo no entregado devuelto al remitente"
        human = dsn.get_payload()[0].get_content()  # type: ignore[index]
        assert "Le escribe el sistema de correo del servidor gw.test." in human
        assert "No se ha podido entregar su mensaje a uno o varios destinatarios." in human
        assert "Action: failed" in data.decode() and "Status: 5.1.1" in data.decode()
    finally:
        refusing.stop()
