"""Disarm a PDF with pikepdf (qpdf): find the active content, and only when
there is some, write the document again without it.

The walk starts at the trailer and follows every reference once (the
objects a reader can reach; qpdf drops the rest when it writes), counting
the dictionaries and arrays it visits against ``Budget.max_objects``.  In
every dictionary and array it looks at each value:

* an action that runs a script (``/S /JavaScript``, any ``/JS``), starts a
  program (``/Launch``), imports data (``/ImportData``), submits a form
  (``/SubmitForm``), opens another file (``/GoToR``, ``/GoToE``, a
  ``/Thread`` in another file, a ``/URI`` that is not http, https or
  mailto) or plays embedded media (``/RichMediaExecute``) is cut out of
  whatever holds it: ``/OpenAction``, ``/AA`` triggers (document, page,
  annotation, form field), an annotation's or outline item's ``/A``,
  another action's ``/Next``;
* the document's script name tree (``/Names /JavaScript``) and embedded
  file tree (``/Names /EmbeddedFiles``) go, and so does an AcroForm's
  ``/XFA`` (XFA forms carry scripts; readers fall back to the AcroForm);
* annotations that are file attachments or embedded media (``/FileAttachment``,
  ``/RichMedia``, ``/3D``, ``/Screen``, ``/Movie``, ``/Sound``) leave their
  page's ``/Annots``;
* every file specification's embedded file (``/EF``) is taken out and
  returned, decoded, once per stream, with its name.

Names are compared after qpdf's parsing, so ``/J#61vaScript`` is
``/JavaScript``.  Streams are written as they were (no decoding or
recompression), so the rewrite costs little more than the parse, and the
result must pass ``qpdf --check``.
"""
from __future__ import annotations

import io
import subprocess
import tempfile
import zlib

import pikepdf
from pikepdf import Name, ObjectType

from gateway.disarm import (
    WEB_SCHEMES,
    Budget,
    CheckFailed,
    Deadline,
    DisarmResult,
    Extracted,
    NotExaminable,
    OverBudget,
    count_words,
    link_scheme,
)

SCRIPTS = "scripts"
LAUNCH = "program launches"
IMPORT = "data imports"
SUBMIT = "form submissions"
FILE_LINKS = "links that open other files"
WEB_LINKS = "web links"
MEDIA = "embedded media"

# Action type -> what it is, in words.
_ACTIONS = {
    "/JavaScript": SCRIPTS, "/Launch": LAUNCH, "/ImportData": IMPORT, "/SubmitForm": SUBMIT,
    "/GoToR": FILE_LINKS, "/GoToE": FILE_LINKS, "/RichMediaExecute": MEDIA,
}
_REMOVED_ANNOTATIONS = {"/FileAttachment": None, "/RichMedia": MEDIA, "/3D": MEDIA, "/Screen": MEDIA,
                        "/Movie": MEDIA, "/Sound": MEDIA}
# The order the words are given in.
_ORDER = [SCRIPTS, LAUNCH, IMPORT, SUBMIT, FILE_LINKS, WEB_LINKS, MEDIA]
_CONTAINERS = (ObjectType.dictionary, ObjectType.array, ObjectType.stream)


