"""The content policies at their boundaries, one table row a case (issue 14,
"fail closed on content"): facts built directly, no gateway, no I/O.

Each row is a part as an attacker who can only send mail could shape it
(declared type, detected type, name, size, attachment or message text,
signature flag, packed TNEF) and the policy and action the default
policies must reach for it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import policies
from policies import Action, PartFacts, RouteFacts, message_text
from policies.allowed_types import RefuseUnlistedTypes
from policies.filetypes import (DOCM, DOCX, DOTM, HTA, IQY, OOXML_REMOTE, PPSM, PPTM, PPTX, SVG, SYLK,
                                UNEXAMINED_ARCHIVE, URL_SHORTCUT, XLAM, XLSB, XLSM, XLSX, describe)

ROUTE = RouteFacts(name="r", offload_threshold=1000, next_hop_max_size=100_000)
DEFAULT = [policies.build(n, {}) for n in policies.DEFAULT_POLICIES]


def facts(**kw: Any) -> PartFacts:
    """A 100-byte PDF attachment named scan.pdf, declared as octet-stream, changed by ``kw``."""
    base: dict[str, Any] = dict(path="2", declared_type="application/octet-stream", filename="scan.pdf", decoded_size=100,
                                is_body=False, disposition="attachment", route=ROUTE,
                                detected_type="application/pdf", is_attachment=True)
    base.update(kw)
    return PartFacts(**base)


def nameless_text(**kw: Any) -> PartFacts:
    """An inline part with no filename, declared text/plain: not an attachment."""
    base: dict[str, Any] = dict(declared_type="text/plain", filename="", disposition="", is_attachment=False,
                                detected_type="text/plain")
    return facts(**{**base, **kw})


KEEP = ("default", Action.KEEP)
ROWS: list[tuple[str, PartFacts, tuple[str, Action]]] = [
    ("a PDF", facts(), KEEP),
    ("plain text named .txt", facts(declared_type="text/plain", filename="a.txt", detected_type="text/plain"), KEEP),
    ("plain text named .log", facts(declared_type="text/plain", filename="a.LOG", detected_type="text/plain"), KEEP),
    ("a file without extension", facts(filename="README", declared_type="application/octet-stream"), KEEP),
    ("plain text named .hta", facts(declared_type="text/plain", filename="a.hta", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .iqy", facts(declared_type="text/plain", filename="q.iqy", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .url", facts(filename="x.url", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .desktop", facts(filename="x.desktop", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .svg", facts(filename="x.svg", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .html", facts(filename="x.html", declared_type="text/html", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .mht", facts(filename="x.mht", detected_type="text/plain"), ("refuse_executables", Action.REFUSE)),
    ("plain text named .xhtml", facts(filename="x.xhtml", detected_type="text/plain"),
     ("refuse_executables", Action.REFUSE)),
    ("plain text named .js", facts(filename="x.js", detected_type="text/plain"), ("refuse_executables", Action.REFUSE)),
    ("plain text named .vbs", facts(filename="x.vbs", detected_type="text/plain"), ("refuse_executables", Action.REFUSE)),
    ("plain text named .wsf", facts(filename="x.wsf", detected_type="text/plain"), ("refuse_executables", Action.REFUSE)),
    ("plain text named .ps1", facts(filename="x.ps1", detected_type="text/plain"), ("refuse_executables", Action.REFUSE)),
    ("plain text named .rtf", facts(filename="x.rtf", detected_type="text/plain"), ("allowed_types", Action.REFUSE)),
    ("plain text named .one", facts(filename="x.one", detected_type="text/plain"), ("allowed_types", Action.REFUSE)),
    ("plain text named .dat", facts(filename="x.dat", detected_type="text/plain"), ("allowed_types", Action.REFUSE)),
    ("plain text with an NTFS stream name", facts(filename="x.hta::$DATA", detected_type="text/plain"),
     ("allowed_types", Action.REFUSE)),
    ("a PDF named .txt", facts(filename="x.txt"), ("refuse_spoofed", Action.REFUSE)),
    ("a JPEG named .jfif", facts(filename="x.jfif", declared_type="image/jpeg", detected_type="image/jpeg"), KEEP),
    # Active content found in the bytes (sniff.active_type), whatever the name.
    ("an SVG named .txt", facts(filename="x.txt", declared_type="text/plain", detected_type=SVG),
     ("refuse_spoofed", Action.REFUSE)),
    ("an SVG named .dat", facts(filename="x.dat", detected_type=SVG), ("allowed_types", Action.REFUSE)),
    ("an HTA named .dat", facts(filename="x.dat", detected_type=HTA), ("refuse_executables", Action.REFUSE)),
    ("an IQY named .dat", facts(filename="x.dat", detected_type=IQY), ("refuse_executables", Action.REFUSE)),
    ("a shortcut named .dat", facts(filename="x.dat", detected_type=URL_SHORTCUT),
     ("refuse_executables", Action.REFUSE)),
    ("a SYLK named .csv", facts(filename="x.csv", declared_type="text/csv", detected_type=SYLK),
     ("refuse_spoofed", Action.REFUSE)),
    ("a SYLK named .slk", facts(filename="x.slk", detected_type=SYLK), ("refuse_executables", Action.REFUSE)),
    # Office: the flavour the container examination found decides.
    ("a DOCX", facts(filename="c.docx", declared_type=DOCX, detected_type=DOCX), KEEP),
    ("a DOCM named .docx", facts(filename="c.docx", declared_type=DOCX, detected_type=DOCM),
     ("refuse_spoofed", Action.REFUSE)),
    ("a DOCM named .docm", facts(filename="c.docm", declared_type="application/octet-stream", detected_type=DOCM),
     ("allowed_types", Action.REFUSE)),
    ("a DOTM", facts(filename="c.dotm", detected_type=DOTM), ("allowed_types", Action.REFUSE)),
    ("an XLSM named .xlsx", facts(filename="c.xlsx", declared_type=XLSX, detected_type=XLSM),
     ("refuse_spoofed", Action.REFUSE)),
    ("an XLAM", facts(filename="c.xlam", detected_type=XLAM), ("allowed_types", Action.REFUSE)),
    ("an XLSB", facts(filename="c.xlsb", detected_type=XLSB), ("allowed_types", Action.REFUSE)),
    ("a PPTM named .pptx", facts(filename="c.pptx", declared_type=PPTX, detected_type=PPTM),
     ("refuse_spoofed", Action.REFUSE)),
    ("a PPSM", facts(filename="c.ppsm", detected_type=PPSM), ("allowed_types", Action.REFUSE)),
    ("a DOCX with a remote template", facts(filename="c.docx", declared_type=DOCX, detected_type=OOXML_REMOTE),
     ("refuse_executables", Action.REFUSE)),
    ("an XLSX named .docx", facts(filename="c.docx", declared_type=DOCX, detected_type=XLSX),
     ("refuse_spoofed", Action.REFUSE)),
    ("a ZIP named .docx", facts(filename="c.docx", declared_type=DOCX, detected_type="application/zip"),
     ("refuse_spoofed", Action.REFUSE)),
    ("an unreadable archive named .zip", facts(filename="c.zip", declared_type="application/octet-stream",
                                                detected_type=UNEXAMINED_ARCHIVE), ("refuse_spoofed", Action.REFUSE)),
    ("an unreadable archive named .bin", facts(filename="c.bin", declared_type="application/octet-stream",
                                                detected_type=UNEXAMINED_ARCHIVE), ("allowed_types", Action.REFUSE)),
    ("an old Word document", facts(filename="c.doc", declared_type="application/msword",
                                   detected_type="application/msword"), ("allowed_types", Action.REFUSE)),
    ("an OLE file", facts(filename="c.xls", detected_type="application/x-ole-storage"),
     ("allowed_types", Action.REFUSE)),
    ("an old Excel workbook", facts(filename="c.xls", detected_type="application/vnd.ms-excel"),
     ("allowed_types", Action.REFUSE)),
    ("a OneNote notebook", facts(filename="n.one", detected_type="application/octet-stream"),
     ("allowed_types", Action.REFUSE)),
    ("an RTF", facts(filename="r.rtf", declared_type="text/rtf", detected_type="text/rtf"),
     ("allowed_types", Action.REFUSE)),
    # Declared types exempt nothing.
    ("an RTF declared as an S/MIME signature",
     facts(filename="smime.p7s", declared_type="application/pkcs7-signature", detected_type="text/rtf"),
     ("allowed_types", Action.REFUSE)),
    ("an OLE file declared as an S/MIME signature",
     facts(filename="smime.p7s", declared_type="application/pkcs7-signature",
           detected_type="application/x-ole-storage"), ("allowed_types", Action.REFUSE)),
    ("opaque data declared as an S/MIME signature outside multipart/signed",
     facts(filename="smime.p7s", declared_type="application/pkcs7-signature",
           detected_type="application/octet-stream"), ("allowed_types", Action.REFUSE)),
    ("a PGP signature outside multipart/signed",
     facts(filename="signature.asc", declared_type="application/pgp-signature",
           detected_type="application/pgp-signature"), ("allowed_types", Action.REFUSE)),
    ("the S/MIME signature of a multipart/signed",
     facts(filename="smime.p7s", declared_type="application/pkcs7-signature",
           detected_type="application/octet-stream", signature_of_signed=True), KEEP),
    ("the PGP signature of a multipart/signed",
     facts(filename="signature.asc", declared_type="application/pgp-signature",
           detected_type="application/pgp-signature", signature_of_signed=True), KEEP),
    ("an OLE file as the signature of a multipart/signed",
     facts(filename="smime.p7s", declared_type="application/pkcs7-signature",
           detected_type="application/x-ole-storage", signature_of_signed=True), ("allowed_types", Action.REFUSE)),
    ("a DOCM as the signature of a multipart/signed",
     facts(filename="smime.p7s", declared_type="application/pkcs7-signature", detected_type=DOCM,
           signature_of_signed=True), ("allowed_types", Action.REFUSE)),
    ("an old Word document declared message/rfc822",
     facts(filename="", declared_type="message/rfc822", disposition="", is_attachment=False,
           detected_type="application/msword"), ("allowed_types", Action.REFUSE)),
    ("an RTF declared message/rfc822",
     facts(filename="", declared_type="message/rfc822", disposition="", is_attachment=False,
           detected_type="text/rtf"), ("allowed_types", Action.REFUSE)),
    ("a DOCM declared multipart/mixed (a leaf without a boundary)",
     facts(filename="", declared_type="multipart/mixed", disposition="", is_attachment=False, detected_type=DOCM),
     ("allowed_types", Action.REFUSE)),
    ("a ZIP declared message/delivery-status",
     facts(filename="", declared_type="message/delivery-status", disposition="", is_attachment=False,
           detected_type="application/zip"), ("allowed_types", Action.REFUSE)),
    # TNEF that could not be unpacked.
    ("a packed TNEF", facts(filename="winmail.dat", declared_type="application/ms-tnef",
                            detected_type="application/vnd.ms-tnef", packed_tnef=True),
     ("allowed_types", Action.REFUSE)),
    ("a packed TNEF that sniffs as text", facts(filename="winmail.dat", declared_type="application/ms-tnef",
                                                detected_type="text/plain", packed_tnef=True),
     ("allowed_types", Action.REFUSE)),
    ("a packed TNEF named like a PDF", facts(filename="winmail.pdf", declared_type="application/ms-tnef",
                                             detected_type="application/pdf", packed_tnef=True),
     ("allowed_types", Action.REFUSE)),
    # Message text: no filename, declared text.
    ("message text", nameless_text(), KEEP),
    ("an empty message text", nameless_text(decoded_size=0, detected_type="application/x-empty"), KEEP),
    ("HTML message text", nameless_text(declared_type="text/html", detected_type="text/html"), KEEP),
    ("HTML message text over the threshold (offloaded as attachment.html)",
     nameless_text(declared_type="text/html", detected_type="text/html", decoded_size=1001),
     ("refuse_executables", Action.REFUSE)),
    ("plain message text declared HTML over the threshold",
     nameless_text(declared_type="text/html", decoded_size=1001), ("refuse_executables", Action.REFUSE)),
    ("plain message text over the threshold", nameless_text(decoded_size=1001), ("offload_large", Action.OFFLOAD)),
    ("message text that is HTML (named attachment.txt)", nameless_text(detected_type="text/html"), ("refuse_spoofed", Action.REFUSE)),
    ("message text that is an SVG (named attachment.txt)", nameless_text(detected_type=SVG), ("refuse_spoofed", Action.REFUSE)),
    ("HTML message text that is an SVG", nameless_text(declared_type="text/html", detected_type=SVG),
     ("refuse_executables", Action.REFUSE)),
    ("message text that is an HTA", nameless_text(detected_type=HTA), ("refuse_executables", Action.REFUSE)),
    ("message text that is a shell script", nameless_text(detected_type="text/x-shellscript"),
     ("refuse_executables", Action.REFUSE)),
    ("message text that is a ZIP (named attachment.txt)", nameless_text(detected_type="application/zip"), ("refuse_spoofed", Action.REFUSE)),
    ("message text that is a DOCM (named attachment.txt)", nameless_text(detected_type=DOCM), ("refuse_spoofed", Action.REFUSE)),
    ("message text that is a PDF", nameless_text(detected_type="application/pdf"), ("refuse_spoofed", Action.REFUSE)),
    ("message text that is RTF", nameless_text(detected_type="text/rtf"), ("refuse_spoofed", Action.REFUSE)),
    ("a nameless RTF declared text/rtf", nameless_text(declared_type="text/rtf", detected_type="text/rtf"),
     ("allowed_types", Action.REFUSE)),
    # Sixth attacker review: an RTF whose header is "{\\rt1" is plain text to
    # libmagic; nameless or without an extension, a client names and opens
    # it by its declared type (Outlook: ATT00001.doc), so Word reads it.
    ("a nameless plain text declared text/rtf", nameless_text(declared_type="text/rtf"),
     ("allowed_types", Action.REFUSE)),
    ("a nameless plain text declared application/msword",
     facts(filename="", declared_type="application/msword", detected_type="text/plain"),
     ("allowed_types", Action.REFUSE)),
    ("plain text named without extension, declared application/rtf",
     facts(filename="claim", declared_type="application/rtf", detected_type="text/plain"),
     ("allowed_types", Action.REFUSE)),
    ("plain text named without extension, declared an old Excel workbook",
     facts(filename="figures", declared_type="application/vnd.ms-excel", detected_type="text/plain"),
     ("allowed_types", Action.REFUSE)),
    ("a DOCX named without extension, declared as one", facts(filename="claim", declared_type=DOCX,
                                                              detected_type=DOCX), KEEP),
    ("plain text named .txt, declared application/msword (the name decides)",
     facts(filename="claim.txt", declared_type="application/msword", detected_type="text/plain"), KEEP),
    ("plain text declared text/enriched (judged as a file; plain text passes)",
     nameless_text(declared_type="text/enriched"), KEEP),
    ("an SVG declared text/enriched", nameless_text(declared_type="text/enriched", detected_type=SVG),
     ("allowed_types", Action.REFUSE)),
    ("a delivery report's returned headers", nameless_text(declared_type="text/rfc822-headers",
                                                           detected_type="message/rfc822"), KEEP),
    ("a mail declared as plain message text (named attachment.txt)",
     nameless_text(detected_type="message/rfc822"), ("refuse_spoofed", Action.REFUSE)),
    ("an empty leaf declared multipart", nameless_text(declared_type="multipart/related", decoded_size=0,
                                                       detected_type="application/x-empty"), KEEP),
    ("message text of unknown type", nameless_text(detected_type=None), ("allowed_types", Action.REFUSE)),
    ("message text that is a program", nameless_text(detected_type="application/x-dosexec"),
     ("refuse_executables", Action.REFUSE)),
    ("an attachment of unknown type", facts(detected_type=None), ("allowed_types", Action.REFUSE)),
    # Sizes at the boundaries.
    ("an empty attachment", facts(decoded_size=0, detected_type="application/x-empty"),
     ("empty_attachment", Action.REPLACE)),
    ("an empty attachment named .exe", facts(decoded_size=0, filename="x.exe", detected_type="application/x-empty"),
     ("empty_attachment", Action.REPLACE)),
    ("a PDF at the threshold", facts(decoded_size=1000), KEEP),
    ("a PDF one byte over", facts(decoded_size=1001), ("offload_large", Action.OFFLOAD)),
    # The body is never judged here.
    ("the body, whatever it is", facts(is_body=True, detected_type="application/x-dosexec", filename="x.exe"), KEEP),
]


@pytest.mark.parametrize("part,expected", [(p, e) for _, p, e in ROWS], ids=[r[0] for r in ROWS])
def test_default_policies_decide(part: PartFacts, expected: tuple[str, Action]) -> None:
    d = policies.decide(DEFAULT, part)
    assert (d.policy, d.action) == expected, d.reason


def test_the_reasons_name_what_the_file_is() -> None:
    d = policies.decide(DEFAULT, facts(filename="c.docm", declared_type="application/octet-stream",
                                       detected_type=DOCM))
    assert d.reason == "it is a Word document with macros (DOCM), a type this address does not accept"
    d = policies.decide(DEFAULT, facts(filename="x.rtf", detected_type="text/plain"))
    assert d.reason == "its name ends in .rtf, but it is plain text, accepted only as .txt, .text, .log, .csv, .tsv"
    d = policies.decide(DEFAULT, facts(filename="winmail.dat", declared_type="application/ms-tnef",
                                       detected_type="application/vnd.ms-tnef", packed_tnef=True))
    assert "TNEF" in d.reason and "could not be unpacked" in d.reason
    d = policies.decide(DEFAULT, facts(filename="a.bin", detected_type=UNEXAMINED_ARCHIVE))
    assert d.reason.startswith("it could not be examined")
    for t in (DOCM, DOTM, XLSM, XLAM, XLSB, PPTM, PPSM, SVG, HTA, IQY, URL_SHORTCUT, SYLK, UNEXAMINED_ARCHIVE):
        assert not describe(t).startswith("a file of type"), t


def test_message_text_is_decided_by_the_bytes() -> None:
    assert message_text(nameless_text())
    assert not message_text(nameless_text(detected_type=SVG))
    assert not message_text(nameless_text(detected_type="text/html"))  # declared plain, is HTML
    assert message_text(nameless_text(declared_type="text/html", detected_type="text/html"))
    assert not message_text(dataclasses.replace(nameless_text(), is_attachment=True))
    assert message_text(nameless_text(decoded_size=ROUTE.offload_threshold + 1))  # offloaded as .txt
    assert not message_text(nameless_text(declared_type="text/html", detected_type="text/html",
                                          decoded_size=ROUTE.offload_threshold + 1))  # offloaded as .html


ALLOW_ROWS: list[tuple[Any, dict[str, tuple[str, ...]]]] = [
    (["application/pdf", "TEXT/PLAIN "], {"application/pdf": ("pdf",),
                                          "text/plain": ("txt", "text", "log", "csv", "tsv")}),
    ({"text/plain": ["txt", ".LOG"]}, {"text/plain": ("txt", "log")}),
    ({"application/x-custom": ["cst"]}, {"application/x-custom": ("cst",)}),
]


@pytest.mark.parametrize("allow,expected", ALLOW_ROWS)
def test_the_allow_setting_takes_a_list_or_a_table(allow: Any, expected: dict[str, tuple[str, ...]]) -> None:
    p = policies.build("allowed_types", {"allow": allow})
    assert isinstance(p, RefuseUnlistedTypes)
    assert p.allow == expected


def test_the_default_allow_list_has_extensions_per_type() -> None:
    p = policies.build("allowed_types", {})
    assert isinstance(p, RefuseUnlistedTypes)
    assert p.allow["image/jpeg"] == ("jpg", "jpeg", "jpe", "jfif")
    assert p.allow["application/pdf"] == ("pdf",)
    assert DOCM not in p.allow and "text/html" not in p.allow


def test_a_table_sets_the_extensions_of_a_type() -> None:
    p = policies.build("allowed_types", {"allow": {"text/plain": ["log"]}})
    text = facts(declared_type="text/plain", detected_type="text/plain")
    assert p.decide(dataclasses.replace(text, filename="a.log")) is None
    d = p.decide(dataclasses.replace(text, filename="a.txt"))
    assert d is not None and d.action is Action.REFUSE and d.details["extension"] == "txt"


@pytest.mark.parametrize("ctype,name", [("application/x-7z-compressed", "a.7z"), ("application/gzip", "a.tar.gz"),
                                        ("application/x-rar", "a.rar"), ("application/x-tar", "a.tar")])
def test_an_archive_the_gateway_does_not_open_is_refused_even_when_listed(ctype: str, name: str) -> None:
    p = policies.build("allowed_types", {"allow": {ctype: [name.rsplit(".", 1)[1]]}})
    d = p.decide(facts(filename=name, declared_type="application/octet-stream", detected_type=ctype))
    assert d is not None and d.action is Action.REFUSE and d.reason.startswith("it could not be examined")


BAD_ALLOW = [
    (["pdf"], "allow: ['pdf']: 'pdf': expected a MIME type such as \"application/pdf\" (policy allowed_types)"),
    (["application/x-custom"], "allow: ['application/x-custom']: 'application/x-custom': no default extensions are "
                               "known for this type; give them in the table form, allow = "
                               "{ \"application/x-custom\" = [\"ext\", ...] } (policy allowed_types)"),
    ({"text/plain": []}, "allow: {'text/plain': []}: 'text/plain': expected a list of extensions such as [\"pdf\"], "
                         "got [] (policy allowed_types)"),
    ({"text/plain": "txt"}, "allow: {'text/plain': 'txt'}: 'text/plain': expected a list of extensions such as "
                            "[\"pdf\"], got 'txt' (policy allowed_types)"),
    ({"text/plain": ["t xt"]}, "allow: {'text/plain': ['t xt']}: 'text/plain': 't xt': expected an extension such "
                               "as \"pdf\" (policy allowed_types)"),
    ({"plain": ["txt"]}, "allow: {'plain': ['txt']}: 'plain': expected a MIME type such as \"application/pdf\" "
                         "(policy allowed_types)"),
    ("application/pdf", "allow: 'application/pdf': expected a list of MIME types, or a table of MIME type = "
                        "[extensions] (policy allowed_types)"),
]


@pytest.mark.parametrize("allow,message", BAD_ALLOW)
def test_a_bad_allow_setting_names_the_key_and_value(allow: Any, message: str) -> None:
    with pytest.raises(policies.PolicyConfigError) as e:
        policies.build("allowed_types", {"allow": allow})
    assert str(e.value) == message


def test_signatures_can_be_refused_by_setting() -> None:
    p = policies.build("allowed_types", {"allow_signatures": False})
    sig = facts(filename="signature.asc", declared_type="application/pgp-signature",
                detected_type="application/pgp-signature", signature_of_signed=True)
    d = p.decide(sig)
    assert d is not None and d.action is Action.REFUSE
