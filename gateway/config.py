"""The gateway's one TOML config file: schema, defaults and validation.

Every default is stated once, here, beside its key; docs/CONFIG.md documents
the same keys.  Validation happens when the file is loaded (at start-up, on
SIGHUP and by ``check-config``), so a bad value is reported as the key, the
value and what was expected, and the gateway never starts half-configured.
Unknown keys are errors: a typo must not silently disable a policy.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway import customers, ipnets
from gateway.storage.retention import GATEWAY_PREFIXES
from gateway.storage.settings import StorageSettings
from gateway.units import Duration, Size


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; ``str()`` says why."""





def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, such as \"127.0.0.1:2525\"")
    return host.strip("[]"), int(port)


# A host name in a next hop: letters, digits, hyphens (and the odd
# underscore real zones have), dot-separated labels of at most 63.
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")
_NEXT_HOP_FORMS = ("expected \"smtp://DOMAIN[:PORT]\" (its MX records), \"smtp://[HOST][:PORT]\" or "
                   "\"smtp://IP[:PORT]\" (that host, no MX lookup), or \"maildir:PATH\"")


def parse_smtp_next_hop(spec: str) -> tuple[str, int, bool]:
    """``smtp://HOST[:PORT]`` as (host, port, lookup_mx): a domain is looked
    up as a mail domain (its MX records); a host in brackets or an IP
    address is connected to directly, as Postfix's ``[host]``.  The port
    defaults to 25.  Raises ValueError naming the forms."""
    rest = spec[len("smtp://"):] if spec.startswith("smtp://") else ""
    bracketed = rest.startswith("[")
    if bracketed:
        host, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ValueError(_NEXT_HOP_FORMS)
        port = tail[1:] if tail else "25"
    elif rest.count(":") > 1:
        host, _, port = rest.rpartition(":")  # an IPv6 address before the port, unbracketed
    else:
        host, _, port = rest.partition(":")
        port = port if ":" in rest else "25"
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(_NEXT_HOP_FORMS)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(_NEXT_HOP_FORMS) from None
        return host.rstrip("."), int(port), not bracketed
    return host, int(port), False


def _check_next_hop(v: str) -> str:
    if v.startswith("maildir:") and len(v) > len("maildir:"):
        return v
    parse_smtp_next_hop(v)
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySettings(_Strict):
    """Identity and places on disk."""

    hostname: str = "gateway.localhost"
    spool_dir: str = "var/spool"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How long SIGTERM waits for sessions and messages in hand to finish;
    # new sessions get 421 meanwhile.  What is left stays in the spool.
    drain_seconds: Duration = 30
    # Free space the spool must keep: below it (plus a message's declared
    # SIZE) MAIL gets 452 4.3.1 and the sender retries later.
    spool_min_free: Size = 67108864  # 64 MiB
    # Processes that share the ports and the spool; "auto" is one per CPU.
    processes: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    # Where audit events (link clicks, refusals) go, one JSON object a line;
    # "-" means standard output.
    audit_log: str = "var/log/audit.jsonl"


class SmtpSettings(_Strict):
    """The SMTP ingress."""

    listen: str = "127.0.0.1:2525"
    max_message_size: Size = 157286400  # 150 MiB, advertised in EHLO SIZE
    max_recipients: int = Field(100, ge=1)
    # A message with more Received fields is refused at the end of DATA
    # (554 5.4.6): it is going round a loop (Postfix's hopcount_limit).
    max_received: int = Field(50, ge=1)
    timeout: Duration = 300
    # Sessions at once in each process, and from one client address; more
    # get 421 and may retry (a client over the limit is likely a runaway).
    max_sessions: int = Field(1000, ge=1)
    max_connections_per_client: int = Field(100, ge=1)

    banner: str = "ESMTP attachment-gateway"
    # STARTTLS is offered when both are set (PEM files; re-read on SIGHUP).
    # TLS 1.2 is the minimum version.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Client addresses or networks that must STARTTLS before MAIL (530 else).
    require_tls_from: list[str] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @field_validator("require_tls_from")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r}: expected an IP address or network, such as \"192.0.2.0/24\"") \
                    from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("smtp.tls_cert_file and smtp.tls_key_file go together: set both or neither")
        if self.require_tls_from and self.tls_cert_file is None:
            raise ValueError("smtp.require_tls_from needs smtp.tls_cert_file and smtp.tls_key_file")
        return self

    @property
    def address(self) -> tuple[str, int]:
        return parse_hostport(self.listen)


