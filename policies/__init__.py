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


class Action(enum.Enum):
    """What the worker does with a part."""

    KEEP = "keep"  # forward the part unchanged
    OFFLOAD = "offload"  # store it, replace it with a notice, add a link
    REPLACE = "replace"  # replace it with a notice, store nothing


@dataclass(frozen=True)
class RouteFacts:
    """What a policy may know about the route the message is on."""

    name: str
    offload_threshold: int
    next_hop_max_size: int


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
    detected_type: str | None = None
    content_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """A policy's verdict on a part, with the reason recorded in logs."""

    action: Action
    policy: str
    reason: str
    # Shown to the agent in place of a replaced part.
    notice: str = ""
    details: dict[str, Any] = field(default_factory=dict)


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


def known_policies() -> dict[str, type]:
    """Policy name -> class, for the config's ``policies`` lists."""
    from policies.size_threshold import OffloadLargeParts

    return {cls.name: cls for cls in (OffloadLargeParts,)}


def build(name: str, settings: dict[str, Any]) -> Policy:
    """Instantiate the named policy with its validated settings."""
    cls = known_policies()[name]
    try:
        parsed = cls.Settings.model_validate(settings)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise PolicyConfigError(f"{name}.{loc}: {first['msg']}") from None
    return cls(parsed)


def decide(policies: list[Policy], part: PartFacts) -> Decision:
    """Run the policies in order; the first decision wins, else keep."""
    for policy in policies:
        decision = policy.decide(part)
        if decision is not None:
            return decision
    return Decision(Action.KEEP, "default", "no policy decided")