class _Walk:
    """One pass over the document: what to remove, found before anything changes."""

    def __init__(self, pdf: pikepdf.Pdf, budget: Budget, deadline: Deadline) -> None:
        self.pdf = pdf
        self.budget = budget
        self.deadline = deadline
        self.kinds: set[str] = set()
        self.drop_keys: list[tuple[pikepdf.Object, str]] = []
        self.drop_items: list[tuple[pikepdf.Object, list[int]]] = []
        # Embedded file streams by object number (or position, when direct), with their names.
        self.files: dict[tuple[int, int], tuple[str, pikepdf.Object]] = {}
        self.filespecs: list[pikepdf.Object] = []

    def run(self) -> None:
        """Visit everything reachable from the trailer once."""
        seen: set[tuple[int, int]] = set()
        stack = [self.pdf.trailer]
        visited = 0
        while stack:
            obj = stack.pop()
            if obj.is_indirect:
                key = obj.objgen
                if key in seen:
                    continue
                seen.add(key)
            visited += 1
            if visited > self.budget.max_objects:
                raise OverBudget(f"more than {self.budget.max_objects} PDF objects")
            if visited % 1000 == 0:
                self.deadline.check()
            code = obj._type_code
            if code == ObjectType.array:
                self._array(obj, stack)
            else:
                self._dictionary(obj, stack)

    def _children(self, value: pikepdf.Object, stack: list[pikepdf.Object]) -> None:
        if _code(value) in _CONTAINERS:
            stack.append(value)

    def _array(self, arr: pikepdf.Object, stack: list[pikepdf.Object]) -> None:
        drop = []
        for i, item in enumerate(arr):
            kind = self._active(item)
            if kind:
                self.kinds.add(kind)
                drop.append(i)
            self._children(item, stack)
        if drop:
            self.drop_items.append((arr, drop))

    def _dictionary(self, d: pikepdf.Object, stack: list[pikepdf.Object]) -> None:
        for key in list(d.keys()):
            value = d.get(key)
            if value is None:
                continue
            kind = self._active(value)
            if kind:
                self.kinds.add(kind)
                self.drop_keys.append((d, key))
            elif key == "/Names" and _code(value) == ObjectType.dictionary:
                if "/JavaScript" in value:
                    self.kinds.add(SCRIPTS)
                    self.drop_keys.append((value, "/JavaScript"))
                if "/EmbeddedFiles" in value:
                    # The files themselves are found (and counted) at their /EF below.
                    self.drop_keys.append((value, "/EmbeddedFiles"))
            elif key == "/XFA":
                # An XFA form runs its scripts with or without /Fields beside it.
                self.kinds.add(SCRIPTS)
                self.drop_keys.append((d, key))
            elif key == "/Annots" and _code(value) == ObjectType.array:
                self._annotations(value)
            elif key == "/EF" and _code(value) == ObjectType.dictionary:
                self._embedded(d, value)
            self._children(value, stack)

    def _annotations(self, annots: pikepdf.Object) -> None:
        drop = []
        for i, annot in enumerate(annots):
            if _code(annot) != ObjectType.dictionary:
                continue
            subtype = annot.get("/Subtype")
            if isinstance(subtype, Name) and str(subtype) in _REMOVED_ANNOTATIONS:
                kind = _REMOVED_ANNOTATIONS[str(subtype)]
                if kind:
                    self.kinds.add(kind)
                drop.append(i)
        if drop:
            self.drop_items.append((annots, drop))

    def _embedded(self, filespec: pikepdf.Object, ef: pikepdf.Object) -> None:
        self.filespecs.append(filespec)
        name = _text(filespec.get("/UF")) or _text(filespec.get("/F")) or ""
        for key in ("/UF", "/F", "/DOS", "/Mac", "/Unix"):
            stream = ef.get(key)
            if stream is None or _code(stream) != ObjectType.stream:
                continue
            ident = stream.objgen if stream.is_indirect else (-len(self.files) - 1, 0)
            if ident not in self.files:
                if len(self.files) >= self.budget.max_extracted_files:
                    raise OverBudget(f"more than {self.budget.max_extracted_files} embedded files")
                self.files[ident] = (name, stream)
            break

    def _active(self, value: pikepdf.Object) -> str | None:
        """What an action does, in words, when it must go (else None)."""
        if _code(value) != ObjectType.dictionary:
            return None
        if "/JS" in value:
            return SCRIPTS
        s = value.get("/S")
        if not isinstance(s, Name):
            return None
        kind = _ACTIONS.get(str(s))
        if kind:
            return kind
        if str(s) == "/Thread" and "/F" in value:
            # An article thread in another file: the reader opens that file
            # (from a share too), as for /GoToR.
            return FILE_LINKS
        if str(s) == "/URI":
            uri = value.get("/URI")
            raw = bytes(uri) if isinstance(uri, pikepdf.String) else b""
            scheme = link_scheme(raw.decode("latin-1"))
            if scheme not in WEB_SCHEMES:
                return SCRIPTS if scheme == "javascript" else FILE_LINKS
            if not self.budget.keep_web_links:
                return WEB_LINKS
        return None


