"""The pages' texts and rendering, in process: every text of the templates
is in the Spanish and French catalogues with fitting placeholders, every
page renders in every language, the language follows Accept-Language
(unknown: English), and a route's allow-list reads in plain words."""
from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from gateway import config, i18n
from gateway.branding import contrast
from gateway.http.accepted import accepted
from gateway.http.pages import Pages
from tests.harness import ROOT

# The request id lives under a str key of the request, as in gateway/http/health.py.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


def _extracted() -> set[str | tuple[str, str]]:
    ids: set[str | tuple[str, str]] = set()
    for f in glob.glob(str(ROOT / "gateway" / "http" / "templates" / "*.html")):
        for _, msg, _, _ in extract_from_file("jinja2", f, options={"extensions": "jinja2.ext.i18n",
                                                                     "trimmed": "true"}):
            ids.add(msg if isinstance(msg, str) else tuple(msg[:2]))
    for f in ("accepted.py", "pages.py"):
        for _, msg, _, _ in extract_from_file("python", str(ROOT / "gateway" / "http" / f)):
            ids.add(msg if isinstance(msg, str) else tuple(msg[:2]))
    return ids


@pytest.mark.parametrize("lang", ["es", "fr"])
def test_every_page_text_is_translated_with_the_same_placeholders(lang: str) -> None:
    with (i18n.SHIPPED / lang / "LC_MESSAGES" / "pages.po").open("rb") as f:
        catalog = read_po(f, locale=lang)
    have = {m.id if isinstance(m.id, str) else tuple(m.id): m for m in catalog if m.id}
    wanted = _extracted()
    assert len(wanted) > 90
    missing = [m for m in wanted if m not in have or not all(have[m].string if isinstance(have[m].string, tuple)
                                                             else [have[m].string])]
    assert not missing, missing
    assert not [m for m in have if m not in wanted], "catalogue texts no template uses"
    assert [(m.id, e) for m, e in catalog.check()] == []


def _cfg(tmp_path: Path, extra: str = "") -> config.Config:
    path = tmp_path / "g.toml"
    path.write_text(f"""
[links]
keys = [{{ id = "k1", file = "{tmp_path}/k", create_missing = true }}]
[storage.local]
backend = "filesystem"
path = "{tmp_path}/objects"
[[routes]]
name = "contact"
domains = ["contact.example"]
next_hop = "maildir:{tmp_path}/out"
storage = "local"
{extra}
""")
    return config.load(path, base_dir=str(tmp_path))


def _get(accept: str | None) -> object:
    return make_mocked_request("GET", "/a/x", headers={"Accept-Language": accept} if accept else {})


def test_language_from_accept_language_and_english_otherwise(tmp_path: Path) -> None:
    pages = Pages(_cfg(tmp_path))
    cases = {"fr-CA,fr;q=0.9,en;q=0.5": ("fr", "Ce lien a expiré"), "es": ("es", "Este enlace ha caducado"),
             "de-DE,de;q=0.9": ("en", "This link has expired"), None: ("en", "This link has expired")}
    for accept, (lang, title) in cases.items():
        r = pages.render(_get(accept), "agent.html", 410, kind="expired", action="/a/x/refresh")  # type: ignore[arg-type]
        assert r.headers["Content-Language"] == lang and f'<html lang="{lang}">' in r.text, accept
        assert f"<h1>{title}</h1>" in r.text, (accept, r.text)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "script-src" not in csp


def test_every_page_renders_in_every_language_and_names_its_reference(tmp_path: Path) -> None:
    pages = Pages(_cfg(tmp_path))
    assert pages.check() == []
    r = pages.render(make_mocked_request("GET", "/p/x", headers={"X-Request-Id": "ref-42"}), "agent.html", 403,
                     kind="denied", agent="bob", contact="the duty manager")
    assert '<code id="reference">ref-42</code>' in r.text
    assert "You are signed in as bob" in r.text and "Ask the duty manager for access" in r.text
    # What an agent or customer wrote is escaped, never markup.
    r = pages.render(_get("fr"), "agent.html", 403, kind="denied", agent="<b>x</b>", contact="c")
    assert "&lt;b&gt;x&lt;/b&gt;" in r.text and "<b>x" not in r.text


def test_branding_names_logo_colours_and_support_on_every_page(tmp_path: Path) -> None:
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    cfg = _cfg(tmp_path, """
[branding]
name = "Acme Insurance"
logo = "logo.png"
colours = { accent = "#0b5d1e", accent_text = "#fff" }
support = { email = "help@acme.example", phone = "+44 20 7946 0000", url = "https://acme.example/help" }
""")
    pages = Pages(cfg)
    r = pages.render(_get("en"), "agent.html", 404, kind="not_found")
    assert '<span class="org">Acme Insurance</span>' in r.text and "– Acme Insurance</title>" in r.text
    assert re.search(r'<img class="logo" src="/assets/logo\?v=\w+" alt="Acme Insurance">', r.text)
    assert 'href="mailto:help@acme.example"' in r.text and 'href="tel:+442079460000"' in r.text
    assert "a { color: #0b5d1e; }" in pages.css and "color: #ffffff;" in pages.css
    assert pages.logo is not None and pages.logo[1] == "image/png"


