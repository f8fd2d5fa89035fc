"""The decisions: one module a policy, each deciding what happens to one part.

A policy looks at the facts about one leaf part (declared and detected type,
decoded size, filename, whether it is the message's body, the route) and
returns a ``Decision``, or None to leave the part to the next policy.  The
route's config lists which policies run and in which order; the first
decision wins, and a part no policy decides on is kept.  Policies never do
I/O: the worker carries out what they decide.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from policies.filetypes import ACTIVE_TYPES, EXECUTABLE_TYPES, HTML, describe


class Action(enum.Enum):
    """What the worker does with a part."""

    KEEP = "keep"  # forward the part unchanged
    OFFLOAD = "offload"  # store it, replace it with a notice, add a link
    REPLACE = "replace"  # replace it with a notice, store nothing
    # Replace it with a notice naming the file and the reason, keep it in the
    # quarantine prefix when the route says so, and tell the sender.
    REFUSE = "refuse"


@dataclass(frozen=True)
class RouteFacts:
    """What a policy may know about the route the message is on."""

    name: str
    offload_threshold: int
    next_hop_max_size: int


@dataclass(frozen=True)
class ScanVerdict:
    """What the malware scanner (clamd) said about a part, as the worker got it."""

    status: str  # "clean", "infected", or "error" (scanner down or refused the part)
    signature: str = ""  # the signature name when infected, else ""
    detail: str = ""  # the scanner's error when status is "error"


@dataclass(frozen=True)
class PartFacts:
    """What a policy may know about one leaf part."""

    path: str
    declared_type: str
    filename: str
    decoded_size: int
    is_body: bool
    disposition: str
    route: RouteFacts
    # The type libmagic found in the decoded first bytes (gateway/mime/sniff.py).
    detected_type: str | None = None
    content_id: str | None = None
    # The first decoded bytes (up to 8 KiB), for policies that look inside.
    head: bytes = b""
    # A file the sender attached, as opposed to message text: it has a
    # filename, or an attachment disposition, or a type that is not text,
    # multipart or message.  Type policies only judge files.
    is_attachment: bool = False
    # The HTML body refers to this part by cid: (an inline image).
    inline: bool = False
    # An Outlook TNEF (winmail.dat) still packed: tnefparse could not read
    # it, or the route does not unpack; its files cannot be checked, and
    # allowed_types refuses it.
    packed_tnef: bool = False
    # Set when the route scans for malware; None when it does not.
    scan: ScanVerdict | None = None
    # The second part of a multipart/signed whose protocol parameter is this
    # part's declared type (set by the worker from the structure, never from
    # the part's own headers): the signature of signed mail, which
    # allowed_types lets pass when its bytes fit its type.
    signature_of_signed: bool = False


def message_text(part: PartFacts) -> bool:
    """Whether a part is message text rather than a file: not an attachment
    (no filename, no attachment disposition), declared as the text or HTML
    a mail client shows as the message, text by its bytes too (not a
    program, not active content, not RTF, except HTML declared as HTML,
    which is what HTML message text is); HTML only while small enough to
    stay in the message (a larger one is offloaded as a file named .html,
    so it is judged as one).
    The returned headers of a delivery report (text/rfc822-headers) are
    message text too.  A part declared as anything else (message/*,
    multipart/*, text/rtf) is judged as a file, whatever it is."""
    declared = part.declared_type
    if part.is_attachment or declared not in ("text/plain", HTML, "text/rfc822-headers"):
        return False
    if declared == HTML and part.decoded_size > part.route.offload_threshold:
        # Offloaded, it becomes a file named attachment.html that a browser opens.
        return False
    detected = part.detected_type or ""
    if detected == HTML:
        return declared == HTML
    if detected == "application/x-empty":
        return True
    if detected == "message/rfc822":
        # The returned headers of a delivery report look like mail to libmagic.
        return declared == "text/rfc822-headers"
    return detected.startswith("text/") and detected not in ACTIVE_TYPES | EXECUTABLE_TYPES | {"text/rtf"}


def M_(message: str) -> str:
    """Mark ``message`` as a text of the mail catalogue (gateway/locale/*/
    LC_MESSAGES/mail.po): returned unchanged; the gateway translates it when
    it writes the mail, in the route's language."""
    return message


class TypeName(str):
    """A field of a reason that is a MIME type, shown in words ("a PDF
    document"), translated with the rest of the reason."""


class Phrase(str):
    """A field of a reason that is an English phrase of the gateway's own
    (a message id of the mail catalogue when it has one)."""


def _english(value: Any) -> str:
    if isinstance(value, TypeName):
        return describe(value)
    if isinstance(value, tuple):
        words = [str(v) for v in value]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return str(value)


def explained(message: str, **fields: Any) -> dict[str, Any]:
    """A reason as keyword arguments of ``Decision``: the English text (for
    logs, audit and result.json) and the message id with its fields, which
    the gateway translates for the mail.  A field is a plain value, a
    ``TypeName``, a ``Phrase``, or a tuple of phrases ("a, b and c")."""
    return {"reason": message.format(**{k: _english(v) for k, v in fields.items()}),
            "message": message, "fields": fields}


@dataclass(frozen=True)
class Decision:
    """A policy's verdict on a part, with the reason recorded in logs."""

    action: Action
    policy: str
    reason: str
    # Shown to the agent in place of a replaced part (a mail catalogue message id).
    notice: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # The reason as a mail catalogue message id and its fields (``explained``),
    # for the notices and the automatic reply; "" when only ``reason`` says it.
    message: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    """A decision about one part; pure, no I/O."""

    name: str

    def decide(self, part: PartFacts) -> Decision | None:
        """A decision, or None to let the next policy decide."""


class PolicyConfigError(ValueError):
    """A policy's settings in the config are invalid."""


class Settings(BaseModel):
    """Base of each policy's settings model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def known_policies() -> dict[str, type[Any]]:
    """Policy name -> class, for the config's ``policies`` lists."""
    from policies.allowed_types import RefuseUnlistedTypes
    from policies.empty import ReplaceEmptyAttachments
    from policies.executables import RefuseExecutables
    from policies.malware import RefuseMalware
    from policies.size_threshold import OffloadLargeParts
    from policies.spoofing import RefuseSpoofedTypes

    return {cls.name: cls for cls in (ReplaceEmptyAttachments, RefuseMalware, RefuseExecutables, RefuseSpoofedTypes,
                                      RefuseUnlistedTypes, OffloadLargeParts)}


# The policies a route runs when its config lists none: content checks first
# (an empty, infected, executable, spoofed or unlisted file never reaches
# storage as an attachment), then the size threshold.  refuse_malware is
# left out because it needs a [clamd] table.
DEFAULT_POLICIES = ["empty_attachment", "refuse_executables", "refuse_spoofed", "allowed_types", "offload_large"]


def build(name: str, settings: dict[str, Any]) -> Policy:
    """Instantiate the named policy with its validated settings."""
    cls = known_policies()[name]
    try:
        parsed = cls.Settings.model_validate(settings)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            raise PolicyConfigError(f"{loc}: unknown key (policy {name})") from None
        raise PolicyConfigError(f"{loc}: {first.get('input')!r}: {msg} (policy {name})") from None
    return cls(parsed)


def decide(policies: list[Policy], part: PartFacts) -> Decision:
    """Run the policies in order; the first decision wins, else keep."""
    for policy in policies:
        decision = policy.decide(part)
        if decision is not None:
            return decision
    return Decision(Action.KEEP, "default", "no policy decided")
