"""Verify what arrived: DKIM, SPF, DMARC and an existing ARC chain.

Runs on the spooled original before any policy or rewrite (the rewrite
breaks the sender's body hash, so later is too late).  The result is one
``Authentication-Results`` header (RFC 8601) under the gateway's
authserv-id, and the byte ranges of incoming ``Authentication-Results``
headers that claim that id: those are forgeries or stale, and are dropped
from what goes on (section 5), because the ARC seal would otherwise vouch
for them.

Only the header block is held in memory: body hashes are computed while
streaming the body (``bodyhash.py``) and handed to dkimpy in place of its
own.  DNS failures give ``temperror`` and the message goes on.
"""
from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import dkim
import dkim.util
import spf
from publicsuffixlist import PublicSuffixList

from gateway.authn.bodyhash import BodyKey, body_canon, body_digests
from gateway.authn.resolver import DnsTempError, Resolver
from gateway.mime.source import Source
from gateway.spool.envelope import Envelope

_PSL: PublicSuffixList | None = None

# Signatures checked per message (RFC 6376 section 6.1 lets a verifier
# limit them): each costs a key lookup at a name the sender chooses, so a
# header block of thousands would be thousands of DNS queries.
MAX_SIGNATURES = 10
# Key lookups (DKIM and ARC together) per message, each name asked once,
# and the seconds they may take in all, in units of the DNS timeout.
MAX_KEY_LOOKUPS = 24
KEY_LOOKUP_BUDGET = 6
# RFC 8617 section 4.2.1: at most 50 ARC sets; more is a failed chain.
MAX_ARC_INSTANCE = 50
# The largest RSA key a sender's record may publish, and its largest public
# exponent: OpenSSL's bounds.  dkimpy verifies with Python's pow(), which
# holds the interpreter lock throughout; a record with a 12288-bit modulus
# and exponent froze the whole process (SMTP, HTTP, every worker) for
# seconds per signature, and larger ones for hours.
MAX_RSA_BITS = 16384
MAX_RSA_EXPONENT_BITS = 64
# Names in one signature's h=: dkimpy looks for each from the bottom of the
# header block, so 8000 names over 14000 fields were 14 s of CPU a
# signature.  Signers list a dozen or two (oversigning included).
MAX_SIGNED_FIELDS = 100
# Fields RFC 5322 allows once: a signature that covers one of them fewer
# times than it appears leaves the extra copy, which a mail client may be
# the one to show, outside the signature (RFC 6376 section 8.15).
SINGLETONS = frozenset((b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id",
                        b"in-reply-to", b"references"))


def _psl() -> PublicSuffixList:
    global _PSL
    if _PSL is None:
        _PSL = PublicSuffixList()  # the list packaged with publicsuffixlist: no download
    return _PSL


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 section 3.2), from the packaged PSL."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


@dataclass
class Field:
    """One header field of the original: its name and where it lies."""

    name: str
    start: int
    end: int
    raw: bytes


@dataclass
class Verification:
    """What the checks found, ready to put in front of the message."""

    header: bytes  # the Authentication-Results field, CRLF-terminated
    drop: list[tuple[int, int]] = field(default_factory=list)  # byte ranges of forged A-R fields
    summary: dict[str, str] = field(default_factory=dict)  # method -> result, for the log
    # The domains of the DKIM signatures that passed (lower case): whether
    # the envelope sender's domain vouched for the message, beside SPF.
    dkim_domains: list[str] = field(default_factory=list)


def _header_block(head: bytes) -> tuple[bytes, int, bool]:
    """The header block at the start of ``head`` (through its last field's
    CRLF), where the body starts, and whether the blank line ending the
    block is in ``head`` (an empty block, a message starting with CRLF,
    ends at once)."""
    if head.startswith(b"\r\n"):
        return b"", 2, True
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return head, len(head), False
    return head[: end + 2], end + 4, True


