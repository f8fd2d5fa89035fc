"""Refuse files whose detected type is not on the route's allow-list, or
whose name is not one their type may have.

The default list is what customers send a contact centre: PDF, JPEG, PNG,
GIF, TIFF, HEIC, plain text, CSV, DOCX, XLSX, PPTX, by detected type (an
Office Open XML file is recognised from its archive's central directory,
so a Word document with macros is a DOCM, not a DOCX, whatever its name).
Each allowed type also has the extensions a file of that type may be named
with (``filetypes.DEFAULT_EXTENSIONS``, or the table form of ``allow``):
the extension decides which program opens the file, so plain text named
``.hta`` or ``.url`` is refused however harmless its bytes look.

A part is judged by what it is, never exempted by what it claims:

* message text (``policies.message_text``: no filename, declared text,
  text by its bytes, staying in the message) is not a file;
* the signature of signed mail passes only when the worker found it as the
  second part of a multipart/signed whose protocol is its type
  (``signature_of_signed``) and its bytes fit that type: removing it would
  break the signature;
* an Outlook TNEF (winmail.dat) that was not unpacked is refused, as the
  files inside it could not be checked;
* an archive the examination could not read (encrypted, damaged, a zip
  bomb), and one it does not open at all (7-Zip, RAR, gzip, tar, CAB, ...:
  ``filetypes.UNOPENED_ARCHIVES``), is refused whatever the list says:
  the files inside were never examined;
* an empty part has nothing to judge (``empty_attachment`` replaces an
  empty file).

A part with no filename, or a name without an extension, is judged by
the extension it is named and opened by (after its declared type,
``filetypes.DEFAULT_NAME_EXTENSIONS``: plain text declared
``application/msword`` opens in Word); with neither, by its type alone.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from policies import M_, Action, Decision, PartFacts, Settings as PolicySettings, TypeName, explained, message_text
from policies.filetypes import (
    DEFAULT_ALLOWED,
    DEFAULT_EXTENSIONS,
    SIGNATURE_TYPES,
    UNEXAMINED_ARCHIVE,
    UNOPENED_ARCHIVES,
    name_extension,
)

_EXTENSION = re.compile(r"[a-z0-9][a-z0-9_+-]{0,31}")


def _mime(t: Any) -> str:
    if not isinstance(t, str) or "/" not in t or " " in t.strip():
        raise ValueError(f"{t!r}: expected a MIME type such as \"application/pdf\"")
    return t.strip().lower()


def _default_allow() -> dict[str, tuple[str, ...]]:
    return {t: DEFAULT_EXTENSIONS[t] for t in DEFAULT_ALLOWED}


class RefuseUnlistedTypes:
    """Decide REFUSE for each file whose detected type is not allowed, or
    whose extension is not one of its type's."""

    name = "allowed_types"

    class Settings(PolicySettings):
        """The allow-list."""

        # Detected MIME types that pass; everything else is refused.  Either
        # a list of types, each with its default extensions, or a table of
        # type = [extensions], e.g. { "text/plain" = ["txt", "log"] }.
        allow: dict[str, tuple[str, ...]] = Field(default_factory=_default_allow)
        # Let the signature part of signed mail pass when its bytes match
        # its declared signature type.
        allow_signatures: bool = True

        @field_validator("allow", mode="before")
        @classmethod
        def _types(cls, v: Any) -> dict[str, tuple[str, ...]]:
            if isinstance(v, (list, tuple)):
                out: dict[str, tuple[str, ...]] = {}
                for t in v:
                    t = _mime(t)
                    if t not in DEFAULT_EXTENSIONS:
                        raise ValueError(f"{t!r}: no default extensions are known for this type; give them in "
                                         f"the table form, allow = {{ \"{t}\" = [\"ext\", ...] }}")
                    out[t] = DEFAULT_EXTENSIONS[t]
                return out
            if isinstance(v, dict):
                out = {}
                for t, exts in v.items():
                    t = _mime(t)
                    if not isinstance(exts, (list, tuple)) or not exts:
                        raise ValueError(f"{t!r}: expected a list of extensions such as [\"pdf\"], got {exts!r}")
                    clean = []
                    for e in exts:
                        e2 = e.strip().lstrip(".").lower() if isinstance(e, str) else e
                        if not isinstance(e2, str) or not _EXTENSION.fullmatch(e2):
                            raise ValueError(f"{t!r}: {e!r}: expected an extension such as \"pdf\"")
                        clean.append(e2)
                    out[t] = tuple(clean)
                return out
            raise ValueError("expected a list of MIME types, or a table of MIME type = [extensions]")

    def __init__(self, settings: RefuseUnlistedTypes.Settings) -> None:
        self.settings = settings
        self.allow = dict(settings.allow)

    def decide(self, part: PartFacts) -> Decision | None:
        if part.is_body or message_text(part):
            return None
        # An empty part carries nothing to judge (the leaf of a multipart
        # without parts, say); an empty file is empty_attachment's to replace.
        if part.decoded_size == 0:
            return None
        detected = part.detected_type
        details = {"declared_type": part.declared_type, "detected_type": detected}
        if part.signature_of_signed and self.settings.allow_signatures \
                and detected in SIGNATURE_TYPES.get(part.declared_type, ()):
            return None
        if part.packed_tnef:
            return Decision(Action.REFUSE, self.name, **explained(M_(
                "it is an Outlook TNEF file (winmail.dat) that could not be unpacked, so the files inside it "
                "could not be checked")), details=details)
        if detected is None:
            return Decision(Action.REFUSE, self.name, **explained(M_("its type could not be detected")),
                            details=details)
        if detected == UNEXAMINED_ARCHIVE or detected in UNOPENED_ARCHIVES:
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("it could not be examined: it is {type}"), type=TypeName(detected)),
                            details=details)
        extensions = self.allow.get(detected)
        if extensions is None:
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("it is {type}, a type this address does not accept"),
                                        type=TypeName(detected)), details=details)
        ext = name_extension(part.filename, part.declared_type)
        if ext and ext not in extensions:
            names = ", ".join(f".{e}" for e in extensions)
            return Decision(Action.REFUSE, self.name,
                            **explained(M_("its name ends in .{extension}, but it is {type}, accepted only as "
                                           "{extensions}"), extension=ext, type=TypeName(detected), extensions=names),
                            details={**details, "extension": ext})
        return None
