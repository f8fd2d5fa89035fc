"""Every web page a person reads, rendered from Jinja2 templates in their
language, under the organisation's branding, with a strict CSP.

Templates live in ``gateway/http/templates/`` (autoescaped; texts in
``{% trans %}`` blocks and ``_()`` calls, the ``pages`` gettext domain of
gateway/i18n.py).  The language comes from ``Accept-Language`` among the
languages with catalogues; anything else gets English, and a text missing
from a catalogue stays English.  Each page names the request's id (the
``X-Request-Id`` also in the access log and in the audit event) as a short
reference to quote to an administrator.

Styles, the upload page's script and the logo are served by the gateway
(``/assets/...``), so a page's Content-Security-Policy allows nothing from
elsewhere and no inline script or style.
"""
from __future__ import annotations

import datetime as dt
import gettext
import hashlib
import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from babel.dates import format_datetime
from babel.numbers import format_decimal
from jinja2 import Environment, PackageLoader, StrictUndefined

from gateway import i18n, logs
from gateway.branding import Branding, logo_type
from gateway.config import Config
from gateway.http.accepted import N_
from gateway.http.health import request_id

log = logs.get("http")

#: The kinds of agent.html: each says what happened and what to do.
AGENT_PAGES = ("invalid", "expired", "page_expired", "revoked", "not_found", "denied", "not_signed_in",
               "sign_in_unavailable", "storage_unavailable", "refreshed")

#: The CSP of every page; ``render(..., csp=...)`` adds to it.
BASE_CSP = {"default-src": "'none'", "style-src": "'self'", "img-src": "'self'", "form-action": "'self'",
            "base-uri": "'none'", "frame-ancestors": "'none'"}


def catalogues_for(cfg: Config) -> i18n.Catalogues:
    """The catalogues a config names: its ``[i18n] directory`` first when
    the config has one, then the shipped ones."""
    section = getattr(cfg, "i18n", None)
    directory = getattr(section, "directory", None)
    return i18n.Catalogues(cfg.path(str(directory)) if directory else None)


def _static(name: str) -> str:
    return resources.files("gateway.http").joinpath("static", name).read_text(encoding="utf-8")


def _version(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]