def _check_network(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError("expected an IP address or network, such as \"10.0.0.5\" or \"10.0.0.0/24\"") from None
    return v


Network = Annotated[str, AfterValidator(_check_network)]


class SecretRef(_Strict):
    """Where a secret comes from: a file or an environment variable, never
    the config file itself (so the config can be shared and logged)."""

    file: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("expected exactly one of \"file\" or \"env\"")
        return self


class HttpSettings(_Strict):
    """The HTTP listener: agent links, health, metrics."""

    listen: str = "127.0.0.1:8025"
    # The scheme, host and optional path prefix put in front of /a/<token> in
    # every link; what agents can reach, not necessarily what we bind to.
    base_url: str = "http://127.0.0.1:8025"
    # PEM certificate chain and key: with both, the listener speaks TLS 1.2+
    # only and sends HSTS.
    tls_cert: str | None = None
    tls_key: str | None = None
    hsts_max_age: Duration = 31536000
    # Reverse proxies whose X-Forwarded-For/-Proto and identity header are
    # believed; from anyone else they are ignored (or refused, for identity).
    trusted_proxies: list[Network] = Field(default_factory=list)
    # One JSON line a request on stderr (method, path with tokens redacted,
    # status, bytes, duration, request id, client).
    access_log: bool = True
    # Connections at once in each process, and from one client address (a
    # trusted proxy is not bound); more get 503 and are closed.  Each holds a
    # file descriptor the SMTP listener and the spool need too.
    max_connections: int = Field(2000, ge=1)
    max_connections_per_client: int = Field(500, ge=1)
    # A connection that has not sent a whole request this long after it was
    # made, or after its last answer, is closed (a slow or idle client).
    idle_timeout: Duration = 75

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http: expected both \"tls_cert\" and \"tls_key\", or neither")
        return self

    @property
    def on_loopback(self) -> bool:
        """Whether only this machine can reach the listener."""
        host = self.address[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
            raise ValueError("expected an http:// or https:// URL without query, such as \"https://files.example.com\"")
        return v.rstrip("/")

    @property
    def address(self) -> tuple[str, int]:
        return parse_hostport(self.listen)


class _KeySource(SecretRef):
    """A named secret (link keys, API keys): the id goes into tokens and
    audit events, the secret comes from a file or an environment variable."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")


class LinkKey(_KeySource):
    """One HMAC key for link tokens."""
    # Accepted for verification until this date (ISO 8601); the first key
    # without ``retire`` that is listed first signs new links.
    retire: str | None = None
    # Create the file with a random key when it does not exist (embedded demo).
    create_missing: bool = False


class LinkSettings(_Strict):
    """Signed links put in forwarded messages."""

    ttl: Duration = 86400
    keys: list[LinkKey] = Field(min_length=1)
    # Shown in the message body; {filename} and {size} are replaced.  Unset:
    # the mail catalogue's "Secure Attachment: {filename}" in the route's language.
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return v if v is None else _check_template(v, ("filename", "size"))


class OidcSettings(_Strict):
    """An OpenID Connect provider agents sign in with (authorisation code
    flow with PKCE): Genesys Cloud, Entra ID, Okta, any standard one."""

    issuer: str = Field(pattern=r"^https?://[^\s?#]+$")
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    scopes: str = "openid profile email"
    # The ID token claim that names the agent in audit events and authorisation.
    agent_claim: str = "sub"
    # Seconds the gateway waits for the provider (discovery, token, keys).
    timeout: Duration = 10


class AgentSettings(_Strict):
    """How the agent who clicks a link is identified."""

    # "oidc", "trusted-header" (a reverse proxy signs agents in) or "none"
    # (anonymous; only while the HTTP listener is on loopback).
    auth: Literal["none", "trusted-header", "oidc"] = "none"
    # The identity header the trusted proxies set (trusted-header mode).
    header: str = "X-Forwarded-User"
    # Key that signs session cookies (oidc mode); 32+ random characters.
    session_key: SecretRef | None = None
    session_ttl: Duration = 28800  # 8 hours, a working shift
    oidc: OidcSettings | None = None


class CalloutSettings(_Strict):
    """The contact centre's own service that decides who sees which customer."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    # Seconds an answer (allow or deny) is reused for the same agent and customer.
    cache_ttl: Duration = 60
    # Sent as "Authorization: Bearer ..." when set.
    token: SecretRef | None = None


class AuthorizationSettings(_Strict):
    """Whether an agent may see a customer's files."""

    # "static" (the map below), "callout" (ask a service) or "allow-all".
    # Without a value: allow-all when agents.auth is "none" (nobody is known
    # to authorise), otherwise an error.
    mode: Literal["static", "callout", "allow-all"] | None = None
    # static: agent id -> customer ids; "*" in the list allows every customer.
    agents: dict[str, list[str]] = Field(default_factory=dict)
    callout: CalloutSettings | None = None
    # Named on the 403 page: whom an agent asks for access.
    contact: str = "your team leader"
    # How the static map's customer ids are compared with a link's (kept as
    # the CRM gave them): "case-insensitive" (CUST-1 is cust-1) or "exact".
    customer_id_match: Literal["case-insensitive", "exact"] = "case-insensitive"

    @field_validator("agents")
    @classmethod
    def _customer_ids(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for agent, ids in v.items():
            for c in ids:
                if c != "*":
                    try:
                        customers.checked(c)
                    except customers.InvalidCustomerId as e:
                        raise ValueError(f"agent {agent!r}: {c!r}: {e}; expected a customer id as the CRM "
                                         f"has it, or \"*\"") from None
        return v


class SyslogSinkSettings(_Strict):
    """Audit events to a syslog collector as RFC 5424 messages."""

    address: str
    transport: Literal["udp", "tcp", "tls"] = "udp"
    facility: Annotated[int, Field(ge=0, le=23)] = 10  # authpriv
    app_name: str = Field("attachment-gateway", pattern=r"^[!-~]{1,48}$")
    # CA bundle to check a TLS collector's certificate (default: system CAs).
    ca_file: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_hostport(v)
        return v


class HecSinkSettings(_Strict):
    """Audit events to Splunk's HTTP Event Collector."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    token: SecretRef
    index: str | None = None
    sourcetype: str = "attachment-gateway:audit"
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    ca_file: str | None = None


class AuditSettings(_Strict):
    """Where audit events go besides ``gateway.audit_log``."""

    # Events waiting for a slow or absent network sink; beyond this they are
    # dropped, counted and the loss logged (a sink never blocks a click).
    buffer: int = Field(10000, ge=1)
    syslog: SyslogSinkSettings | None = None
    hec: HecSinkSettings | None = None


class CustomerIdRule(_Strict):
    """Where the customer id in object keys and links comes from."""

    # A header that names the customer, believed only from the client
    # networks below (a CRM or a flow that injects mail); from anyone else
    # it is removed from the message and the fallback applies.
    header: str | None = "X-CustomerId"
    # Client addresses or networks whose ``header`` is believed. Empty: no
    # one's (anyone on the Internet can write any header).
    trusted_networks: list[Network] = Field(default_factory=list)
    # "sender": the envelope sender, which is NOT authenticated (anyone can
    # claim any address); "none": the id "unknown".
    fallback: Literal["sender", "none"] = "sender"


class PolicyRef(_Strict):
    """One entry of a route's policy list, in the order they run."""

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)


class DisarmSettings(_Strict):
    """Active content in allowed PDFs and Office files (gateway/disarm/)."""

    # Per kind of file: "disarm" (rewrite it without scripts, actions,
    # embedded files, macros, remote templates, DDE; the original to
    # quarantine), "refuse" (quarantine a file that has any), or "allow"
    # (forward it as it is; logged for every such file).
    pdf: Literal["disarm", "refuse", "allow"] = "disarm"
    office: Literal["disarm", "refuse", "allow"] = "disarm"
    # The budget of one file: wall-clock seconds and address space of the
    # child process it is examined in; larger files cannot be examined.
    seconds: Duration = 30
    memory: Size = 1073741824
    max_size: Size = 67108864
    # Keep http, https and mailto links in PDFs (a click, not an automatic
    # action); links to files, shares or other schemes always go.
    keep_web_links: bool = True


class QuarantineSettings(_Strict):
    """Where refused files are kept for an administrator (never linked)."""

    # Keep each refused file in the route's store under ``prefix``.
    enabled: bool = True
    # Object-key prefix; link records never point here, and the link
    # endpoint refuses any record that does.
    prefix: str = "quarantine/"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}/", v) or v in GATEWAY_PREFIXES:
            raise ValueError("expected a prefix such as \"quarantine/\" (lower-case letters, digits, ._-, "
                             f"ending in /, none of the gateway's own: {', '.join(GATEWAY_PREFIXES)})")
        return v


