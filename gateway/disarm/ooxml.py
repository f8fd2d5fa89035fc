"""Disarm an Office Open XML package (Word, Excel, PowerPoint) with the
standard zipfile, lxml, and olefile/oletools for embedded OLE objects.

What goes, found before anything is rewritten:

* macros: ``vbaProject.bin`` (anywhere), its ``vbaData.xml`` and VBA
  signatures, the relationships to them; the main part's content type and
  any macro content type become the macro-free ones (DOCM -> DOCX, XLSM ->
  XLSX, PPTM -> PPTX, templates and shows likewise), and the caller is
  told the new type and extension.  Excel 4 macro sheets and add-ins
  (XLAM, PPAM: nothing but macros) cannot be taken out safely: "failed";
* relationships with ``TargetMode="External"`` other than hyperlinks: a
  remote template (``attachedTemplate``), linked OLE objects (the Follina
  shape), frames, sub-documents, remote images and media; the element that
  names the relationship's id goes too (an ``r:link`` attribute alone), so
  nothing is left pointing at a missing relationship;
* Excel external links (``xl/externalLinks``: other workbooks and DDE
  links) with their ``externalReference`` in the workbook;
* DDE and DDEAUTO fields in Word, in any part wherever it lies (``w:fldSimple/@w:instr`` and the
  ``w:instrText`` of complex fields, joined across runs; a field whose
  command is itself built by a nested field counts too): the instruction is
  emptied, the shown result stays;
* embedded OLE objects and packages (``oleObject``/``package``
  relationships; only a chart's own data, a workbook with nothing to
  disarm in a part that is a chart by its content type, stays): the part
  goes, and the file is returned
  (an OLE Package's ``\\x01Ole10Native`` stream gives the packaged file's
  name and bytes, read with olefile and oletools); ActiveX controls go;
* PowerPoint click or hover actions that start a program or a macro
  (``ppaction://program``, ``ppaction://macro``);
* links that open a file rather than a web page (hyperlink relationships
  and Word ``HYPERLINK`` fields to ``file:``, a ``\\\\host\\share`` path,
  a relative path, ``search-ms:``, ``ms-msdt:``, anything but http, https
  and mailto): in Word the words stay, unlinked.

Parts only reachable through what was removed are removed too.  XML is
parsed without DTDs, entities or network access (a DOCTYPE is refused); a
package that is encrypted, has duplicate names, too many entries or bytes,
or XML that does not parse is "not examinable".  The rewrite keeps every
other entry's bytes, order and compression, and passes only when it reads
back: zipfile's CRC test, every rewritten part parses, every relationship
id a rewritten part names exists, every part has a content type, and the
gateway's own package examination (gateway/mime/container.py) calls it the
macro-free flavour with nothing remote.
"""
from __future__ import annotations

import io
import posixpath
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from urllib.parse import unquote

import olefile
from lxml import etree
from oletools import oleobj

from gateway.disarm import (
    WEB_SCHEMES,
    Budget,
    CannotDisarm,
    CheckFailed,
    Deadline,
    DisarmResult,
    Extracted,
    NotExaminable,
    OverBudget,
    count_words,
    link_scheme,
)
from gateway.mime import container
from policies import filetypes

MACROS = "macros"
REMOTE_TEMPLATE = "a remote template"
LINKED_OBJECTS = "linked objects"
REMOTE_CONTENT = "remote content"
WORKBOOK_LINKS = "links to other workbooks"
DDE_LINKS = "DDE links"
DDE_FIELDS = "DDE fields"
ACTIVEX = "ActiveX controls"
LAUNCH = "program launches"
FILE_LINKS = "links that open other files"
_ORDER = [MACROS, REMOTE_TEMPLATE, LINKED_OBJECTS, REMOTE_CONTENT, WORKBOOK_LINKS, DDE_LINKS, DDE_FIELDS, ACTIVEX,
          LAUNCH, FILE_LINKS]

