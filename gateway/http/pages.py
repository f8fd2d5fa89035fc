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

from gateway import i18n
from gateway.branding import Branding, logo_type
from gateway.config import Config
from gateway.http.health import request_id

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
            self.logo = (self.branding.logo.read_bytes(), logo_type(self.branding.logo))
        self.assets = {"css": f"/assets/pages.css?v={_version(self.css)}",
                       "js": f"/assets/upload.js?v={_version(self.script)}",
                       "logo": f"/assets/logo?v={_version(self.logo[0])}" if self.logo else ""}
        self._envs = {}
        self._catalogue = {}

    # -- rendering ------------------------------------------------------------

    def language(self, request: web.BaseRequest) -> str:
        """The request's language: the best of Accept-Language we have, else English."""
        return self.catalogues.negotiate(request.headers.get("Accept-Language"))

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
        for shift, unit in ((30, "%(size)s GB"), (20, "%(size)s MB"), (10, "%(size)s KB")):
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
        body = self.env(lang).get_template(template).render(
            lang=lang.replace("_", "-"), brand=self.branding, assets=self.assets, reference=request_id(request),
            status=status, **context)
        policy = dict(BASE_CSP)
        policy.update(csp or {})
        return web.Response(status=status, text=body, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Language": lang.replace("_", "-"),
            "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in policy.items()), **(headers or {})})

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


def template_names() -> list[str]:
    """Every page template (for check-config and the catalogue tests)."""
    root = Path(str(resources.files("gateway.http").joinpath("templates")))
    return sorted(p.name for p in root.glob("*.html"))