class AutoReplySettings(_Strict):
    """The automatic reply to a sender whose file was refused (RFC 3834)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # The reply's From address, e.g. "Support <support@contact.example>".
    sender: str = Field(alias="from")
    # Where replies go out: an SMTP smarthost, or a Maildir.
    next_hop: str
    # At most one reply per sender per interval.
    interval: Duration = 86400
    # Unset: the mail catalogue's text in the route's language (gateway/mailtext.py).
    subject: str | None = None
    # {refusals} (one "- name: reason" line each), {subject}, {upload_url}
    # (a fresh invitation link when [upload] is enabled, else ``upload_url``
    # below; a line showing it is left out when there is neither).  Unset:
    # the catalogue's text in the route's language.
    template: str | None = None
    # The reply when storage failed and a file was too large to forward
    # (failing open on availability).  {files} (one "- name" line each), {subject},
    # {upload_url}; unset: the catalogue's text in the route's language, which
    # names the upload page when there is a link.
    storage_failed_subject: str | None = None
    storage_failed_template: str | None = None
    # An upload address for the templates when the upload page is disabled.
    upload_url: str = ""

    @field_validator("next_hop")
    @classmethod
    def _next_hop(cls, v: str) -> str:
        return _check_next_hop(v)

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if "@" not in v or "\n" in v or "\r" in v:
            raise ValueError("expected an address such as \"support@contact.example\"")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return v if v is None else _check_template(v, ("refusals", "subject", "upload_url"))

    @field_validator("storage_failed_template")
    @classmethod
    def _storage_failed_template(cls, v: str | None) -> str | None:
        return v if v is None else _check_template(v, ("files", "subject", "upload_url"))


def _check_template(v: str, allowed: tuple[str, ...]) -> str:
    """A template (gateway/mailtext.py ``fill``) using only the ``allowed`` fields."""
    from gateway.mailtext import template_errors  # late: keeps the config's imports light

    errors = template_errors(v, allowed)
    if errors:
        raise ValueError("; ".join(errors))
    return v


class ClamdSettings(_Strict):
    """The clamd (ClamAV daemon) that the refuse_malware policy's scans use."""

    # "unix:/run/clamav/clamd.ctl" or "tcp:127.0.0.1:3310".
    address: str = "unix:/run/clamav/clamd.ctl"
    # Seconds for one part's scan; past it the part is not scanned (fail open).
    timeout: Duration = 30
    # Parts larger than this (decoded) are not sent to clamd; keep it at or
    # below clamd's StreamMaxLength (25 MiB by default).
    max_size: Size = 26214400

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        from gateway.scan import parse_address

        parse_address(v)
        return v


def _default_policies() -> list[PolicyRef]:
    from policies import DEFAULT_POLICIES

    return [PolicyRef(name=n) for n in DEFAULT_POLICIES]