def _code(value: object) -> ObjectType | None:
    """The qpdf type of a value (pikepdf hands scalars over as Python ints,
    bools and decimals, which are never containers)."""
    return value._type_code if isinstance(value, pikepdf.Object) else None


def _text(value: pikepdf.Object | None) -> str:
    if isinstance(value, pikepdf.String):
        return str(value)
    return ""


def _stream_data(stream: pikepdf.Object, limit: int) -> bytes:
    """An embedded file's decoded bytes, at most ``limit`` of them: Flate
    (by far the usual filter) is inflated here with a cap, so a bomb
    costs nothing; other filters are left to qpdf (bounded by the child's
    RLIMIT_AS when isolated)."""
    filters = stream.get("/Filter")
    if filters is None:
        data = stream.read_raw_bytes()
    elif filters == Name.FlateDecode and "/DecodeParms" not in stream:
        raw = stream.read_raw_bytes()
        z = zlib.decompressobj()
        try:
            data = z.decompress(raw, limit + 1)
        except zlib.error as e:
            raise NotExaminable(f"an embedded file does not inflate: {e}") from e
    else:
        try:
            data = stream.read_bytes()
        except pikepdf.PdfError as e:
            raise NotExaminable(f"an embedded file does not decode: {e}") from e
    if len(data) > limit:
        raise OverBudget(f"embedded files over {limit} bytes")
    return data


def check(data: bytes, seconds: float) -> None:
    """Raise CheckFailed unless ``qpdf --check`` passes on ``data`` without
    errors or warnings within ``seconds``."""
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(data)
        f.flush()
        try:
            proc = subprocess.run(["qpdf", "--check", f.name], capture_output=True, timeout=seconds, check=False)
        except subprocess.TimeoutExpired as e:
            raise CheckFailed(f"qpdf --check took longer than {seconds:g} s") from e
        except FileNotFoundError as e:
            raise CheckFailed("qpdf is not installed") from e
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip().splitlines()
        raise CheckFailed(f"qpdf --check exit status {proc.returncode}: {' / '.join(out[-3:])}")


def disarm_pdf(data: bytes, budget: Budget, deadline: Deadline) -> DisarmResult:
    """Disarm one PDF (see the module docstring)."""
    try:
        pdf = pikepdf.open(io.BytesIO(data))
    except pikepdf.PasswordError as e:
        raise NotExaminable("the PDF needs a password") from e
    except (pikepdf.PdfError, ValueError, RecursionError) as e:
        raise NotExaminable(f"the PDF does not parse: {e}") from e
    with pdf:
        deadline.check()
        walk = _Walk(pdf, budget, deadline)
        try:
            walk.run()
        except (pikepdf.PdfError, RecursionError) as e:
            raise NotExaminable(f"the PDF does not parse: {e}") from e
        if not (walk.kinds or walk.files or walk.drop_keys or walk.drop_items):
            return DisarmResult("clean")
        extracted = []
        left = budget.max_extracted_bytes
        for number, (name, stream) in enumerate(walk.files.values(), 1):
            try:
                body = _stream_data(stream, left)
            except pikepdf.PdfError as e:
                raise NotExaminable(f"an embedded file does not read: {e}") from e
            left -= len(body)
            extracted.append(Extracted(name or f"attachment-{number}", body))
        deadline.check()
        # Remove from the end of each array so earlier indexes stay right.
        for arr, indexes in walk.drop_items:
            for i in reversed(indexes):
                del arr[i]
        for holder, key in walk.drop_keys:
            if key in holder:
                del holder[key]
        for filespec in walk.filespecs:
            if "/EF" in filespec:
                del filespec["/EF"]
        out = io.BytesIO()
        try:
            pdf.save(out, stream_decode_level=pikepdf.StreamDecodeLevel.none, fix_metadata_version=False,
                     deterministic_id=True)
        except pikepdf.PdfError as e:
            raise NotExaminable(f"the PDF could not be written again: {e}") from e
    cleaned = out.getvalue()
    deadline.check()
    check(cleaned, budget.check_seconds)
    removed = [k for k in _ORDER if k in walk.kinds]
    if extracted:
        removed.append(count_words(len(extracted), "embedded file", "embedded files"))
    return DisarmResult("disarmed", cleaned, tuple(removed), tuple(extracted))