@pytest.mark.parametrize("branding, key", [
    ('colours = { accent = "green" }', "branding.colours.accent"),
    ('colours = { accent = "#ffff00" }', "branding.colours.accent: '#ffff00': contrast"),
    ('colours = { accent = "#1f5f99", accent_text = "#2a6aa0" }', "branding.colours.accent_text"),
    ('logo = "https://cdn.example/logo.png"', "branding.logo"),
    ('logo = "missing.png"', "branding.logo: 'missing.png': expected a readable PNG, JPEG or SVG file"),
    ('logo = "g.toml"', "branding.logo: 'g.toml': expected a PNG, JPEG or SVG file"),
    ('support = { email = "not an address" }', "branding.support.email"),
])
def test_branding_errors_name_the_key(tmp_path: Path, branding: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        _cfg(tmp_path, f"[branding]\n{branding}\n")
    assert key in str(e.value), str(e.value)


def test_a_large_logo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'>" + " " * 300_000 + "</svg>")
    with pytest.raises(config.ConfigError, match="branding.logo: 'big.svg': the file has 300"):
        _cfg(tmp_path, '[branding]\nlogo = "big.svg"\n')


def test_the_default_colours_are_readable() -> None:
    assert contrast("#1f5f99", "#ffffff") >= 4.5


def test_a_routes_allow_list_in_plain_words(tmp_path: Path) -> None:
    takes = accepted(_cfg(tmp_path).routes[0])
    words = ", ".join(g.label % {"formats": g.formats} for g in takes.groups)
    assert words == "PDF, photos (JPEG, PNG, GIF, TIFF, HEIC), text (TXT, CSV), Word (DOCX), Excel (XLSX), " \
                    "PowerPoint (PPTX)"
    assert {"pdf", "jpg", "heic", "docx", "xlsx"} <= set(takes.extensions) and "exe" not in takes.extensions
    narrow = _cfg(tmp_path, """
[[routes.policies]]
name = "allowed_types"
settings = { allow = ["application/pdf", "image/png"] }
""")
    takes = accepted(narrow.routes[0])
    assert [(g.label, g.formats) for g in takes.groups] == [("PDF", ""), ("photos (%(formats)s)", "PNG")]
    assert takes.extensions == ("pdf", "png")
    none = _cfg(tmp_path, '[[routes.policies]]\nname = "refuse_executables"\n')
    assert not accepted(none.routes[0]).listed


def _po(root: Path, lang: str, domain: str, pairs: dict[str, str]) -> None:
    d = root / lang / "LC_MESSAGES"
    d.mkdir(parents=True, exist_ok=True)
    body = "".join(f'\nmsgid "{k}"\nmsgstr "{v}"\n' for k, v in pairs.items())
    (d / f"{domain}.po").write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
                                    f'"Language: {lang}\\n"\n' + body, encoding="utf-8")


def test_operator_catalogues_a_language_without_page_texts_and_a_broken_translation(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    locale = tmp_path / "locale"
    _po(locale, "de", "mail", {"Hello": "Hallo"})  # German mail texts only: pages stay English, labelled so
    pages = Pages(cfg, i18n.Catalogues(locale))
    r = pages.render(_get("de"), "agent.html", 410, kind="expired", action="/a/x/refresh")  # type: ignore[arg-type]
    assert r.headers["Content-Language"] == "en" and "<h1>This link has expired</h1>" in r.text
    # One German page text: that text in German, the rest in English (never an error).
    _po(locale, "de", "pages", {"This link has expired": "Dieser Link ist abgelaufen"})
    pages = Pages(cfg, i18n.Catalogues(locale))
    r = pages.render(_get("de"), "agent.html", 410, kind="expired", action="/a/x/refresh")  # type: ignore[arg-type]
    assert r.headers["Content-Language"] == "de" and "<h1>Dieser Link ist abgelaufen</h1>" in r.text
    assert "Refresh Link" in r.text
    # A translation that drops a placeholder: check-config names it; the page is shown in English.
    _po(locale, "de", "pages", {"Open %(name)s": "Öffnen %(nmae)s"})
    pages = Pages(cfg, i18n.Catalogues(locale))
    problems = pages.check()
    assert any("de/LC_MESSAGES/pages.po" in p and "Open %(name)s" in p for p in problems), problems
    r = pages.render(_get("de"), "agent.html", 200, kind="refreshed", url="/a/y", filename="f.pdf",  # type: ignore[arg-type]
                     until=0)
    assert r.status == 200 and r.headers["Content-Language"] == "en" and "Open f.pdf" in r.text