_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "http://schemas.openxmlformats.org/package/2006/content-types"
_R = {"http://schemas.openxmlformats.org/officeDocument/2006/relationships",
      "http://purl.oclc.org/ooxml/officeDocument/relationships"}
_W = {"http://schemas.openxmlformats.org/wordprocessingml/2006/main",
      "http://purl.oclc.org/ooxml/wordprocessingml/main"}
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"

# Macro-enabled main content type (lower case) -> (macro-free content type, its file type).
_MACRO_FREE = {
    "application/vnd.ms-word.document.macroenabled.main+xml":
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml", filetypes.DOCX),
    "application/vnd.ms-word.template.macroenabledtemplate.main+xml":
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml", filetypes.DOTX),
    "application/vnd.ms-excel.sheet.macroenabled.main+xml":
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml", filetypes.XLSX),
    "application/vnd.ms-excel.template.macroenabled.main+xml":
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.template.main+xml", filetypes.XLTX),
    "application/vnd.ms-powerpoint.presentation.macroenabled.main+xml":
        ("application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml", filetypes.PPTX),
    "application/vnd.ms-powerpoint.template.macroenabled.main+xml":
        ("application/vnd.openxmlformats-officedocument.presentationml.template.main+xml", filetypes.POTX),
    "application/vnd.ms-powerpoint.slideshow.macroenabled.main+xml":
        ("application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml", filetypes.PPSX),
}
_MACRO_PART = re.compile(r"(^|/)vbaproject\.bin$|(^|/)vbadata\.xml$|(^|/)vbaprojectsignature[^/]*\.bin$")
_MACRO_SHEET = re.compile(r"^xl/(intl)?macrosheets/")
_DDE = re.compile(r"\bDDE(AUTO)?\b", re.IGNORECASE)
# Fields that fetch what they show when the document opens or updates: a
# picture or text from a path (an SMB path hands over the agent's Windows
# credentials) or a linked object.  By the field's first word, so a
# HYPERLINK whose tooltip says "link" stays.
_REMOTE_FIELD = re.compile(r"^\s*(INCLUDEPICTURE|INCLUDETEXT|INCLUDE|IMPORT|LINK|DATABASE)\b", re.IGNORECASE)
_PPACTION = re.compile(r"^\s*ppaction://(program|macro)", re.IGNORECASE)
# A HYPERLINK field's words: the field name, then switches (\l, \o and \t
# take an argument) and the target, each quoted or not.
_HYPERLINK_FIELD = re.compile(r"^\s*HYPERLINK\b", re.IGNORECASE)
_FIELD_WORD = re.compile(r'"([^"]*)"|(\S+)')
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Elements that are only containers and may not stay empty once what they held is gone.
_PRUNABLE = {"oleObjects", "controls", "externalReferences", "Choice", "Fallback", "hyperlinks"}
_CONTENT_TYPES = "[content_types].xml"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                           remove_blank_text=False)


