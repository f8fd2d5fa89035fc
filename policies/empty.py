"""Replace empty attachments with a short notice.

A zero-byte file is what a broken MIME boundary or a failed upload in the
sender's mail client leaves behind; forwarding it only puzzles the agent.
Runs first: an empty part has no type to detect and nothing to scan.
"""
from __future__ import annotations

from policies import M_, Action, Decision, PartFacts, Settings as PolicySettings, explained

EMPTY_NOTICE = M_("Attachment was empty and could not be processed.")


class ReplaceEmptyAttachments:
    """Decide REPLACE, with the fixed notice, for each empty attachment."""

    name = "empty_attachment"

    class Settings(PolicySettings):
        """No settings."""

    def __init__(self, settings: ReplaceEmptyAttachments.Settings) -> None:
        self.settings = settings

    def decide(self, part: PartFacts) -> Decision | None:
        if part.is_body or not part.is_attachment or part.decoded_size != 0:
            return None
        return Decision(Action.REPLACE, self.name, **explained(M_("the attachment is empty (0 bytes)")),
                        notice=EMPTY_NOTICE)
