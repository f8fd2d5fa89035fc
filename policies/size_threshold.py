"""Offload attachments above the route's threshold.

The reason the product exists: the contact-centre platform should never see
a large blob.  A part is an attachment when it is not the message's text or
HTML body; its size is the decoded size, so base64 overhead never pushes a
file over (or hides it under) the threshold.  A part exactly at the threshold
stays; one byte over is offloaded.
"""
from __future__ import annotations

from policies import Action, Decision, PartFacts, Settings as PolicySettings


class OffloadLargeParts:
    """Decide OFFLOAD for each non-body part larger than the threshold."""

    name = "offload_large"

    class Settings(PolicySettings):
        """No settings: the threshold is the route's ``offload_threshold``."""

    def __init__(self, settings: OffloadLargeParts.Settings) -> None:
        self.settings = settings

    def decide(self, part: PartFacts) -> Decision | None:
        if part.is_body or part.decoded_size <= part.route.offload_threshold:
            return None
        return Decision(
            Action.OFFLOAD,
            self.name,
            f"decoded size {part.decoded_size} > threshold {part.route.offload_threshold}",
        )
