"""The records one message's processing carries from step to step.

``MessageJob`` is the message as the pipeline sees it: its envelope and
route, the file being read, the parsed tree, and what each step decided or
did, in typed fields (no tuples passed around).  ``PartOutcome`` is one
examined part with the facts the policies saw and their decision.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import policies
from gateway.config import RouteSettings
from gateway.mime.decode import Measure
from gateway.mime.parse import Part
from gateway.mime.rewrite import Replacement, Segment
from gateway.mime.source import Source
from gateway.spool.envelope import Envelope


class Budget:
    """The CPU time one message may take to examine (worker.max_cpu_seconds):
    the parse, decoding and type detection, summed across threads."""

    def __init__(self, limit: float, spent: float = 0.0) -> None:
        self.limit = limit
        self.spent = spent

    def spend(self, seconds: float) -> None:
        """Count ``seconds`` of CPU against the budget."""
        self.spent += seconds

    @property
    def exhausted(self) -> bool:
        """True once the message has had its time."""
        return self.spent > self.limit


@dataclass
class PartOutcome:
    """One examined part: what the policies knew and what they decided."""

    part: Part
    decision: policies.Decision
    measure: Measure
    facts: policies.PartFacts
    # The bytes to store or forward instead of the part's own: the disarmed
    # file, or a file disarm took out of it (``extracted``: it stands beside
    # the part, which keeps its own outcome).
    data: bytes | None = None
    extracted: bool = False
    # What disarm removed, in words ("scripts and 1 embedded file removed").
    cleaned: str = ""
    # The same, in the route's language (for the notice).
    cleaned_text: str = ""


@dataclass
class Offloaded:
    """One part moved to storage."""

    part: Part
    filename: str
    key: str
    size: int
    sha256: str
    url: str
    object_id: str = ""
    expires: int = 0


@dataclass
class MessageJob:
    """One message on its way through the pipeline."""

    envelope: Envelope
    route: RouteSettings
    # The message file as received (the spool's, or the milter's copy).
    original: Path
    # Where a work file of this message goes (the unpacked TNEF, the reply).
    work: Callable[[str], Path]
    log: Any
    budget: Budget
    # Verify and seal: the relay's (the milter's MTA authenticates and signs).
    authenticate: bool = True
    started: float = field(default_factory=time.monotonic)
    # The file the steps read and the segments refer to: ``original``, or
    # the message with its TNEF parts unpacked.
    src: Source | None = None
    path: Path | None = None
    root: Part | None = None
    unpacked: bool = False
    # Set when the message could not be examined at all and was quarantined
    # whole: the steps that look at parts have nothing to do.
    finished: bool = False
    # Who the message is about and what it says about itself.
    customer: str = "unknown"
    customer_believed: bool = True
    message_id: str = ""
    text_part: Part | None = None
    html_part: Part | None = None
    cids: set[str] = field(default_factory=set)
    # What the steps decided and did.
    auth: Any = None  # gateway.authn.verify.Verification, when verified
    outcomes: list[PartOutcome] = field(default_factory=list)
    offloaded: list[Offloaded] = field(default_factory=list)
    failed: list[Part] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    # Why each of ``refused`` was refused, in the route's language (the reply).
    refused_reasons: list[str] = field(default_factory=list)
    unstored: list[str] = field(default_factory=list)
    cuts: dict[int, list[tuple[int, int, bytes | str]]] = field(default_factory=dict)
    # The output: segments of ``path`` and new bytes.
    segments: list[Segment] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    changed: bool = False

    @property
    def replaced(self) -> int:
        """Parts a policy replaced by a notice (empty files)."""
        return sum(o.decision.action is policies.Action.REPLACE for o in self.outcomes)
