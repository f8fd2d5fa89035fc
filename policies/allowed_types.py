"""Refuse attachments whose detected type is not on the route's allow-list.

The default list is what customers send a contact centre: PDF, JPEG, PNG,
GIF, TIFF, HEIC, plain text, CSV, DOCX, XLSX, PPTX, by detected type (an
Office Open XML file is recognised from the ZIP's entries, not its name).
Message text and attached messages (``message/*``, e.g. a forwarded email
or a delivery report) are not files and are left alone, and so are the
signatures of signed mail (OpenPGP, S/MIME) whose bytes are what they
claim: removing one would break the signature of the mail it signs.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from policies import Action, Decision, PartFacts, Settings
from policies.filetypes import DEFAULT_ALLOWED, SIGNATURE_TYPES, describe


class RefuseUnlistedTypes:
    """Decide REFUSE for each attachment whose detected type is not allowed."""

    name = "allowed_types"

    class Settings(Settings):
        """The allow-list."""

        # Detected MIME types that pass; everything else is refused.
        allow: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED))
        # Let the signature part of signed mail pass when its bytes match
        # its declared signature type.
        allow_signatures: bool = True

        @field_validator("allow")
        @classmethod
        def _types(cls, v: list[str]) -> list[str]:
            for t in v:
                if "/" not in t or " " in t.strip():
                    raise ValueError(f"{t!r}: expected a MIME type such as \"application/pdf\"")
            return [t.strip().lower() for t in v]

    def __init__(self, settings: "RefuseUnlistedTypes.Settings") -> None:
        self.settings = settings
        self.allow = set(settings.allow)

    def decide(self, part: PartFacts) -> Decision | None:
        if part.is_body or not part.is_attachment or part.detected_type is None or part.packed_tnef:
            return None
        if part.declared_type.startswith(("message/", "multipart/")):
            return None
        if part.detected_type in self.allow:
            return None
        if self.settings.allow_signatures and part.detected_type in SIGNATURE_TYPES.get(part.declared_type, ()):
            return None
        return Decision(Action.REFUSE, self.name,
                        f"it is {describe(part.detected_type)}, a type this address does not accept",
                        details={"declared_type": part.declared_type, "detected_type": part.detected_type})
