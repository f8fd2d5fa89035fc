"""Refuse files whose name or declared type disagrees with their bytes.

A PNG declared as ``application/pdf``, or a ZIP archive named
``contract.docx``, is either broken or a disguise; either way the agent
must not open it believing the label.  Only specific claims are checked:
a generic declaration (``application/octet-stream``) or an extension that
is not in the table says nothing about the bytes.  Every part but message
text (``policies.message_text``) is checked, attachment or not: a part
without a filename is checked against the name the worker will give it.
"""
from __future__ import annotations

from policies import M_, Action, Decision, PartFacts, Settings as PolicySettings, TypeName, explained, message_text
from policies.filetypes import DECLARED_TYPES, EXTENSION_TYPES, name_extension


class RefuseSpoofedTypes:
    """Decide REFUSE for an attachment whose extension or declared type does
    not match its detected type."""

    name = "refuse_spoofed"

    class Settings(PolicySettings):
        """No settings."""

    def __init__(self, settings: RefuseSpoofedTypes.Settings) -> None:
        self.settings = settings

    def decide(self, part: PartFacts) -> Decision | None:
        # An empty part has no type to contradict (empty_attachment and
        # allowed_types judge it); one of unknown type is allowed_types' to refuse.
        if part.is_body or message_text(part) or part.detected_type is None or part.decoded_size == 0:
            return None
        detected = part.detected_type
        details = {"declared_type": part.declared_type, "detected_type": detected}
        ext = name_extension(part.filename, part.declared_type)
        expected = EXTENSION_TYPES.get(ext)
        if expected is not None and detected not in expected:
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("its name ends in .{extension} but it is {type}"), extension=ext,
                                        type=TypeName(detected)), details=details)
        expected = DECLARED_TYPES.get(part.declared_type)
        if expected is not None and detected not in expected:
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("it was sent as {declared} ({declared_type}) but it is {type}"),
                                        declared=TypeName(part.declared_type), declared_type=part.declared_type,
                                        type=TypeName(detected)), details=details)
        return None