def header_fields(block: bytes) -> list[Field]:
    """Split a header block (ending before the empty line) into fields."""
    out: list[Field] = []
    pos = 0
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1].end = pos + len(line)
        else:
            name = line.split(b":", 1)[0].decode("ascii", "replace").strip()
            out.append(Field(name, pos, pos + len(line), b""))
        pos += len(line)
    # Each field's bytes cut once: appending every continuation line to
    # them copied the field again per line (a 1 MiB field of short folded
    # lines took seconds).
    for f in out:
        f.raw = block[f.start:f.end]
    return out


def authserv_id_of(raw: bytes) -> str:
    """The authserv-id an Authentication-Results field claims (lower case),
    read as RFC 8601 writes it and as an RFC parser downstream (such as
    the ``authres`` package) reads it: comments skipped, a backslash
    inside a comment escaping the next character (``(a\\) b) gw.test``
    is a comment, then ``gw.test``), nested comments, and an id written
    as a quoted string (``"gw.test"``) unquoted.  A reader that took the
    escaped parenthesis for the comment's end would find another id and
    leave a forgery under ours in place."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    text = value.decode("utf-8", "replace")
    depth = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if depth:
            if ch == "\\":
                i += 1  # a quoted-pair: the next character is text, even ")"
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            i += 1
        elif ch == "(":
            depth = 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == '"':
            return _quoted_string(text, i + 1).strip().lower()
        else:
            end = i
            while end < n and not text[end].isspace() and text[end] not in ";(":
                end += 1
            return text[i:end].lower()
    return ""


def _quoted_string(text: str, i: int) -> str:
    """The content of the quoted string whose opening quote is before
    ``text[i]``, quoted-pairs undone (to its end when it is not closed)."""
    out = []
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


class UnacceptedSignature(dkim.ValidationError):
    """A signature that verifies but vouches for less than a reader of the
    message sees (``dkim=policy``, RFC 8601 section 2.7.1)."""


class _StreamedBodyMixin:
    """dkimpy with body hashes computed elsewhere (streamed): a signature's
    bh= is checked here against the streamed hash, then dkimpy checks the
    header signature exactly as it would (bh= is part of the signed header
    text, not of the parsed tags it hashes).  A signature that verifies is
    then refused when it leaves out what a reader would take as signed."""

    body_hashes: dict[BodyKey, bytes] = {}
    body_lengths: dict[bytes, int] = {}  # canonical body length by canonicalisation
    headers: list[tuple[bytes, bytes]]
    must_sign_from = False  # a DKIM-Signature must cover From (ARC's seal covers no From)

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: Any, sig_header: Any,
                           dnsfunc: Any) -> Any:
        pk = getattr(self, "pk", None)
        if getattr(self, "ktag", None) == b"rsa" and isinstance(pk, dict) and (
                pk["modulus"].bit_length() > MAX_RSA_BITS
                or pk["publicExponent"].bit_length() > MAX_RSA_EXPONENT_BITS):
            raise dkim.KeyFormatError(f"RSA key beyond {MAX_RSA_BITS} bits or its exponent beyond "
                                      f"{MAX_RSA_EXPONENT_BITS}: not checked")
        if len(include_headers) > MAX_SIGNED_FIELDS:
            raise dkim.MessageFormatError(f"h= lists more than {MAX_SIGNED_FIELDS} fields: not checked")
        if self.must_sign_from and b"from" not in [h.strip().lower() for h in include_headers]:
            # RFC 6376 section 6.1.1: ignored, PERMFAIL.  dkimpy refuses to
            # sign so but verifies it: the From it vouches for is anyone's.
            raise dkim.MessageFormatError("From field not signed")
        # Judged before dkimpy runs: it appends to include_headers.
        refusal = self._refusal(sig, include_headers)
        if b"bh" in sig:
            key = _body_key(sig)
            got = self.body_hashes.get(key) if key is not None else None
            try:
                want = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except (ValueError, TypeError) as e:
                raise dkim.MessageFormatError(str(e)) from None
            if got != want:
                raise dkim.ValidationError("body hash mismatch")
            sig = {k: v for k, v in sig.items() if k != b"bh"}
        ok = super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)  # type: ignore[misc]
        if ok and refusal:
            raise UnacceptedSignature(refusal)
        return ok

    def _refusal(self, sig: dict[bytes, bytes], include_headers: list[bytes]) -> str:
        """Why a signature that verifies must still not count, or "": our
        seal would otherwise vouch for what the sender never signed."""
        if sig.get(b"a", b"").strip().lower() == b"rsa-sha1":
            return "rsa-sha1 is not accepted (RFC 8301)"
        limit = sig.get(b"l")
        if limit is not None and limit.strip().isdigit():
            length = self.body_lengths.get(body_canon(sig.get(b"c", b"simple/simple")), 0)
            if int(limit) < length:
                # Whatever follows the signed part (a link, a file) would
                # pass as the sender's.
                return f"l= leaves {length - int(limit)} bytes of the body unsigned"
        signed = [h.strip().lower() for h in include_headers]
        for name in sorted(SINGLETONS.intersection(signed)):
            present = sum(1 for h, _ in self.headers if h.strip().lower() == name)
            if present > signed.count(name):
                return f"{present} {name.decode()} fields, {signed.count(name)} signed"
        return ""


class StreamedDKIM(_StreamedBodyMixin, dkim.DKIM):
    """DKIM verification over a header block and streamed body hashes."""

    must_sign_from = True


class StreamedARC(_StreamedBodyMixin, dkim.ARC):
    """ARC chain verification over a header block and streamed body hashes."""


def _body_key(sig: dict[bytes, bytes]) -> BodyKey | None:
    limit = sig.get(b"l")
    try:
        n = int(limit) if limit is not None else None
    except ValueError:
        return None
    return body_canon(sig.get(b"c", b"simple/simple")), sig.get(b"a", b"rsa-sha256").strip().lower(), n


class Verifier:
    """Runs the checks for one message; blocking (call from a thread)."""

    def __init__(self, authserv_id: str, resolver: Resolver, max_header_bytes: int) -> None:
        self.authserv_id = authserv_id
        self.resolver = resolver
        self.max_header_bytes = max_header_bytes
        # pyspf looks its DNS up through a module-level function: point it at
        # our resolver (one config, so one resolver, per process).
        spf.DNSLookup = resolver.spf_lookup

    def _ours(self, fields: list[Field]) -> list[tuple[int, int]]:
        """The byte ranges of the Authentication-Results fields that claim
        our authserv-id: forged (RFC 8601 section 5), to be cut."""
        return [(f.start, f.end) for f in fields
                if f.name.lower() == "authentication-results" and authserv_id_of(f.raw) == self.authserv_id]

    def forged_results(self, path: Path, size: int | None = None) -> list[tuple[int, int]]:
        """Only the forged results to cut, for when the checks themselves
        broke: the message goes without our results, never with one that
        claims to be ours."""
        with Source(path, size) as src:
            head = src.read(0, min(src.size, self.max_header_bytes))
        return self._ours(header_fields(_header_block(head)[0]))

    def verify(self, path: Path, envelope: Envelope, size: int | None = None) -> Verification:
        """Check the message in ``path`` (its first ``size`` bytes when given)."""
        with Source(path, size) as src:
            head = src.read(0, min(src.size, self.max_header_bytes))
            block, body_start, ended = _header_block(head)
            if not ended and len(head) < src.size:
                found = {"dkim": "none"}
                return self._header(["dkim=none reason=\"header block too large\"",
                                     *self._spf_lines(envelope, found, {})], [], found, [])
            fields = header_fields(block)
            drop = self._ours(fields)
            kept = b"".join(f.raw for f in fields if (f.start, f.end) not in drop)
            sigs = [f for f in fields if f.name.lower() in ("dkim-signature", "arc-message-signature")]
            keys: list[BodyKey] = []
            for f in sigs:
                try:
                    tags = dkim.util.parse_tag_value(f.raw.split(b":", 1)[1])
                except (dkim.util.InvalidTagValueList, IndexError):
                    continue
                k = _body_key(tags)
                if k is not None:
                    keys.append(k)
            hashes, lengths = body_digests(keys, src.iter_range(body_start, src.size, 1 << 20)) \
                if keys else ({}, {})
        # Per-message facts live in ``state``, not on self: one Verifier
        # serves every worker thread at once.
        summary: dict[str, str] = {}
        state: dict[str, Any] = {"lengths": lengths,
                                 "lookups": KeyLookups(self.resolver, MAX_KEY_LOOKUPS,
                                                       KEY_LOOKUP_BUDGET * self.resolver.timeout)}
        lines = self._dkim_lines(kept, fields, hashes, summary, state)
        lines += self._spf_lines(envelope, summary, state)
        lines += self._dmarc_lines(fields, envelope, summary, state)
        lines += self._arc_lines(kept, fields, hashes, summary, state)
        return self._header(lines, drop, summary, [d.lower() for d in state["dkim_pass"]])

    def _header(self, lines: list[str], drop: list[tuple[int, int]], summary: dict[str, str],
                dkim_domains: list[str]) -> Verification:
        text = f"Authentication-Results: {self.authserv_id};\r\n\t" + ";\r\n\t".join(lines) + "\r\n"
        return Verification(text.encode("utf-8", "replace"), drop, summary, dkim_domains)

    # -- DKIM -------------------------------------------------------------

    def _dkim_lines(self, block: bytes, fields: list[Field], hashes: dict[BodyKey, bytes],
                    summary: dict[str, str], state: dict[str, Any]) -> list[str]:
        state["dkim_pass"] = []
        count = sum(1 for f in fields if f.name.lower() == "dkim-signature")
        if not count:
            summary["dkim"] = "none"
            return ["dkim=none"]
        lines = []
        passed: list[str] = []
        for idx in range(min(count, MAX_SIGNATURES)):
            d = StreamedDKIM(block + b"\r\n", timeout=self.resolver.timeout)
            d.body_hashes = hashes
            d.body_lengths = state["lengths"]
            sig: dict[bytes, bytes] = {}
            reason = ""
            try:
                prep = d.verify_headerprep(idx)
                if prep:
                    sig = prep[0]
                ok = d.verify(idx, dnsfunc=state["lookups"])
                result = "pass" if ok else "fail"
                if not ok:
                    reason = "signature did not verify or no usable key"
            except DnsTempError as e:
                result, reason = "temperror", str(e)
            except UnacceptedSignature as e:
                result, reason = "policy", str(e)
            except dkim.ValidationError as e:
                result, reason = "fail", str(e)
            except dkim.DKIMException as e:
                result, reason = "permerror", str(e)
            domain = _token(sig.get(b"d", b""))
            selector = _token(sig.get(b"s", b""))
            if result == "pass" and domain:
                passed.append(domain)
            props = "".join(f" {k}={v}" for k, v in (("header.d", domain), ("header.s", selector)) if v)
            lines.append(f"dkim={result}{_reason(reason)}{props}")
            summary.setdefault("dkim", result)
            if result == "pass":
                summary["dkim"] = "pass"
        if count > MAX_SIGNATURES:
            lines.append(f"dkim=policy reason=\"{count - MAX_SIGNATURES} more signatures not checked "
                         f"(at most {MAX_SIGNATURES})\"")
        state["dkim_pass"] = passed
        return lines

    # -- SPF --------------------------------------------------------------

    def _spf_lines(self, envelope: Envelope, summary: dict[str, str], state: dict[str, Any]) -> list[str]:
        helo = envelope.helo or "unknown"
        sender = envelope.mail_from or f"postmaster@{helo}"
        spf_domain = state["spf_domain"] = sender.rpartition("@")[2].lower()
        try:
            result, explanation = spf.check2(i=envelope.client_addr, s=sender, h=helo,
                                             timeout=self.resolver.timeout, querytime=self.resolver.timeout * 4)
        except Exception as e:  # noqa: BLE001 - pyspf raises odd things on odd input: fail open
            result, explanation = "permerror", f"{type(e).__name__}: {e}"
        result = result.lower()
        state["spf_result"] = result
        summary["spf"] = result
        prop = f"smtp.mailfrom={_token(spf_domain)}" if envelope.mail_from else f"smtp.helo={_token(helo)}"
        reason = explanation if result in ("temperror", "permerror") else ""
        return [f"spf={result}{_reason(reason)} {prop}"]

    # -- DMARC ------------------------------------------------------------

    def _dmarc_lines(self, fields: list[Field], envelope: Envelope, summary: dict[str, str],
                     state: dict[str, Any]) -> list[str]:
        froms = [f for f in fields if f.name.lower() == "from"]
        if len(froms) > 1:
            # RFC 5322 allows one; with more, the one DMARC judges and the
            # one a mail client shows need not be the same (RFC 7489
            # section 6.6.1).
            summary["dmarc"] = "permerror"
            return ["dmarc=permerror reason=\"several From fields\""]
        domains = set()
        for f in froms:
            value = f.raw.split(b":", 1)[1].decode("utf-8", "replace")
            try:
                addresses = getaddresses([value])
            except RecursionError:
                # Comments nested past Python's recursion limit: no reader
                # can say whose address this is.
                summary["dmarc"] = "permerror"
                return ["dmarc=permerror reason=\"From field unreadable\""]
            for _, addr in addresses:
                if "@" in addr:
                    domains.add(addr.rpartition("@")[2].lower().rstrip(">").strip())
        if len(domains) != 1:
            summary["dmarc"] = "permerror" if domains else "none"
            return [f"dmarc={summary['dmarc']} reason=\"{'no' if not domains else 'several'} From domains\""]
        from_domain = domains.pop()
        org = org_domain(from_domain)
        try:
            record, policy_domain = self._dmarc_record(from_domain, org)
        except DnsTempError as e:
            summary["dmarc"] = "temperror"
            return [f"dmarc=temperror{_reason(str(e))} header.from={_token(from_domain)}"]
        if record is None:
            summary["dmarc"] = "none"
            return [f"dmarc=none header.from={_token(from_domain)}"]
        tags = _dmarc_tags(record)
        policy = tags.get("p", "")
        if policy not in ("none", "quarantine", "reject"):
            summary["dmarc"] = "permerror"
            return [f"dmarc=permerror reason=\"bad p= tag\" header.from={_token(from_domain)}"]
        if policy_domain != from_domain and tags.get("sp") in ("none", "quarantine", "reject"):
            policy = tags["sp"]

        def aligned(domain: str, mode: str) -> bool:
            domain = domain.lower()
            return domain == from_domain if mode == "s" else org_domain(domain) == org

        dkim_ok = any(aligned(d, tags.get("adkim", "r")) for d in state["dkim_pass"])
        spf_ok = state["spf_result"] == "pass" and aligned(state["spf_domain"], tags.get("aspf", "r"))
        result = "pass" if dkim_ok or spf_ok else "fail"
        summary["dmarc"] = result
        return [f"dmarc={result} (p={policy}) header.from={_token(from_domain)}"]

    def _dmarc_record(self, from_domain: str, org: str) -> tuple[bytes | None, str]:
        for domain in dict.fromkeys([from_domain, org]):
            records = [r for r in self.resolver.txt(f"_dmarc.{domain}") if r.lower().startswith(b"v=dmarc1")]
            if len(records) == 1:
                return records[0], domain
        return None, from_domain

    # -- ARC --------------------------------------------------------------

    def _arc_lines(self, block: bytes, fields: list[Field], hashes: dict[BodyKey, bytes],
                   summary: dict[str, str], state: dict[str, Any]) -> list[str]:
        if not any(f.name.lower().startswith("arc-") for f in fields):
            summary["arc"] = "none"
            return ["arc=none"]
        seals = [f for f in fields if f.name.lower() == "arc-seal"]
        instances = [int(m.group(1)) for f in fields if f.name.lower().startswith("arc-")
                     for m in [re.search(rb"(?:^|;)\s*i\s*=\s*(\d{1,9})", f.raw.split(b":", 1)[1])] if m]
        if len(seals) > MAX_ARC_INSTANCE or any(i > MAX_ARC_INSTANCE for i in instances):
            # Failed without a look: checking it would be up to two key
            # lookups a set, at names the sender chose.
            summary["arc"] = "fail"
            return [f"arc=fail reason=\"more than {MAX_ARC_INSTANCE} ARC sets\""]
        if any(f.name.lower() == "arc-authentication-results"
               and authserv_id_of(b"x:" + f.raw.split(b":", 1)[-1].split(b";", 1)[-1]) == self.authserv_id
               for f in fields):
            # A set whose results claim our name was not sealed by us (we
            # see the message now): passed on as a chain we vouch for, a
            # reader looking for our results by authserv-id finds its.
            summary["arc"] = "fail"
            return ["arc=fail reason=\"an ARC set claims our authserv-id\""]
        a = StreamedARC(block + b"\r\n", timeout=self.resolver.timeout)
        a.body_hashes = hashes
        a.body_lengths = state["lengths"]
        try:
            cv, _, reason = a.verify(dnsfunc=state["lookups"])
            result = (cv or b"fail").decode("ascii", "replace").lower()
        except DnsTempError as e:
            # ARC knows only none, pass and fail as chain results; a chain we
            # could not check now is sealed as failed (RFC 8617 section 5.2).
            result, reason = "fail", f"temperror: {e}"
        except dkim.DKIMException as e:
            result, reason = "fail", str(e)
        summary["arc"] = result
        return [f"arc={result}{_reason(reason if result != 'pass' else '')}"]


class KeyLookups:
    """dkimpy's ``dnsfunc`` for one message: each key name is asked once,
    and after ``limit`` names or ``budget`` seconds (of checking, DNS or
    not) a lookup is a ``DnsTempError`` without a query, so a message full
    of signatures at slow or distinct names can neither hold a worker for
    hours nor turn the gateway into a source of DNS queries at the
    sender's bidding."""

    def __init__(self, resolver: Resolver, limit: int, budget: float) -> None:
        self.resolver = resolver
        self.limit = limit
        self.deadline = time.monotonic() + budget
        self.seen: dict[bytes | str, bytes | None] = {}

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.lower()
        # The time is checked for names asked before too: each lookup
        # starts a signature's check, so this bounds the checks, not only DNS.
        if time.monotonic() > self.deadline:
            raise DnsTempError("key lookups for this message took too long")
        if key in self.seen:
            return self.seen[key]
        if len(self.seen) >= self.limit:
            raise DnsTempError(f"more than {self.limit} key lookups for one message")
        value = self.resolver.dkim_txt(name, timeout)
        self.seen[key] = value
        return value


def _dmarc_tags(record: bytes) -> dict[str, str]:
    tags = {}
    for item in record.decode("ascii", "replace").split(";"):
        k, sep, v = item.partition("=")
        if sep:
            tags[k.strip().lower()] = v.strip().lower()
    return tags


def _token(value: bytes | str) -> str:
    """A value safe as an RFC 8601 property value (a domain-like token)."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return re.sub(r"[^A-Za-z0-9._@-]", "", text)[:255]


def _reason(text: str) -> str:
    if not text:
        return ""
    clean = re.sub(r"[\"\\\r\n]", "'", text)[:200]
    return f" reason=\"{clean}\""