class RouteSettings(_Strict):
    """Which recipients the gateway accepts, and what it does with their mail."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    domains: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)
    next_hop: str
    storage: str
    offload_threshold: Size = 10485760
    next_hop_max_size: Size = 26214400
    # The most attachments the next hop takes in one message (Genesys Cloud:
    # 50); the excess is offloaded, largest first.  None: no limit.
    max_attachments: int | None = Field(None, ge=0)
    # The link text; {filename}, {size}.  Unset: links.text, else the catalogue's.
    link_text: str | None = None
    # The language of the texts the gateway adds to this route's mail (notices,
    # link lines, the automatic reply, delivery reports): "en", "es", "fr", or
    # one an operator adds under [i18n] directory.
    language: str = "en"
    # A message with two or more offloaded files gets one link to a page
    # listing them all instead of one link per file (fewer links, lower spam
    # scores at some filters, one place for the agent).
    landing_page: bool = False
    # The landing page link's text; {count} and {size} are replaced.  Unset:
    # the catalogue's "Secure Attachments: {count} files" in the route's language.
    landing_page_text: str | None = None
    customer_id: CustomerIdRule = CustomerIdRule()
    policies: list[PolicyRef] = Field(default_factory=_default_policies)
    # Refused files kept in the route's store for an administrator.
    quarantine: QuarantineSettings = QuarantineSettings()
    # The reply to senders whose files were refused; none when absent.
    autoreply: AutoReplySettings | None = None
    # Unpack Outlook winmail.dat (TNEF) into its files before the policies.
    unpack_tnef: bool = True
    # Active content in PDFs and Office files: disarmed by default.
    disarm: DisarmSettings = DisarmSettings()
    # What happens to a part the gateway could not examine (beyond a limit,
    # ambiguous, unparseable): "quarantine" (replaced by a notice, kept in
    # quarantine, the sender told). "forward-unexamined" sends it to the
    # agent as it came: never the default, logged as an error at start and
    # for every such part.
    unexamined: Literal["quarantine", "forward-unexamined"] = "quarantine"
    # TLS to an SMTP next hop: "opportunistic" uses STARTTLS when offered;
    # "required" defers the message when it is not; "verify" also requires
    # a certificate for the next hop's host name from a trusted CA. A
    # failed handshake defers at every level: never a downgrade.
    tls: Literal["opportunistic", "required", "verify", "none"] = "opportunistic"
    # CA certificates (PEM) for tls = "verify"; unset: the system's CAs.
    tls_ca_file: str | None = None
    # Forward with an SRS envelope sender in [srs] domain, so SPF at the
    # next hop checks the gateway's domain, not the customer's; bounces to
    # it come back here and go to the customer (gateway/srs.py).
    srs: bool = False

    @field_validator("domains", "addresses")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [x.strip().lower() for x in v]

    @field_validator("link_text")
    @classmethod
    def _link_text(cls, v: str | None) -> str | None:
        return v if v is None else _check_template(v, ("filename", "size"))

    @field_validator("landing_page_text")
    @classmethod
    def _landing_page_text(cls, v: str | None) -> str | None:
        return v if v is None else _check_template(v, ("count", "size"))

    @field_validator("next_hop")
    @classmethod
    def _next_hop(cls, v: str) -> str:
        return _check_next_hop(v)

    @model_validator(mode="after")
    def _accepts_something(self) -> RouteSettings:
        if not self.domains and not self.addresses:
            raise ValueError("a route needs at least one of \"domains\" or \"addresses\"")
        return self


class I18nSettings(_Strict):
    """The languages of the texts the gateway adds to mail."""

    # An operator's catalogues, searched before the shipped ones:
    # DIRECTORY/<language>/LC_MESSAGES/mail.po (one message may be reworded
    # without copying the rest; a new language is a new directory).
    directory: str | None = None


class DeliverySettings(_Strict):
    """Retry, lifetime and bounces."""

    queue_lifetime: Duration = 432000  # 5 days, as Postfix
    # Tell the sender once (an RFC 3464 "delayed" DSN) when a message has
    # waited this long and is still being retried; 0 is off, as Postfix's
    # delay_warning_time.  Never to the null sender.
    delay_warning: Duration = 0
    min_backoff: Duration = 300
    max_backoff: Duration = 4000
    # Seconds before an SMTP next hop that does not answer is given up on.
    connect_timeout: Duration = 30
    command_timeout: Duration = 300
    # Where DSNs to senders go (a smarthost, or a Maildir in the demo).
    bounce_next_hop: str = "maildir:var/bounces"
    # Concurrent deliveries (and pooled connections) per SMTP next hop, in
    # each serve process.
    connections_per_next_hop: int = Field(20, ge=1)

    @field_validator("bounce_next_hop")
    @classmethod
    def _next_hop(cls, v: str) -> str:
        return _check_next_hop(v)

    @model_validator(mode="after")
    def _warning_before_expiry(self) -> DeliverySettings:
        if self.delay_warning and self.delay_warning >= self.queue_lifetime:
            raise ValueError(f"delay_warning: {self.delay_warning} s is not shorter than queue_lifetime "
                             f"({self.queue_lifetime} s): the sender would get the bounce first; expected "
                             f"a shorter duration, or 0 for no warning")
        return self


class WorkerSettings(_Strict):
    """Message processing after the spool."""

    # Messages handled at once in each process: most of a message's time is
    # spent waiting on fsync, storage or the next hop, not on the CPU.
    concurrency: int = Field(16, ge=1)
    # Parallel uploads of one message's parts.
    offload_concurrency: int = Field(2, ge=1)
    # Bounds on what a message may hold. A part beyond one of them cannot be
    # examined: it is quarantined and replaced by a notice (the route's
    # ``unexamined`` says otherwise only when an operator insists).
    max_header_bytes: Size = 1048576
    max_header_fields: int = Field(1000, ge=1)
    # RFC 5322 allows 998; real mail often exceeds it, so the default only
    # stops the absurd.
    max_header_line: Size = 65536
    max_mime_depth: int = Field(20, ge=1)
    max_parts: int = Field(1000, ge=1)
    # The most parameters in one Content-Type or Content-Disposition field.
    max_header_params: int = Field(64, ge=1, le=10000)
    # CPU seconds the gateway spends examining one message (parsing,
    # decoding, type detection); parts not examined by then are quarantined.
    max_cpu_seconds: float = Field(30.0, gt=0, le=3600)
    # How often the deferred queue is scanned for messages due for retry.
    scan_interval: Duration = 5


class SigningKeySettings(_Strict):
    """A domain key the gateway signs with: d=, s= and the RSA private key."""

    domain: str = Field(pattern=r"^[A-Za-z0-9.-]{1,253}$")
    selector: str = Field(pattern=r"^[A-Za-z0-9._-]{1,63}$")
    key_file: str


class AuthSettings(_Strict):
    """Message authentication: verify before changing, seal after."""

    # Check DKIM, SPF, DMARC and ARC on arrival and add Authentication-Results.
    verify: bool = False
    # The name in our Authentication-Results and ARC headers; unset: gateway.hostname.
    authserv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]{1,253}$")
    # DNS servers as "HOST" or "HOST:PORT" (one port for all); empty: /etc/resolv.conf.
    dns_servers: list[str] = Field(default_factory=list)
    # Seconds for one DNS lookup; past it the check is a temperror.
    dns_timeout: float = Field(5.0, gt=0, le=60)
    # Seal with an ARC set (needs verify = true) and/or DKIM-sign what leaves.
    arc: SigningKeySettings | None = None
    dkim: SigningKeySettings | None = None
    # Signing reads the forwarded message into memory: larger ones (only
    # when nothing was offloaded) go unsealed, with a warning.
    sign_max_size: Size = 33554432  # 32 MiB

    @field_validator("dns_servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        ports = set()
        for item in v:
            if ":" in item and not item.startswith("["):
                parse_hostport(item)
                ports.add(int(item.rpartition(":")[2]))
            else:
                ports.add(53)
        if len(ports) > 1:
            raise ValueError("all DNS servers must use the same port")
        return v

    @model_validator(mode="after")
    def _arc_needs_verify(self) -> AuthSettings:
        if self.arc is not None and not self.verify:
            raise ValueError("auth.arc needs auth.verify = true (the seal carries the verification results)")
        return self

    def servers(self) -> list[tuple[str, int]]:
        return [parse_hostport(s) if ":" in s and not s.startswith("[") else (s, 53) for s in self.dns_servers]


class MilterSettings(_Strict):
    """The milter listener: the same pipeline inside an existing Postfix or
    Sendmail (``attachment-gateway milter``, or ``serve`` with this table)."""

    listen: str = "127.0.0.1:8891"
    # What the MTA is told when processing fails or runs out of time:
    # "tempfail" makes the MTA answer 451 so the client retries later (the
    # message stays with the sender: nothing lost, nothing unexamined
    # reaches an agent); "continue" lets the message through unchanged,
    # unexamined, and must be chosen (logged as an error at start).
    on_error: Literal["continue", "tempfail"] = "tempfail"
    # Seconds allowed for processing at end of message; keep it below the
    # MTA's own limit (Postfix: milter_content_timeout, 300 s by default).
    timeout: Duration = Field(240, ge=1)
    # Where messages being received are written ("" is the system's
    # temporary directory); it needs room for the largest message at once
    # per connection.
    temp_dir: str = ""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @property
    def address(self) -> tuple[str, int]:
        return parse_hostport(self.listen)


class ApiKey(_KeySource):
    """One API key for /api/v1 (a contact-centre flow, a CRM, an agent
    desktop), named in audit events as ``api-key:ID``."""


class ApiSettings(_Strict):
    """The HTTP API for integrators: uploads and jobs, link refresh and revoke."""

    # Bearer keys accepted by every /api/v1 route; with none, every API call answers 401.
    keys: list[ApiKey] = Field(default_factory=list)
    # The route whose store, policies and link text apply to uploads; the
    # first route when not set.
    route: str | None = None
    # The largest decoded upload; larger answers 413.
    max_upload_size: Size = 2147483648  # 2 GiB
    # Uploads larger than this (decoded) answer 202 and finish in the background.
    async_threshold: Size = 104857600  # 100 MiB
    # A PENDING job not touched for this long is taken over by the node asked about it.
    job_lease: Duration = 300


class UploadPageSettings(_Strict):
    """The customer upload page reached from invitation links."""

    # Serve the page (and put fresh invitation links in auto-replies).
    enabled: bool = True
    # How long an invitation link stays valid.
    invitation_ttl: Duration = 604800  # 7 days
    # The size of each piece the page sends; a dropped connection costs at most one.
    chunk_size: Size = Field(8388608, ge=65536)  # 8 MiB
    # The largest file the page accepts.
    max_file_size: Size = 5368709120  # 5 GiB
    # With an S3 store, the page PUTs parts straight to the store with
    # presigned part URLs (the bucket needs a CORS rule); off, or with
    # another backend, chunks go through the gateway.
    direct_to_store: bool = True
    # How long each presigned part URL stays valid.
    part_url_ttl: Duration = Field(300, ge=10, le=604800)
    # Uploads not completed within this are aborted and their pieces removed.
    abandon_after: Duration = Field(86400, ge=1)  # 1 day
    # How often the serving process looks for abandoned uploads.
    cleanup_interval: Duration = Field(600, ge=1)
    # Limits on what one invitation link may be used for; None: no limit.
    max_files_per_invitation: int | None = Field(None, ge=1)
    max_bytes_per_invitation: Size | None = None
    # Where the completion email goes when the invitation names no address;
    # must be accepted by a route (its next hop carries the email).
    notify_address: str | None = None
    # The sender of the completion email; "" means upload@<gateway.hostname>.
    from_address: str = ""


class BrandingColours(_Strict):
    """The pages' colours (``#rgb`` or ``#rrggbb``)."""

    # Buttons, links and the header rule.
    accent: str = "#1f5f99"
    # Text on the accent colour (buttons).
    accent_text: str = "#ffffff"

    @field_validator("accent", "accent_text")
    @classmethod
    def _colour(cls, v: str) -> str:
        from gateway.branding import check_colour

        return check_colour(v)