def parse_xml(data: bytes, name: str) -> etree._Element:
    """A part's XML root, parsed with no DTD, entities or network."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        raise NotExaminable(f"{name} is not well-formed XML: {e}") from e
    if root is None or root.getroottree().docinfo.doctype:
        raise NotExaminable(f"{name} has a DOCTYPE")
    return root


def _serialise(root: etree._Element) -> bytes:
    standalone = root.getroottree().docinfo.standalone
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=standalone)


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _namespace(tag: object) -> str:
    return etree.QName(tag).namespace or "" if isinstance(tag, str) else ""


def _normal(name: str) -> str:
    return name.replace("\\", "/").lstrip("/").lower()


def _source_of(rels_part: str) -> str:
    """The part a relationships part belongs to ("" for the package)."""
    folder, base = posixpath.split(rels_part)
    return posixpath.join(posixpath.dirname(folder), base[:-len(".rels")]) if folder.endswith("_rels") else ""


def _rels_of(part: str) -> str:
    folder, base = posixpath.split(part)
    return posixpath.join(folder, "_rels", base + ".rels")


@dataclass
class _Rel:
    """One relationship, as its relationships part says it."""

    rels_part: str
    source: str
    id: str
    kind: str  # the type URI's last segment, lower case
    target: str  # resolved part name (normal) when internal, as written when external
    external: bool
    element: etree._Element


@dataclass
class _Plan:
    """What must go, found before anything changes."""

    kinds: set[str] = field(default_factory=set)
    drop_parts: set[str] = field(default_factory=set)
    drop_rels: list[_Rel] = field(default_factory=list)
    extract: list[_Rel] = field(default_factory=list)
    rewrite: dict[str, etree._Element] = field(default_factory=dict)  # part -> edited root
    new_main_type: str | None = None


class _Package:
    """The entries of one package, read lazily and within the budget."""

    def __init__(self, data: bytes, budget: Budget, deadline: Deadline) -> None:
        self.budget = budget
        self.deadline = deadline
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            self.infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as e:
            raise NotExaminable(f"the package does not read: {e}") from e
        if len(self.infos) > budget.max_parts:
            raise OverBudget(f"more than {budget.max_parts} entries")
        if any(i.flag_bits & 0x1 for i in self.infos):
            raise NotExaminable("encrypted entries")
        self.by_name = {_normal(i.filename): i for i in self.infos}
        if len(self.by_name) != len(self.infos):
            raise NotExaminable("duplicate entry names")
        if sum(i.file_size for i in self.infos) > budget.max_unpacked:
            raise OverBudget(f"more than {budget.max_unpacked} bytes unpacked")
        self.cache: dict[str, bytes] = {}

    def read(self, name: str, limit: int | None = None) -> bytes:
        """An entry's bytes (zipfile stops at the size the directory gives)."""
        if name not in self.cache:
            info = self.by_name[name]
            if limit is not None and info.file_size > limit:
                raise OverBudget(f"{name} over {limit} bytes")
            self.deadline.check()
            try:
                self.cache[name] = self.zip.read(info)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError, OSError,
                    zlib.error) as e:
                raise NotExaminable(f"{name} does not read: {e}") from e
        return self.cache[name]

    def xml(self, name: str) -> etree._Element:
        """An entry parsed as XML (a new tree each call)."""
        return parse_xml(self.read(name, self.budget.max_xml_part), name)


def _relationships(pkg: _Package) -> dict[str, list[_Rel]]:
    """Every relationships part's relationships, by relationships part."""
    out: dict[str, list[_Rel]] = {}
    for name in pkg.by_name:
        if not name.endswith(".rels"):
            continue
        root = pkg.xml(name)
        source = _source_of(name)
        base = posixpath.dirname(source)
        rels = []
        for el in root:
            if _local(el.tag) != "Relationship":
                continue
            target = el.get("Target", "")
            external = el.get("TargetMode", "").lower() == "external"
            if not external:
                target = unquote(target)
                target = _normal(target) if target.startswith("/") else _normal(
                    posixpath.normpath(posixpath.join(base, target)))
            kind = el.get("Type", "").rstrip("/").rsplit("/", 1)[-1].lower()
            rels.append(_Rel(name, source, el.get("Id", ""), kind, target, external, el))
        out[name] = rels
    return out


def _reachable(rels: dict[str, list[_Rel]], dropped: list[_Rel] | None = None) -> set[str]:
    """The parts reachable from the package's relationships, not through ``dropped``."""
    dropped_ids = {id(r) for r in dropped or ()}
    seen: set[str] = set()
    todo = [""]
    while todo:
        part = todo.pop()
        for r in rels.get("_rels/.rels" if part == "" else _rels_of(part), []):
            if r.external or id(r) in dropped_ids or r.target in seen:
                continue
            seen.add(r.target)
            todo.append(r.target)
    return seen


