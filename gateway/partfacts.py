"""What the policies see about one file, built the same way for mail and uploads.

The worker (a part of a message) and the HTTP upload paths (a file posted by
a flow or dropped on the upload page) both ask ``policies.decide`` about a
file; building the facts in one place keeps the two from drifting apart, so
a policy added for mail (type detection, refusals) applies to uploads too.
``head`` is the first bytes of the decoded content, for type detection.
"""
from __future__ import annotations

import re

import policies
from gateway.config import RouteSettings

# How many leading bytes of a file are kept for type detection.
HEAD_BYTES = 8192

_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def route_facts(route: RouteSettings) -> policies.RouteFacts:
    """The route as the policies may see it."""
    return policies.RouteFacts(route.name, route.offload_threshold, route.next_hop_max_size)


def part_facts(*, path: str, declared_type: str, filename: str, decoded_size: int, disposition: str,
               route: RouteSettings, head: bytes = b"", detected_type: str | None = None,
               content_id: str | None = None, is_body: bool = False, is_attachment: bool = True,
               inline: bool = False, scan: policies.ScanVerdict | None = None,
               packed_tnef: bool = False, signature_of_signed: bool = False) -> policies.PartFacts:
    """The facts about one file (``head``: its first decoded bytes; the
    detected type is sniffed from it when the caller has not already, from
    the head alone: a caller with the whole file uses
    ``gateway.mime.container.detect_part`` or ``detect_chunks`` first, so
    that a ZIP is judged by its central directory)."""
    if detected_type is None and head:
        from gateway.mime import sniff

        detected_type = sniff.detect(head)
    return policies.PartFacts(
        path=path, declared_type=declared_type, filename=filename, decoded_size=decoded_size, is_body=is_body,
        disposition=disposition, route=route_facts(route), detected_type=detected_type, content_id=content_id,
        head=head, is_attachment=is_attachment, inline=inline, scan=scan, packed_tnef=packed_tnef,
        signature_of_signed=signature_of_signed)


def safe_type(ctype: str) -> str:
    """A media type fit for a header and object metadata, else octet-stream."""
    ctype = ctype.strip().lower()
    return ctype if _TYPE.fullmatch(ctype) else "application/octet-stream"
