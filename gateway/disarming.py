"""Disarm as a route applies it, for mail and uploads alike
(gateway/pipeline/disarm.py for a message's parts, gateway/uploads.py for
files that came over HTTP): which files are looked at and how
(``disarm.pdf``, ``disarm.office``), the budget the route's settings give
the child process, and what a file's disarm result means (kept as it is,
replaced by the cleaned file, or refused, with the same reasons).

The disarming itself is gateway/disarm/ (in its child process: the callers
run it with ``disarm.Session`` in a thread); keeping the original in
quarantine, storing the cleaned file and the notices are the callers'.
"""
from __future__ import annotations

import asyncio
from typing import Any

import policies
from gateway import disarm, mailtext
from gateway.config import DisarmSettings
from gateway.mime import container
from gateway.mime.decode import HEAD
from policies import filetypes

# Policies whose refusal of an Office file is about what disarm removes (a
# macro-enabled or remote-content type): disarm runs, and the cleaned file
# is judged again.
ABOUT_ACTIVE_CONTENT = frozenset({"allowed_types", "refuse_executables", "refuse_spoofed"})
ACTIVE_TYPES = filetypes.MACRO_TYPES | {filetypes.OOXML_REMOTE}


def budget(settings: DisarmSettings) -> disarm.Budget:
    """The budget of one file, from the route's ``disarm`` settings."""
    return disarm.Budget(seconds=float(settings.seconds), memory=int(settings.memory),
                         keep_web_links=settings.keep_web_links)


def looked_at(detected_type: str | None, decision: policies.Decision) -> str | None:
    """"pdf" or "office" for a file disarm looks at: detected as one of
    ``disarm.TYPES`` and allowed by the policies, or refused only for being
    macro-enabled or remote-loading (what disarm removes); else None."""
    if detected_type not in disarm.TYPES:
        return None
    if decision.action is policies.Action.REFUSE and not (
            detected_type in ACTIVE_TYPES and decision.policy in ABOUT_ACTIVE_CONTENT):
        return None
    if decision.action is policies.Action.REPLACE:
        return None
    return "pdf" if detected_type == disarm.PDF else "office"


def mode(settings: DisarmSettings, kind: str) -> str:
    """The route's mode for a kind of file: "disarm", "refuse" or "allow"."""
    return settings.pdf if kind == "pdf" else settings.office


def refusal(reason: dict[str, Any]) -> policies.Decision:
    """disarm's refusal of a file, with a reason from ``policies.explained``."""
    return policies.Decision(policies.Action.REFUSE, "disarm", **reason)


def too_large(settings: DisarmSettings, size: int) -> policies.Decision | None:
    """The refusal of a file over ``disarm.max_size`` (it cannot be
    examined: disarm holds it whole), None for one that fits."""
    if size <= settings.max_size:
        return None
    return refusal(policies.explained(mailtext.DISARM_TOO_LARGE, size=size, limit=settings.max_size))


async def verdict(result: disarm.DisarmResult, mode: str, detected_type: str | None) -> policies.Decision | None:
    """What a file's disarm result means in ``mode`` ("disarm" or
    "refuse"): a refusal (it failed; it has active content and the route
    refuses such files; its cleaned bytes are not what the answer says),
    or None: a clean file stays as it is, a disarmed one (``result.data``)
    takes its place.  The cleaned bytes are typed here, off the event loop
    (libmagic and the package examination): the child may have been taken
    over by the file it read, so what it hands back is judged by its own
    bytes before it is put anywhere."""
    if result.status == "clean":
        return None
    if result.status == "failed":
        return refusal(policies.explained(mailtext.DISARM_FAILED, detail=result.reason))
    if mode == "refuse":
        removed = tuple(policies.Phrase(w) for w in result.removed)
        return refusal(policies.explained(
            mailtext.DISARM_ACTIVE, summary=removed or (policies.Phrase(mailtext.ACTIVE_CONTENT),)))
    assert result.data is not None
    expected = result.new_type or detected_type
    found = await asyncio.to_thread(container.detect_chunks, result.data[:HEAD], [result.data])
    if found != expected:
        return refusal(policies.explained(mailtext.DISARM_FAILED,
                                          detail=f"the disarmed file is {found}, not {expected}"))
    return None


def needs_check(settings: DisarmSettings, detected_type: str | None, decision: policies.Decision) -> bool:
    """Whether a file disarm cannot replace where it stands (uuencoded in a
    text, taken out of a document) must be checked before it is kept: a
    PDF or Office file that no policy refused, whose kind the route does
    not ``allow``."""
    kind = looked_at(detected_type, decision)
    return kind is not None and decision.action is not policies.Action.REFUSE and mode(settings, kind) != "allow"


def _check_blocking(settings: DisarmSettings, files: list[tuple[bytes, str]]) -> list[disarm.DisarmResult]:
    with disarm.Session(budget(settings)) as session:
        return session.disarm_all(files)


async def check_in_place(settings: DisarmSettings, files: list[tuple[bytes, str]]) -> list[policies.Decision | None]:
    """For each ``(data, detected type)`` that ``needs_check``: None when it
    is clean (it may stay as it is), else its refusal: it has active
    content (it cannot be replaced by a cleaned copy where it stands), it
    could not be checked, or it is over ``max_size``.  One child for all."""
    out: list[policies.Decision | None] = [too_large(settings, len(data)) for data, _ in files]
    todo = [i for i, refused in enumerate(out) if refused is None]
    if todo:
        results = await asyncio.to_thread(_check_blocking, settings, [files[i] for i in todo])
        for i, result in zip(todo, results, strict=True):
            out[i] = await verdict(result, "refuse", files[i][1])
    return out


def cleaned_name(original: str, result: disarm.DisarmResult) -> str:
    """The cleaned file's name: the original's, with the extension of its
    new type when disarming changed it (DOCM becomes DOCX)."""
    if not result.new_extension:
        return original
    stem, dot, _ = original.rpartition(".")
    return f"{stem if dot else original}.{result.new_extension}"