class _ContentTypes:
    """``[Content_Types].xml``: defaults by extension and overrides by part."""

    def __init__(self, root: etree._Element) -> None:
        self.root = root
        self.defaults = {el.get("Extension", "").lower(): el for el in root if _local(el.tag) == "Default"}
        self.overrides = {_normal(el.get("PartName", "")): el for el in root if _local(el.tag) == "Override"}

    def of(self, part: str) -> str | None:
        """A part's content type (lower case), or None."""
        el = self.overrides.get(part)
        if el is None:
            base = posixpath.basename(part)
            # By the last dot, as OPC says: "_rels/.rels" has the extension "rels".
            el = self.defaults.get(base.rsplit(".", 1)[1]) if "." in base else None
        return el.get("ContentType", "").lower() if el is not None else None


def disarm_ooxml(data: bytes, detected_type: str, budget: Budget, deadline: Deadline,
                 keep_chart_data: bool = True) -> DisarmResult:
    """Disarm one OOXML package (see the module docstring).
    ``keep_chart_data`` is False for a chart's workbook examined inside a
    document, so that workbook's own charts keep nothing embedded (no
    nesting without end)."""
    pkg = _Package(data, budget, deadline)
    ct_entry = next((n for n in pkg.by_name if n == _CONTENT_TYPES), None)
    if ct_entry is None or "_rels/.rels" not in pkg.by_name:
        raise NotExaminable("no [Content_Types].xml or _rels/.rels: not an Office package")
    types = _ContentTypes(pkg.xml(ct_entry))
    rels = _relationships(pkg)
    main = next((r.target for r in rels["_rels/.rels"] if r.kind == "officedocument" and not r.external), None)
    main_type = types.of(main) if main else None
    if main is None or main_type not in container._MAIN_PARTS:
        raise NotExaminable("no Office main part")
    flavour = container._MAIN_PARTS[main_type]
    all_rels = [r for rs in rels.values() for r in rs]
    rel_kinds = {r.kind for r in all_rels}
    # A macro sheet is one by its folder, its content type or the
    # relationship to it: Excel needs only the last two.
    if any(_MACRO_SHEET.search(n) or "macrosheet" in (types.of(n) or "") for n in pkg.by_name) \
            or rel_kinds & {"xlmacrosheet", "xlintlmacrosheet"}:
        raise CannotDisarm("Excel 4 macro sheets")
    if "afchunk" in rel_kinds:
        # Word imports an alternative-format chunk (RTF, HTML, MHT) whole
        # when the document opens, the objects and scripts in it too.
        raise CannotDisarm("imported documents (altChunk)")
    if "connections" in rel_kinds:
        # A workbook's data connections (web queries, OLE DB and ODBC
        # sources, a \\host\share path hands over Windows credentials)
        # can refresh when it opens; their query tables depend on them.
        raise CannotDisarm("data connections")

    plan = _Plan()
    _plan_macros(pkg, types, main, main_type, plan)
    for r in all_rels:
        _plan_relationship(pkg, r, plan, types, keep_chart_data)
    for name in pkg.by_name:
        # Every XML part is parsed (what does not parse is not examinable),
        # and looked at as a tree, never by byte search: a part may be UTF-16.
        # Every part, wherever it lies: Office opens the main part (and the
        # headers, slides, ... it names) wherever the relationships point,
        # docProps/ or customXml/ too, and the fields and actions are known
        # by their namespace and attributes, not by the folder.
        if _is_xml(name, types) and not name.endswith(".rels") and name != _CONTENT_TYPES:
            root = pkg.xml(name)
            _plan_dde(root, name, plan)
            _plan_actions(root, name, rels, plan)
    if not (plan.kinds or plan.drop_parts or plan.drop_rels or plan.rewrite or plan.new_main_type):
        return DisarmResult("clean")

    # Relationships to parts that go, go too.
    listed = {id(r) for r in plan.drop_rels}
    plan.drop_rels += [r for r in all_rels if not r.external and r.target in plan.drop_parts and id(r) not in listed]
    extracted = _extract(pkg, plan, budget)
    before = _reachable(rels)
    after = _reachable(rels, plan.drop_rels)
    plan.drop_parts |= {p for p in before - after if p in pkg.by_name}
    plan.drop_parts |= {_rels_of(p) for p in plan.drop_parts if _rels_of(p) in pkg.by_name}
    _apply_relationships(pkg, rels, plan)
    new_type = _apply_content_types(pkg, types, main, flavour, plan)
    rewritten = {name: _serialise(root) for name, root in plan.rewrite.items()}
    rewritten[ct_entry] = _serialise(types.root)
    cleaned = _write(pkg, rewritten, plan.drop_parts)
    deadline.check()
    _verify(cleaned, rewritten, new_type, budget)
    removed = [k for k in _ORDER if k in plan.kinds]
    if extracted:
        removed.append(count_words(len(extracted), "embedded file", "embedded files"))
    changed = new_type if new_type != detected_type else None
    extension = filetypes.DEFAULT_EXTENSIONS[changed][0] if changed else None
    return DisarmResult("disarmed", cleaned, tuple(removed), tuple(extracted), changed, extension)


