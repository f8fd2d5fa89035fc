"""What a route takes, in words a customer knows: "PDF, photos (JPEG, PNG,
HEIC), Word (DOCX)", and the extensions the upload page checks before a
file is sent.  Pure: read from the route's ``allowed_types`` settings.

The labels are English message ids of the ``pages`` catalogue, marked with
``N_`` so Babel's extractor finds them; the page translates them.
"""
from __future__ import annotations

from dataclasses import dataclass

from gateway.config import RouteSettings
from policies import build
from policies.allowed_types import RefuseUnlistedTypes
from policies.filetypes import DOCX, DOTX, POTX, PPSX, PPTX, XLSX, XLTX


def N_(message: str) -> str:  # noqa: N802 - gettext's marker name, which extractors look for
    """Mark ``message`` for the catalogue; translated where it is shown."""
    return message


# Detected type -> (group label, the format's name as a customer reads it).
# A group label with %(formats)s lists the group's formats after it.
_GROUPS: dict[str, tuple[str, str]] = {
    "application/pdf": (N_("PDF"), ""),
    "image/jpeg": (N_("photos (%(formats)s)"), "JPEG"),
    "image/png": (N_("photos (%(formats)s)"), "PNG"),
    "image/gif": (N_("photos (%(formats)s)"), "GIF"),
    "image/tiff": (N_("photos (%(formats)s)"), "TIFF"),
    "image/heic": (N_("photos (%(formats)s)"), "HEIC"),
    "image/heif": (N_("photos (%(formats)s)"), "HEIC"),
    "image/bmp": (N_("photos (%(formats)s)"), "BMP"),
    "image/webp": (N_("photos (%(formats)s)"), "WEBP"),
    "text/plain": (N_("text (%(formats)s)"), "TXT"),
    "text/csv": (N_("text (%(formats)s)"), "CSV"),
    DOCX: (N_("Word (%(formats)s)"), "DOCX"),
    DOTX: (N_("Word (%(formats)s)"), "DOTX"),
    XLSX: (N_("Excel (%(formats)s)"), "XLSX"),
    XLTX: (N_("Excel (%(formats)s)"), "XLTX"),
    PPTX: (N_("PowerPoint (%(formats)s)"), "PPTX"),
    POTX: (N_("PowerPoint (%(formats)s)"), "POTX"),
    PPSX: (N_("PowerPoint (%(formats)s)"), "PPSX"),
}
_OTHER = N_("other files (%(formats)s)")


@dataclass(frozen=True)
class Group:
    """One kind of file the page names: a label (a message id) and formats."""

    label: str
    formats: str


@dataclass(frozen=True)
class Accepted:
    """What a route takes: the groups to name and the extensions to allow
    (both empty when the route has no allow-list: any type but programs)."""

    groups: tuple[Group, ...]
    extensions: tuple[str, ...]

    @property
    def listed(self) -> bool:
        """Whether the route names the types it takes."""
        return bool(self.groups)


def accepted(route: RouteSettings) -> Accepted:
    """The route's allow-list as groups in words and the extensions it allows."""
    ref = next((p for p in route.policies if p.name == RefuseUnlistedTypes.name), None)
    if ref is None:
        return Accepted((), ())
    policy = build(ref.name, ref.settings)
    assert isinstance(policy, RefuseUnlistedTypes)
    order: list[str] = []
    formats: dict[str, list[str]] = {}
    extensions: list[str] = []
    for ctype, exts in policy.allow.items():
        label, name = _GROUPS.get(ctype, (_OTHER, ""))
        name = name or (exts[0].upper() if label == _OTHER else "")
        if label not in formats:
            order.append(label)
            formats[label] = []
        if name and name not in formats[label]:
            formats[label].append(name)
        extensions += [e for e in exts if e not in extensions]
    return Accepted(tuple(Group(label, ", ".join(formats[label])) for label in order), tuple(extensions))
