"""Identify: who the message is about (the customer id), which parts are
its text and HTML body, and which parts its HTML shows inline."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress

from gateway import customers, logs
from gateway.config import RouteSettings
from gateway.mime.decode import base64_problem, decoded_bytes, encoding_problem, html_problem, message_header
from gateway.mime.params import decode_2047
from gateway.mime.parse import Part
from gateway.mime.rewrite import cid_references
from gateway.mime.source import Source
from gateway.pipeline.job import MessageJob
from gateway.pipeline.step import INLINE_BYTES, Step
from gateway.spool.envelope import Envelope

log = logs.get("identify")

# HTML bodies up to this size are read for cid: references (inline images).
MAX_HTML_SCAN = 8 << 20


class Identify(Step):
    """Find the customer, the Message-ID, the bodies and their inline images."""

    name = "identify"
    always = False

    async def run(self, job: MessageJob) -> None:
        assert job.src is not None and job.root is not None
        job.message_id = message_header(job.root.headers, "Message-ID").strip()
        job.customer, job.customer_believed = customer_id(job.root, job.envelope, job.route)
        if not job.customer_believed:
            job.log.info("customer id header not believed from this client; removed",
                         header=job.route.customer_id.header, client=job.envelope.client_addr)
        if any((leaf.cte == "base64" or leaf.content_type == "text/html") and leaf.encoded_size > INLINE_BYTES
               for leaf in job.root.leaves()):
            job.text_part, job.html_part = await asyncio.to_thread(bodies, job.root, job.src)
        else:
            job.text_part, job.html_part = bodies(job.root, job.src)
        html = job.html_part
        if html is not None and html.encoded_size <= MAX_HTML_SCAN:
            # A small body is read on the loop: cheaper than the hop to a thread.
            body = decoded_bytes(job.src, html) if html.encoded_size <= INLINE_BYTES else \
                await asyncio.to_thread(decoded_bytes, job.src, html)
            job.cids = cid_references(body)


def customer_id(root: Part, envelope: Envelope, route: RouteSettings) -> tuple[str, bool]:
    """The customer id as given (case kept: gateway.customers; object keys
    use its sanitised form), and False when the message's customer header
    was there but not believed (it is then removed from the forwarded
    message): only clients in the route's ``customer_id.trusted_networks``
    may name the customer.  A believed header whose id cannot be used
    (control or format characters, over-long) is logged and the fallback
    applies: the mail goes on, filed under the fallback."""
    rule = route.customer_id
    if envelope.customer_id:
        with contextlib.suppress(customers.InvalidCustomerId):
            return customers.checked(envelope.customer_id), True
    believed = True
    if rule.header:
        value = message_header(root.headers, rule.header).strip()
        if value and in_networks(envelope.client_addr, rule.trusted_networks):
            try:
                # A non-ASCII id comes as RFC 2047 encoded words (or raw UTF-8
                # on SMTPUTF8 mail); control characters left by the decoding
                # are refused by checked().
                return customers.checked(decode_2047(value)), True
            except customers.InvalidCustomerId as e:
                log.warning("customer id header refused; fallback applies", header=rule.header, reason=str(e))
                return _fallback(rule.fallback, envelope), False
        believed = not value
    return _fallback(rule.fallback, envelope), believed


def _fallback(fallback: str, envelope: Envelope) -> str:
    if fallback == "sender" and envelope.mail_from:
        with contextlib.suppress(customers.InvalidCustomerId):
            return customers.checked(envelope.mail_from)
    return customers.UNKNOWN


def in_networks(addr: str, networks: list[str]) -> bool:
    """Whether the client address ``addr`` is in one of ``networks``."""
    if not networks or not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def bodies(root: Part, src: Source) -> tuple[Part | None, Part | None]:
    """The first text/plain and text/html leaves that are the message's body
    (inline, without a filename), in document order.  A leaf readers could
    decode to different bytes is not one: judged as a part, it is refused
    as unexamined (the body is not judged as a file, but a client may find
    a uuencoded program in what it decodes).  Nor is an HTML leaf that
    carries a file as a data: URL (``gateway.mime.htmlfiles``).  Blocking
    for a large base64 or HTML leaf, which is decoded once to find out."""
    text = html = None
    for leaf in root.leaves():
        if leaf.unexamined is not None or leaf.in_attached_message:
            continue  # an attached email's text is a file's content, not this message's body
        ctype = leaf.content_type
        if ctype not in ("text/plain", "text/html") or disposition(leaf) == "attachment":
            continue
        if leaf.filename:
            continue
        if leaf.headers.get_content_maintype() == "multipart":
            continue
        if (ctype == "text/plain" and text is None or ctype == "text/html" and html is None) \
                and (encoding_problem(leaf) or base64_problem(src, leaf) or html_problem(src, leaf)):
            continue
        if ctype == "text/plain" and text is None:
            text = leaf
        elif ctype == "text/html" and html is None:
            html = leaf
    return text, html


def disposition(part: Part) -> str:
    """The part's Content-Disposition type (``attachment``, ``inline``, '')."""
    value = message_header(part.headers, "Content-Disposition")
    return value.split(";", 1)[0].strip().lower()