def _plan_macros(pkg: _Package, types: _ContentTypes, main: str, main_type: str, plan: _Plan) -> None:
    macro_parts = {n for n in pkg.by_name if _MACRO_PART.search(n)}
    if macro_parts:
        plan.kinds.add(MACROS)
        plan.drop_parts |= macro_parts
    if main_type in _MACRO_FREE:
        plan.new_main_type = _MACRO_FREE[main_type][0]
    elif "macroenabled" in main_type:
        raise CannotDisarm("an add-in or binary workbook is nothing but macros")


def _plan_relationship(pkg: _Package, r: _Rel, plan: _Plan, types: _ContentTypes, keep_chart_data: bool) -> None:
    if r.external:
        if r.kind == "hyperlink":
            # A click on a link to a file, a share or another program's
            # protocol (search-ms:, ms-msdt:) opens it; web links stay.
            if link_scheme(r.target) not in WEB_SCHEMES:
                plan.kinds.add(FILE_LINKS)
                plan.drop_rels.append(r)
            return
        plan.kinds.add({"attachedtemplate": REMOTE_TEMPLATE, "oleobject": LINKED_OBJECTS,
                        "externallinkpath": WORKBOOK_LINKS}.get(r.kind, REMOTE_CONTENT))
        plan.drop_rels.append(r)
    elif r.kind in ("oleobject", "package"):
        if keep_chart_data and _chart_data(pkg, r, types):
            return
        if r.target in pkg.by_name:
            plan.extract.append(r)
        plan.drop_rels.append(r)
    elif r.kind in ("control", "activexcontrolbinary"):
        plan.kinds.add(ACTIVEX)
        plan.drop_rels.append(r)
    elif r.kind == "externallink":
        body = pkg.read(r.target, pkg.budget.max_xml_part) if r.target in pkg.by_name else b""
        plan.kinds.add(DDE_LINKS if b"ddeLink" in body else WORKBOOK_LINKS)
        plan.drop_rels.append(r)


# Content types of the parts that are charts (DrawingML charts, Office
# 2016's chartex): their data may stay embedded.
_CHART_TYPES = {"application/vnd.openxmlformats-officedocument.drawingml.chart+xml",
                "application/vnd.ms-office.chartex+xml"}


def _chart_data(pkg: _Package, r: _Rel, types: _ContentTypes) -> bool:
    """Whether ``r`` is a chart's own data, which stays in the document: a
    ``package`` relationship of a part that is a chart by its content type
    (not by its folder: a document or header put under ``word/charts/``
    is no chart) to a macro-free workbook with nothing in it to disarm.
    Anything else a chart embeds (an OLE object, a package with an
    executable, a workbook with macros or links) is taken out like any
    embedded object: "Edit Data" opens it."""
    if r.kind != "package" or types.of(r.source) not in _CHART_TYPES or r.target not in pkg.by_name:
        return False
    body = pkg.read(r.target, pkg.budget.max_extracted_bytes)
    if container.examine_zip(io.BytesIO(body), "application/zip") != filetypes.XLSX:
        return False
    try:
        inner = disarm_ooxml(body, filetypes.XLSX, pkg.budget, pkg.deadline, keep_chart_data=False)
    except (NotExaminable, CannotDisarm):
        return False
    return inner.status == "clean"