class Pages:
    """Renders the pages and serves their assets (styles, script, logo)."""

    def __init__(self, cfg: Config, catalogues: i18n.Catalogues | None = None) -> None:
        self.script = _static("upload.js")
        self._envs: dict[str, Environment] = {}
        self._catalogue: dict[str, gettext.NullTranslations] = {}
        self.configure(cfg, catalogues)

    def configure(self, cfg: Config, catalogues: i18n.Catalogues | None = None) -> None:
        """Take a config's branding and catalogues (at start, on SIGHUP)."""
        self.catalogues = catalogues or catalogues_for(cfg)
        self.branding = Branding.from_config(cfg)
        self.css = string.Template(_static("pages.css")).substitute(accent=self.branding.accent,
                                                                    accent_text=self.branding.accent_text)
        self.logo: tuple[bytes, str] | None = None
        if self.branding.logo is not None:
            # Checked at load (config.py); read once here, served from memory.
            try:
                self.logo = (self.branding.logo.read_bytes(), logo_type(self.branding.logo))
            except (OSError, ValueError) as e:
                # Gone since the check: the pages go on without it.
                log.error("logo not readable; pages shown without it", logo=str(self.branding.logo),
                          error=str(e))
        # Only languages with page texts: a page is never labelled French
        # while it shows English.
        self.languages = tuple(lang for lang in self.catalogues.languages() if lang == i18n.DEFAULT or any(
            d is not None and (d / lang / "LC_MESSAGES" / "pages.po").is_file()
            for d in (self.catalogues.override, i18n.SHIPPED)))
        self.assets = {"css": f"/assets/pages.css?v={_version(self.css)}",
                       "js": f"/assets/upload.js?v={_version(self.script)}",
                       "logo": f"/assets/logo?v={_version(self.logo[0])}" if self.logo else ""}
        self._envs = {}
        self._catalogue = {}

    # -- rendering ------------------------------------------------------------

    def language(self, request: web.BaseRequest) -> str:
        """The request's language: the best of Accept-Language we have, else English."""
        return i18n.negotiate(request.headers.get("Accept-Language"), self.languages)

    def env(self, lang: str) -> Environment:
        """The template environment of one language (built once per config)."""
        env = self._envs.get(lang)
        if env is None:
            env = Environment(loader=PackageLoader("gateway.http", "templates"), autoescape=True,
                              extensions=["jinja2.ext.i18n"], undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
            env.install_gettext_translations(self._translations(lang), newstyle=True)  # type: ignore[attr-defined]
            env.filters["size"] = lambda n: self.size(lang, int(n))
            env.filters["when"] = lambda ts: format_datetime(dt.datetime.fromtimestamp(ts, dt.UTC), "long",
                                                             tzinfo=dt.UTC, locale=_babel_locale(lang))
            self._envs[lang] = env
        return env

    def size(self, lang: str, n: int) -> str:
        """A size as people read it, in their language: "5.0 GB", "5,0 Go"."""
        t = self._translations(lang)
        for shift, unit in ((30, N_("%(size)s GB")), (20, N_("%(size)s MB")), (10, N_("%(size)s KB"))):
            if n >= 1 << shift:
                value = format_decimal(n / (1 << shift), "#,##0.0" if shift > 10 else "#,##0",
                                       locale=_babel_locale(lang))
                return t.gettext(unit) % {"size": value}
        return t.ngettext("%(num)d byte", "%(num)d bytes", n) % {"num": n}

    def _translations(self, lang: str) -> gettext.NullTranslations:
        t = self._catalogue.get(lang)
        if t is None:
            t = self._catalogue[lang] = self.catalogues.translations(lang, "pages")
        return t

    def render(self, request: web.BaseRequest, template: str, status: int = 200, *,
               csp: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
               **context: Any) -> web.Response:
        """``template`` in the request's language, as a response with the
        pages' headers; ``csp`` adds sources to the base policy."""
        lang = self.language(request)
        values = dict(brand=self.branding, assets=self.assets, reference=request_id(request), status=status,
                      **context)
        try:
            body = self.env(lang).get_template(template).render(lang=lang.replace("_", "-"), **values)
        except (KeyError, ValueError, TypeError) as e:
            # A translation whose placeholders do not fit its message (an
            # operator's catalogue): the page in English, never an error.
            log.error("page not rendered in its language; English instead", template=template, lang=lang,
                      error=f"{type(e).__name__}: {e}")
            lang = i18n.DEFAULT
            body = self.env(lang).get_template(template).render(lang=lang, **values)
        policy = dict(BASE_CSP)
        policy.update(csp or {})
        return web.Response(status=status, text=body, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Language": lang.replace("_", "-"),
            "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in policy.items()), **(headers or {})})

    def check(self) -> list[str]:
        """Every page in every language, rendered with sample values, and
        the catalogues checked: what ``check-config`` reports ([] if fine)."""
        problems = check_catalogues(self.catalogues)
        sample: dict[str, Any] = dict(brand=self.branding, assets=self.assets, reference="check", status=200)
        route_free = {"listed": False, "groups": (), "extensions": ()}
        pages: list[tuple[str, dict[str, Any]]] = [
            *(("agent.html", {"kind": k, "agent": "agent", "contact": "contact", "action": "/a/x/refresh",
                              "url": "/a/x", "filename": "f.pdf", "until": 0}) for k in AGENT_PAGES),
            ("landing.html", {"files": [{"name": "f.pdf", "size": 1, "kind": "application/pdf", "url": "/a/x"}],
                              "message_id": "<m@x>"}),
            *(("upload_closed.html", {"kind": k}) for k in ("expired", "invalid", "gone")),
            ("upload.html", {"settings": {}, "accepted": route_free, "max_file_size": 1 << 30, "max_files": 2,
                             "max_bytes": 1 << 20, "expires": 0, "notify": "a@b.example"}),
        ]
        for lang in self.languages:
            for template, context in pages:
                try:
                    self.env(lang).get_template(template).render(lang=lang, **sample, **context)
                except Exception as e:  # noqa: BLE001 - reported, with the page and language
                    problems.append(f"page {template} ({context.get('kind', '')}) in {lang!r}: "
                                    f"{type(e).__name__}: {e}")
        return problems

    # -- assets ---------------------------------------------------------------

    async def style(self, request: web.Request) -> web.Response:
        """``GET /assets/pages.css``: the pages' styles in the configured colours."""
        return web.Response(text=self.css, content_type="text/css", headers=_asset_headers())

    async def upload_script(self, request: web.Request) -> web.Response:
        """``GET /assets/upload.js``: the upload page's script."""
        return web.Response(text=self.script, content_type="text/javascript", headers=_asset_headers())

    async def logo_file(self, request: web.Request) -> web.Response:
        """``GET /assets/logo``: the configured logo (an SVG runs nothing: sandboxed)."""
        if self.logo is None:
            raise web.HTTPNotFound()
        data, ctype = self.logo
        return web.Response(body=data, content_type=ctype,
                            headers={**_asset_headers(), "Content-Security-Policy": "default-src 'none'; "
                                     "style-src 'unsafe-inline'; sandbox"})


def _asset_headers() -> dict[str, str]:
    # Versioned URLs (?v=<hash>): a changed asset has a new URL, so caching is safe.
    return {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


def _babel_locale(lang: str) -> str:
    return lang if lang != "" else i18n.DEFAULT


def check_catalogues(catalogues: i18n.Catalogues) -> list[str]:
    """What is wrong in the ``pages`` catalogues in use: each problem as
    "FILE: msgid: error" (a placeholder a translation lacks or adds)."""
    from babel.messages.pofile import read_po

    problems = []
    for lang in catalogues.languages():
        for directory in (catalogues.override, i18n.SHIPPED):
            if directory is None:
                continue
            path = directory / lang / "LC_MESSAGES" / "pages.po"
            if not path.is_file():
                continue
            try:
                with path.open("rb") as f:
                    catalog = read_po(f, locale=lang.split("_")[0])
            except Exception as e:  # noqa: BLE001 - any parse error is reported, not raised
                problems.append(f"{path}: cannot be read: {e}")
                continue
            for message, errors in catalog.check():
                for error in errors:
                    problems.append(f"{path}: {message.id!r}: {error}")
    return problems


def template_names() -> list[str]:
    """Every page template (for check-config and the catalogue tests)."""
    root = Path(str(resources.files("gateway.http").joinpath("templates")))
    return sorted(p.name for p in root.glob("*.html"))
