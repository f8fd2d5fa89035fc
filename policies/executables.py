"""Refuse programs and scripts, whatever they are called.

The detected type decides (a Windows program renamed ``invoice.pdf`` is
still a Windows program), and so does the declared type (a client names a
nameless file by it), and an extension that a computer runs
when the file is opened (a script is plain text to libmagic, so its bytes
alone cannot tell), or one that a browser opens as active content (a web
page, an SVG image, a web archive: they run scripts).  Every part but the
message's body is checked, attachment or not; a part without a filename by
the name the worker will give it.  Runs before the spoofing and allow-list checks so the
reason the customer reads is the most serious one.
"""
from __future__ import annotations

from pydantic import Field

from policies import M_, Action, Decision, PartFacts, Settings as PolicySettings, TypeName, explained, message_text
from policies.filetypes import ACTIVE_EXTENSIONS, EXECUTABLE_EXTENSIONS, EXECUTABLE_TYPES, name_extension


class RefuseExecutables:
    """Decide REFUSE for each part detected as, or named as, a program or script."""

    name = "refuse_executables"

    class Settings(PolicySettings):
        """Types and extensions added to the built-in lists."""

        # Detected MIME types refused in addition to the built-in programs and scripts.
        extra_types: list[str] = Field(default_factory=list)
        # Extensions (without the dot) refused in addition to the built-in ones.
        extra_extensions: list[str] = Field(default_factory=list)

    def __init__(self, settings: RefuseExecutables.Settings) -> None:
        self.settings = settings
        self.types = EXECUTABLE_TYPES | {t.lower() for t in settings.extra_types}
        self.extensions = EXECUTABLE_EXTENSIONS | {e.lower().lstrip(".") for e in settings.extra_extensions}

    def decide(self, part: PartFacts) -> Decision | None:
        if part.is_body:
            return None
        details = {"declared_type": part.declared_type, "detected_type": part.detected_type}
        if part.detected_type in self.types:
            return self._refused_type(part.detected_type, details)
        ext = name_extension(part.filename, part.declared_type)
        if ext in self.extensions:
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("files ending in .{extension} are programs or scripts, which are not "
                                           "accepted"), extension=ext), details=details)
        # HTML message text is named .html by the worker when it has no
        # name; it stays message text (policies.message_text).
        if ext in ACTIVE_EXTENSIONS and not message_text(part):
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("files ending in .{extension} are web content that can run scripts, "
                                           "which is not accepted"), extension=ext), details=details)
        # The declared type too: a client names a nameless (or extensionless)
        # file by it, so text declared as application/javascript is saved
        # and opened as a .js.
        if part.declared_type in self.types:
            return self._refused_type(part.declared_type, details)
        return None

    def _refused_type(self, kind: str, details: dict[str, str | None]) -> Decision:
        return Decision(Action.REFUSE, self.name,
                        **explained(M_("it is {type}, and programs and scripts are not accepted"),
                                    type=TypeName(kind)), details=details)