def _is_xml(name: str, types: _ContentTypes) -> bool:
    """Whether a part is XML, by its name or its content type."""
    ct = types.of(name) or ""
    return name.endswith(".xml") or ct.endswith("+xml") or ct in ("application/xml", "text/xml")


def _plan_dde(root: etree._Element, name: str, plan: _Plan) -> None:
    kinds: set[str] = set()
    stack: list[dict] = []  # open complex fields: own and nested instruction elements
    for el in list(root.iter()):
        if _namespace(el.tag) not in _W:
            continue
        tag = _local(el.tag)
        if tag == "fldSimple":
            instr = next((v for k, v in el.attrib.items() if _local(k) == "instr"), "")
            kind = _field_kind(instr)
            if kind:
                _unwrap(el)
                kinds.add(kind)
        elif tag == "fldChar":
            kind = next((v for k, v in el.attrib.items() if _local(k) == "fldCharType"), "")
            if kind == "begin":
                if stack and stack[-1]["instr"]:
                    stack[-1]["nested"] = True
                    if not "".join(stack[-1]["text"]).strip():
                        stack[-1]["nested_first"] = True
                stack.append({"instr": True, "own": [], "all": [], "text": [], "nested_first": False,
                              "nested": False})
            elif kind == "separate" and stack:
                stack[-1]["instr"] = False
            elif kind == "end" and stack:
                f = stack.pop()
                own = "".join(f["text"])
                field_kind = _field_kind(own) or (DDE_FIELDS if f["nested_first"] else "")
                if not field_kind and f["nested"] and _HYPERLINK_FIELD.match(own) \
                        and link_scheme(_hyperlink_target(own) or "") not in WEB_SCHEMES:
                    # The target is built by a field inside (QUOTE of
                    # character codes): what it opens is not known here.
                    field_kind = FILE_LINKS
                if field_kind:
                    for t in f["all"]:
                        t.text = ""
                    if f["all"]:
                        kinds.add(field_kind)
        elif tag == "instrText":
            for i, f in enumerate(stack):
                if f["instr"]:
                    f["all"].append(el)
                    if i == len(stack) - 1:
                        f["text"].append(el.text or "")
    if kinds:
        plan.kinds.update(kinds)
        plan.rewrite[name] = root


def _field_kind(instr: str) -> str:
    """What a field's instruction does that disarm removes ('' when nothing)."""
    if _DDE.search(instr):
        return DDE_FIELDS
    if _HYPERLINK_FIELD.match(instr):
        target = _hyperlink_target(instr)
        return FILE_LINKS if target is not None and link_scheme(target) not in WEB_SCHEMES else ""
    return REMOTE_CONTENT if _REMOTE_FIELD.match(instr) else ""


def _hyperlink_target(instr: str) -> str | None:
    """A HYPERLINK field's target (None when it has only a place in the
    document, ``\\l``): the first word that is neither a switch nor a
    switch's argument."""
    words = [m.group(1) if m.group(1) is not None else m.group(2) for m in _FIELD_WORD.finditer(instr)][1:]
    i = 0
    while i < len(words):
        word = words[i]
        if len(word) == 2 and word.startswith("\\"):
            i += 2 if word[1].lower() in "lot" else 1
            continue
        return word
    return None


def _unwrap(el: etree._Element) -> None:
    """Put an element's children (the field's shown result) in its place."""
    parent = el.getparent()
    if parent is None:
        return
    i = parent.index(el)
    for child in reversed(list(el)):
        parent.insert(i, child)
    el.tail = None
    parent.remove(el)