class BrandingSupport(_Strict):
    """Where customers and agents get help; each shown when set."""

    email: str = ""
    url: str = ""
    phone: str = ""

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        from gateway.branding import check_email

        return check_email(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from gateway.branding import check_url

        return check_url(v)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str) -> str:
        from gateway.branding import check_phone

        return check_phone(v)


class BrandingSettings(_Strict):
    """Who the pages (and the automatic reply) speak for (gateway/branding.py)."""

    # The organisation's name, in the pages' header; "" for none.
    name: str = Field("", max_length=100)
    # A PNG, JPEG or SVG file (at most 256 KiB) the gateway serves itself;
    # a URL is refused: the pages fetch nothing from other sites.
    logo: str | None = None
    colours: BrandingColours = BrandingColours()
    support: BrandingSupport = BrandingSupport()

    @field_validator("logo")
    @classmethod
    def _logo(cls, v: str | None) -> str | None:
        if v is not None and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", v):
            raise ValueError("expected a file (PNG, JPEG or SVG) the gateway serves itself, not a URL: the pages "
                             "fetch nothing from other sites; save the logo and name the file")
        return v


class SrsSettings(_Strict):
    """Sender Rewriting Scheme for routes with ``srs = true`` (gateway/srs.py)."""

    # A domain the gateway receives mail for (its MX points here) and whose
    # SPF record authorises the gateway's outgoing addresses.
    domain: str
    # The HMAC key of new SRS addresses (16+ characters, from a file or the
    # environment); previous ones are still accepted for bounces.
    secret: SecretRef
    previous_secrets: list[SecretRef] = Field(default_factory=list)
    # Days a bounce to an SRS address is accepted (the day wraps at 1024).
    max_age_days: int = Field(21, ge=1, le=1000)
    # Base64 characters of the hash in each address: more is harder to forge.
    hash_length: int = Field(6, ge=4, le=20)
    # Which mail to an SRS address is accepted: "null-sender" (bounces and
    # RFC 3834 auto-replies, which use the null sender) or "any" (also mail
    # with a sender, which then reaches the customer through the gateway).
    accept: Literal["null-sender", "any"] = "null-sender"

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        from gateway.ingress.routing import AddressRefused, check_domain

        try:
            return check_domain(v.strip())
        except AddressRefused as e:
            raise ValueError(f"expected a mail domain such as \"srs.mx.example.com\" ({e})") from None