def _plan_actions(root: etree._Element, name: str, rels: dict[str, list[_Rel]], plan: _Plan) -> None:
    own = {r.id: r for r in rels.get(_rels_of(name), [])}
    changed = False
    for el in list(root.iter()):
        if isinstance(el.tag, str) and _PPACTION.match(el.get("action", "")):
            plan.kinds.add(MACROS if "macro" in el.get("action", "").lower() else LAUNCH)
            for k, v in el.attrib.items():
                if _namespace(k) in _R and v in own:
                    plan.drop_rels.append(own[v])
            _remove(el)
            changed = True
    if changed:
        plan.rewrite[name] = root


def _remove(el: etree._Element) -> None:
    """Remove an element, and containers it leaves empty that may not be."""
    if _local(el.tag) == "oleObj":
        # A PowerPoint OLE frame: the whole graphic frame goes.
        frame = next((a for a in el.iterancestors() if _local(a.tag) == "graphicFrame"), None)
        if frame is not None:
            el = frame
    parent = el.getparent()
    if parent is None:
        return
    _drop(el)
    while parent is not None and _local(parent.tag) in _PRUNABLE and len(parent) == 0:
        up = parent.getparent()
        if up is None:
            break
        _drop(parent)
        parent = up
    # Markup compatibility needs a Choice in each AlternateContent.
    if parent is not None:
        for ac in [parent, *parent.iterancestors()]:
            if _local(ac.tag) == "AlternateContent" and _namespace(ac.tag) == _MC and ac.getparent() is not None \
                    and not any(_local(c.tag) == "Choice" for c in ac):
                _drop(ac)


def _drop(el: etree._Element) -> None:
    """Remove an element, keeping the text that followed it."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        prev = el.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _extract(pkg: _Package, plan: _Plan, budget: Budget) -> list[Extracted]:
    out: list[Extracted] = []
    left = budget.max_extracted_bytes
    seen: set[str] = set()
    for r in plan.extract:
        if r.target in seen:
            continue
        seen.add(r.target)
        if len(out) >= budget.max_extracted_files:
            raise OverBudget(f"more than {budget.max_extracted_files} embedded files")
        body = pkg.read(r.target, left)
        name = posixpath.basename(pkg.by_name[r.target].filename)
        if body.startswith(_OLE_MAGIC):
            name, body = _ole_payload(body, name)
        left -= len(body)
        if left < 0:
            raise OverBudget(f"embedded files over {budget.max_extracted_bytes} bytes")
        out.append(Extracted(name, body))
    return out


def _ole_payload(body: bytes, name: str) -> tuple[str, bytes]:
    """The packaged file in an OLE Package object (its Ole10Native stream),
    or the OLE object itself when it is not a package."""
    try:
        with olefile.OleFileIO(io.BytesIO(body)) as ole:
            if not ole.exists("\x01Ole10Native"):
                return name, body
            native = oleobj.OleNativeStream(ole.openstream("\x01Ole10Native").read())
    except (OSError, ValueError, IndexError, struct.error) as e:
        raise NotExaminable(f"the embedded object {name} does not read: {e}") from e
    inner = native.filename or native.src_path or name
    inner = inner.replace("\\", "/").rsplit("/", 1)[-1] or name
    data = native.data if isinstance(native.data, bytes) else b""
    return inner, data


def _apply_relationships(pkg: _Package, rels: dict[str, list[_Rel]], plan: _Plan) -> None:
    """Remove the relationships that go from their parts, and the elements
    that name them from their sources."""
    removed_ids: dict[str, set[str]] = {}
    touched: set[str] = set()
    for r in plan.drop_rels:
        if r.rels_part in plan.drop_parts:
            continue
        parent = r.element.getparent()
        if parent is not None:
            parent.remove(r.element)
            touched.add(r.rels_part)
        removed_ids.setdefault(r.source, set()).add(r.id)
    for rels_part in touched:
        # The parsed root of a relationships part, shared by its _Rel elements.
        plan.rewrite[rels_part] = rels[rels_part][0].element.getroottree().getroot()
    for source, ids in removed_ids.items():
        if not source or source in plan.drop_parts or source not in pkg.by_name:
            continue
        if not source.endswith(".xml"):
            continue
        root = plan.rewrite.get(source)
        if root is None:
            root = pkg.xml(source)
        hits = []
        for el in root.iter():
            if not isinstance(el.tag, str):
                continue
            for k, v in list(el.attrib.items()):
                if _namespace(k) in _R and v in ids:
                    if _local(k) == "link":
                        del el.attrib[k]
                    else:
                        hits.append(el)
                        break
        for el in hits:
            if el is root:
                continue
            if _local(el.tag) == "hyperlink" and _namespace(el.tag) in _W:
                # The link goes, the words it was on stay.
                _unwrap(el)
            else:
                _remove(el)
        plan.rewrite[source] = root


def _apply_content_types(pkg: _Package, types: _ContentTypes, main: str, flavour: str, plan: _Plan) -> str:
    """Drop the content types of removed parts and macro content types; give
    the main part its macro-free type.  Returns the package's new type."""
    for part, el in list(types.overrides.items()):
        if part in plan.drop_parts or "vbaproject" in el.get("ContentType", "").lower():
            types.root.remove(el)
            del types.overrides[part]
    for ext, el in list(types.defaults.items()):
        if "vbaproject" in el.get("ContentType", "").lower():
            types.root.remove(el)
            del types.defaults[ext]
    new_type = flavour
    if plan.new_main_type:
        types.overrides[main].set("ContentType", plan.new_main_type)
        new_type = next(t for free, t in _MACRO_FREE.values() if free == plan.new_main_type)
    elif flavour in filetypes.MACRO_TYPES:
        new_type = next((k for k, v in filetypes.MACRO_VARIANT.items() if v == flavour), flavour)
    return new_type


def _write(pkg: _Package, rewritten: dict[str, bytes], drop: set[str]) -> bytes:
    """The package again: entries in their order, dropped ones left out,
    rewritten ones with their new bytes, the rest as they were."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in pkg.infos:
            name = _normal(info.filename)
            if name in drop:
                continue
            body = rewritten[name] if name in rewritten else pkg.read(name)
            new = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            kept = info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
            new.compress_type = info.compress_type if kept else zipfile.ZIP_DEFLATED
            new.external_attr = info.external_attr
            z.writestr(new, body)
    return out.getvalue()


def _verify(cleaned: bytes, rewritten: dict[str, bytes], new_type: str, budget: Budget) -> None:
    """Raise CheckFailed unless the rewritten package reads back whole."""
    try:
        with zipfile.ZipFile(io.BytesIO(cleaned)) as z:
            bad = z.testzip()
            if bad is not None:
                raise CheckFailed(f"{bad} fails its CRC")
            names = {_normal(i.filename): i.filename for i in z.infolist()}
            types = _ContentTypes(parse_xml(z.read(names[_CONTENT_TYPES]), _CONTENT_TYPES))
            for name in names:
                if name != _CONTENT_TYPES and not name.endswith("/") and types.of(name) is None:
                    raise CheckFailed(f"{name} has no content type")
            for name in rewritten:
                root = parse_xml(z.read(names[name]), name)
                if name.endswith(".rels") or name == _CONTENT_TYPES:
                    continue
                rels_name = _rels_of(name)
                ids = set()
                if rels_name in names:
                    ids = {el.get("Id") for el in parse_xml(z.read(names[rels_name]), rels_name)}
                for el in root.iter():
                    if not isinstance(el.tag, str):
                        continue
                    for k, v in el.attrib.items():
                        if _namespace(k) in _R and v not in ids:
                            raise CheckFailed(f"{name} names relationship {v}, which is not there")
    except (zipfile.BadZipFile, KeyError, NotExaminable) as e:
        raise CheckFailed(str(e)) from e
    seen = container.examine_zip(io.BytesIO(cleaned), "application/zip")
    if seen != new_type:
        raise CheckFailed(f"the package examination calls it {seen}, not {new_type}")