class MetricsSettings(_Strict):
    """Where /metrics and the OpenAPI document are served."""

    # A plain-HTTP listener of its own ("127.0.0.1:9464") for /metrics,
    # /healthz, /readyz and /api/v1/openapi.json; "" for none.
    listen: str = ""
    # Whether the agents' listener ([http] listen) serves them too: "local"
    # to clients on this machine only (a loopback peer, no forwarding
    # header), "api-key" to callers with one of [api].keys, "open" to
    # anyone, "off" never.
    on_http: Literal["local", "api-key", "open", "off"] = "local"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            parse_hostport(v)
        return v

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as (host, port)."""
        return parse_hostport(self.listen)


class Config(_Strict):
    """The whole config file."""

    gateway: GatewaySettings = GatewaySettings()
    smtp: SmtpSettings = SmtpSettings()
    http: HttpSettings = HttpSettings()
    metrics: MetricsSettings = MetricsSettings()
    links: LinkSettings
    storage: dict[str, StorageSettings]
    routes: list[RouteSettings] = Field(min_length=1)
    delivery: DeliverySettings = DeliverySettings()
    worker: WorkerSettings = WorkerSettings()
    agents: AgentSettings = AgentSettings()
    authorization: AuthorizationSettings = AuthorizationSettings()
    audit: AuditSettings = AuditSettings()
    auth: AuthSettings = AuthSettings()
    # The malware scanner; required by a route that runs refuse_malware.
    clamd: ClamdSettings | None = None
    api: ApiSettings = ApiSettings()
    upload: UploadPageSettings = UploadPageSettings()
    branding: BrandingSettings = BrandingSettings()
    # Absent: ``serve`` runs no milter; ``attachment-gateway milter`` then
    # uses the defaults above.
    milter: MilterSettings | None = None
    # Sender Rewriting Scheme; required by a route with ``srs = true``.
    srs: SrsSettings | None = None
    i18n: I18nSettings = I18nSettings()

    # The directory relative paths are resolved against (the config file's
    # own project root); not a key in the file.
    base_dir: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        self._check_agents()
        for key, value in (("smtp.tls_cert_file", self.smtp.tls_cert_file),
                           ("smtp.tls_key_file", self.smtp.tls_key_file),
                           ("auth.arc.key_file", self.auth.arc.key_file if self.auth.arc else None),
                           ("auth.dkim.key_file", self.auth.dkim.key_file if self.auth.dkim else None),
                           *((f"routes[{i}].tls_ca_file", r.tls_ca_file) for i, r in enumerate(self.routes))):
            if value is not None and not os.access(self.path(value), os.R_OK):
                raise ValueError(f"{key}: {value!r}: expected a readable file")
        from gateway.branding import check_branding, logo_type

        check_branding(self.branding.colours.accent, self.branding.colours.accent_text)
        if self.branding.logo is not None:

            try:
                logo_type(self.path(self.branding.logo))
            except ValueError as e:
                raise ValueError(f"branding.logo: {self.branding.logo!r}: {e}") from None
        for name, store in self.storage.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
                # The name is a field of every link token (KID.STORE.EXP.OID.SIG):
                # with a dot or past 32 characters no link to the store would
                # ever verify, every click a 403.
                raise ValueError(f"storage.{name}: a store's name is written in its links: expected 1 to 32 "
                                 f"letters, digits, '_' or '-'")
            if store.retention_days * 86400 < self.links.ttl:
                raise ValueError(f"storage.{name}.retention_days: {store.retention_days}: attachments would be "
                                 f"deleted before their links expire (links.ttl = {self.links.ttl} s): expected "
                                 f"at least {-(-self.links.ttl // 86400)}")
            self._check_retention(name, store)
        names = set()
        for i, route in enumerate(self.routes):
            if route.storage not in self.storage:
                raise ValueError(f"routes[{i}].storage: {route.storage!r} names no [storage.*] table "
                                 f"(have: {', '.join(sorted(self.storage)) or 'none'})")
            if route.name in names:
                raise ValueError(f"routes[{i}].name: {route.name!r} is used twice")
            names.add(route.name)
            from policies import PolicyConfigError, build, known_policies  # late: keeps import order simple

            for j, ref in enumerate(route.policies):
                if ref.name not in known_policies():
                    raise ValueError(f"routes[{i}].policies[{j}].name: {ref.name!r} is not a known policy "
                                     f"(known: {', '.join(sorted(known_policies()))})")
                try:
                    build(ref.name, ref.settings)
                except PolicyConfigError as e:
                    raise ValueError(f"routes[{i}].policies[{j}].settings.{e}") from None
                if ref.name == "refuse_malware" and self.clamd is None:
                    raise ValueError(f"routes[{i}].policies[{j}].name: 'refuse_malware' needs a [clamd] table "
                                     f"with the scanner's address")
        self._check_i18n()
        self._check_srs()
        if self.api.route is not None and self.api.route not in names:
            raise ValueError(f"api.route: {self.api.route!r} names no route (have: {', '.join(sorted(names))})")
        return self

    def _check_retention(self, name: str, store: StorageSettings) -> None:
        """Nothing may expire while what depends on it can still be used."""
        def days(seconds: int) -> int:
            return -(-seconds // 86400)

        key = f"storage.{name}"
        if store.link_days < store.retention_days:
            raise ValueError(f"{key}.link_retention_days: {store.link_days}: link records would be deleted while "
                             f"their links can still be refreshed (a link is refreshable as long as its file is "
                             f"kept, {key}.retention_days = {store.retention_days}): expected at least "
                             f"{store.retention_days}")
        if store.link_days < days(self.links.ttl):
            raise ValueError(f"{key}.link_retention_days: {store.link_days}: link records would be deleted before "
                             f"their links expire (links.ttl = {self.links.ttl} s): expected at least "
                             f"{days(self.links.ttl)}")
        if store.invitation_retention_days < days(self.upload.invitation_ttl):
            raise ValueError(f"{key}.invitation_retention_days: {store.invitation_retention_days}: invitations "
                             f"would be deleted before their links expire (upload.invitation_ttl = "
                             f"{self.upload.invitation_ttl} s): expected at least {days(self.upload.invitation_ttl)}")
        if store.staging_retention_days < days(self.upload.abandon_after):
            raise ValueError(f"{key}.staging_retention_days: {store.staging_retention_days}: staged uploads would "
                             f"be deleted before the upload page gives them up (upload.abandon_after = "
                             f"{self.upload.abandon_after} s): expected at least {days(self.upload.abandon_after)}")

        for route in self.routes:
            if route.storage == name and route.autoreply is not None and \
                    store.fleet_retention_days <= days(2 * route.autoreply.interval):
                raise ValueError(f"{key}.fleet_retention_days: {store.fleet_retention_days}: automatic-reply claims "
                                 f"would be deleted while they still limit replies (route {route.name!r} "
                                 f"autoreply.interval = {route.autoreply.interval} s): expected more than "
                                 f"{days(2 * route.autoreply.interval)}")

    def _check_srs(self) -> None:
        from gateway import srs as srs_mod  # late: gateway.srs imports the delivery layer

        for i, route in enumerate(self.routes):
            if route.name == srs_mod.BOUNCE_ROUTE:
                raise ValueError(f"routes[{i}].name: {route.name!r} is reserved for bounces to SRS addresses")
            if route.srs and self.srs is None:
                raise ValueError(f"routes[{i}].srs: true needs an [srs] table (domain and secret)")
            if self.srs is not None and self.srs.domain in route.domains:
                raise ValueError(f"srs.domain: {self.srs.domain!r} is also routes[{i}].domains: the SRS domain "
                                 f"takes bounces only; give it a name of its own")
        if self.srs is not None and any(r.srs for r in self.routes):
            # Mail to SRS addresses (the platform's bounces) has a route of
            # its own: the worker looks routes up by name.
            self.routes.append(srs_mod.bounce_route(self))

    def _check_i18n(self) -> None:
        from gateway import i18n, mailtext  # late: Babel is only needed once a config is read

        directory = self.path(self.i18n.directory) if self.i18n.directory else None
        if directory is not None:
            if not directory.is_dir() or not os.access(directory, os.R_OK | os.X_OK):
                raise ValueError(f"i18n.directory: {self.i18n.directory!r}: expected a readable directory "
                                 f"(DIRECTORY/<language>/LC_MESSAGES/mail.po)")
            errors = [e for p in mailtext.operator_catalogues(directory) for e in mailtext.catalogue_errors(p)]
            if errors:
                raise ValueError("i18n.directory: " + "\ni18n.directory: ".join(errors))
        available = mailtext.mail_languages(mailtext.catalogues(directory))
        for i, route in enumerate(self.routes):
            tag = i18n.normalise(route.language)
            if tag not in available and tag.split("_")[0] not in available:
                raise ValueError(f"routes[{i}].language: {route.language!r}: no mail catalogue for this language; "
                                 f"expected one of {', '.join(available)} (or add "
                                 f"<[i18n] directory>/{tag or route.language}/LC_MESSAGES/mail.po)")

    def _check_agents(self) -> None:
        agents, authz = self.agents, self.authorization
        if agents.auth == "none" and not self.http.on_loopback:
            raise ValueError(f"agents.auth: 'none' is allowed only while http.listen is on loopback "
                             f"(it is {self.http.listen!r}); use \"oidc\" or \"trusted-header\"")
        if agents.auth == "oidc":
            if agents.oidc is None:
                raise ValueError("agents.oidc: missing, a [agents.oidc] table is required when agents.auth is 'oidc'")
            if agents.session_key is None:
                raise ValueError("agents.session_key: missing, required when agents.auth is 'oidc'")
            host = re.sub(r"^https?://([^/:]+|\[[^\]]+\]).*$", r"\1", self.http.base_url)
            if self.http.base_url.startswith("http://") and host not in ("127.0.0.1", "localhost", "[::1]"):
                # The session cookie is Secure: browsers keep it only over HTTPS.
                raise ValueError(f"http.base_url: {self.http.base_url!r}: agents.auth 'oidc' needs an https:// "
                                 f"base URL (the session cookie is Secure)")
        if agents.auth == "trusted-header" and not self.http.trusted_proxies:
            raise ValueError("http.trusted_proxies: empty, but agents.auth 'trusted-header' needs the proxy "
                             "addresses whose identity header is believed")
        if agents.auth == "trusted-header":
            for net in self.http.trusted_proxies:
                if ipnets.network(net).prefixlen == 0:  # "::ffff:0:0/96" too: every IPv4 client
                    # Every client would be believed: anyone could name themselves in the header.
                    raise ValueError(f"http.trusted_proxies: {net!r} trusts every address, so any client could "
                                     f"set {agents.header}; expected the reverse proxy's own addresses, such as "
                                     f"\"127.0.0.1/32\"")
        if authz.mode is None and agents.auth != "none":
            raise ValueError(f"authorization.mode: missing, required when agents.auth is {agents.auth!r} "
                             f"(\"static\", \"callout\" or an explicit \"allow-all\")")
        if authz.mode == "callout" and authz.callout is None:
            raise ValueError("authorization.callout: missing, required when authorization.mode is 'callout'")

    def api_route(self) -> RouteSettings:
        """The route uploads over HTTP belong to."""
        name = self.api.route or self.routes[0].name
        return next(r for r in self.routes if r.name == name)

    def process_count(self) -> int:
        """How many processes ``serve`` runs."""
        n = self.gateway.processes
        return max(1, os.cpu_count() or 1) if n == "auto" else n

    def path(self, p: str) -> Path:
        """Resolve a path from the config against the base directory."""
        path = Path(p)
        return path if path.is_absolute() else Path(self.base_dir) / path


def read_secret(ref: SecretRef, base_dir: str | Path, key: str, min_length: int = 1) -> str:
    """The secret ``ref`` points at (a file, or an environment variable);
    raise ConfigError naming the config key when it is missing or short."""
    from gateway.secrets import SecretError, read_secret as read

    try:
        value = read(file=None if ref.env is not None else (ref.file or ""), env=ref.env, base_dir=base_dir,
                     what=key, min_length=min_length)
    except SecretError as e:
        raise ConfigError(str(e)) from None
    assert value is not None
    return value


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        parts = list(e["loc"])
        # A [storage.NAME] table is a tagged union: pydantic puts the tag
        # (the backend) in the path; the administrator never wrote it.
        if len(parts) > 2 and parts[0] == "storage" and parts[2] in ("filesystem", "s3", "azure", "gcs"):
            del parts[2]
        e = {**e, "loc": tuple(parts)}
        loc = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in e["loc"]).replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # The [storage.NAME] table's backend: name that key alone; the
            # whole table as input would echo every setting (and secret) in it.
            lines.append(_backend_error(loc, e))
        elif e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{loc}: missing, a value is required")
        elif loc:
            lines.append(f"{loc}: {e.get('input')!r}: {msg}")
        else:
            lines.append(msg)
    return "\n".join(lines)


def _backend_error(loc: str, e: Any) -> str:
    """``storage.NAME.backend`` missing or not one of the backends."""
    key = f"{loc}.{e.get('ctx', {}).get('discriminator', 'backend').strip(chr(39))}"
    expected = "one of \"filesystem\", \"s3\", \"azure\", \"gcs\""
    if e["type"] == "union_tag_not_found":
        return f"{key}: missing, expected {expected}"
    tag = e.get("ctx", {}).get("tag", "")
    hint = f" (backend names are lower case: {tag.lower()!r})" if tag.lower() in ("filesystem", "s3", "azure", "gcs") \
        else ""
    return f"{key}: {tag!r}: expected {expected}{hint}"


def load(path: str | os.PathLike[str], base_dir: str | None = None) -> Config:
    """Read and validate the config file; raise ConfigError naming each bad key.

    Relative paths in the file are resolved against ``base_dir`` (default: the
    current directory, so a checkout's ``var/`` is used by ``make run``).
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    raw["base_dir"] = base_dir if base_dir is not None else os.getcwd()
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: invalid config:\n{_format_errors(e)}") from None
    from gateway import srs  # late: gateway.srs imports the delivery layer

    # Reads the SRS secrets now: one that cannot be read is a ConfigError
    # naming the key, at check-config and start-up, not at the first RCPT.
    srs.from_config(cfg)
    return cfg


#: Keys a SIGHUP does not apply: each is read once, when a process starts
#: (the ports it listens on, the spool it owns, the stores and audit sinks
#: it opens, its log form, how many processes the supervisor forked).
RESTART_KEYS = ("gateway.spool_dir", "gateway.processes", "gateway.log_level", "gateway.audit_log",
                "smtp.listen", "http.listen", "metrics.listen", "milter", "storage", "audit", "upload.enabled")


def restart_changes(old: Config, new: Config) -> list[str]:
    """The keys of ``RESTART_KEYS`` whose value differs between two configs:
    what a reload leaves as it was until the next restart."""
    def value(cfg: Config, key: str) -> object:
        obj: object = cfg
        for name in key.split("."):
            obj = getattr(obj, name)
        return obj.model_dump() if isinstance(obj, BaseModel) else (
            {k: v.model_dump() for k, v in obj.items()} if isinstance(obj, dict) else obj)
    return [key for key in RESTART_KEYS if value(old, key) != value(new, key)]

