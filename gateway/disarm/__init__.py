"""Disarm: take the active content out of PDFs and Office Open XML files.

A PDF may run JavaScript when it is opened, launch a program, submit a form
to a server or carry a program as an embedded file; an Office document may
carry macros, fetch a template or an OLE object from the internet (the
remote-template and "Follina" attacks), run a DDE command or hold a packaged
program.  ``disarm`` finds these, and when there are any, rewrites the file
without them, keeping everything a reader needs to see:

* PDF (gateway/disarm/pdf.py, with pikepdf, i.e. qpdf): scripts anywhere,
  launch, import, form-submission and remote go-to actions, embedded media
  (RichMedia, 3D, movies, sounds, screens), XFA forms, embedded files and
  file-attachment annotations;
* OOXML (gateway/disarm/ooxml.py, with zipfile, lxml and olefile/oletools):
  VBA projects and macro parts (the package becomes the macro-free type),
  relationships that fetch from outside the package (templates, OLE links,
  frames, sub-documents, images), Excel links to other workbooks and DDE
  links, DDE/DDEAUTO field codes, embedded OLE objects and packages,
  ActiveX controls, PowerPoint actions that start programs or macros.

Each embedded file taken out is returned (``Extracted``) so the caller can
judge it as a part of its own.  A file with nothing to remove is returned
as it came ("clean", no rewrite).  A file the step cannot read, cannot
finish within its ``Budget``, or whose rewrite does not pass the check (a
re-read by a reference reader: ``qpdf --check`` for PDF; zipfile, an XML
parse of every rewritten part and the gateway's own package examination for
OOXML) is "failed": the caller quarantines it.

Everything here is blocking.  ``disarm`` runs in the calling thread, bounded
by counts and a deadline checked as it walks; ``disarm_isolated`` runs it in
a child Python process (``python -m gateway.disarm``) under RLIMIT_AS and
RLIMIT_CPU with a wall-clock timeout, so that a file that makes the
libraries themselves spin or allocate cannot stall or exhaust the gateway.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.process
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from policies import filetypes

PDF = "application/pdf"
# Every OOXML flavour disarm works on, with or without macros, and the
# package container.py calls OOXML_REMOTE (its flavour is read again here).
OOXML_TYPES = frozenset({
    filetypes.DOCX, filetypes.XLSX, filetypes.PPTX, filetypes.DOTX, filetypes.XLTX, filetypes.POTX, filetypes.PPSX,
    filetypes.DOCM, filetypes.DOTM, filetypes.XLSM, filetypes.XLTM, filetypes.XLAM, filetypes.PPTM, filetypes.POTM,
    filetypes.PPSM, filetypes.PPAM, filetypes.OOXML_REMOTE,
})
# The detected types ``disarm`` accepts.
TYPES = frozenset({PDF}) | OOXML_TYPES

Status = Literal["clean", "disarmed", "failed"]


@dataclass(frozen=True)
class Budget:
    """What disarming one file may cost; past any bound the file is "failed"."""

    #: PDF objects (indirect objects and the dictionaries and arrays inside them) walked.
    max_objects: int = 200_000
    #: OOXML: entries in the package, bytes decompressed in all, bytes of one XML part.
    max_parts: int = 10_000
    max_unpacked: int = 512 << 20
    max_xml_part: int = 64 << 20
    #: Embedded files taken out of one document, and their bytes in all.
    max_extracted_files: int = 100
    max_extracted_bytes: int = 256 << 20
    #: The rewrite may be at most this many times the original (plus 64 KiB).
    max_growth: float = 1.5
    #: Wall-clock seconds for the whole step: checked between objects in
    #: process, enforced by killing the child in ``disarm_isolated``.
    seconds: float = 30.0
    #: Address space of the child process (RLIMIT_AS), bytes.
    memory: int = 1 << 30
    #: Seconds ``qpdf --check`` may take on a rewritten PDF.
    check_seconds: float = 20.0
    #: Keep http, https and mailto links in PDFs (a click, not an automatic
    #: action); links to files, network shares or other schemes always go.
    keep_web_links: bool = True


@dataclass(frozen=True)
class Extracted:
    """A file taken out of a document (a PDF embedded file, an OLE package):
    the caller judges it as a part of its own."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class DisarmResult:
    """What disarming one file gave.

    ``clean``: nothing to remove, the original is untouched (``data`` None);
    ``disarmed``: ``data`` is the rewritten file, ``removed`` says what went;
    ``failed``: not examinable, over budget, or the rewrite did not check;
    ``reason`` says why, and the caller quarantines the original.
    """

    status: Status
    data: bytes | None = None
    removed: tuple[str, ...] = ()
    extracted: tuple[Extracted, ...] = ()
    #: The file's type after disarming when it changed (macros removed:
    #: DOCM -> DOCX; an OOXML_REMOTE package: its own flavour), and the
    #: extension that type is named with.
    new_type: str | None = None
    new_extension: str | None = None
    reason: str = ""
    original_sha256: str = ""
    #: sha256 of ``data`` when disarmed.
    sha256: str | None = None


class NotExaminable(Exception):
    """The file cannot be read to a verdict (damaged, encrypted, unknown structure)."""


class OverBudget(Exception):
    """Disarming the file would cost more than its ``Budget`` allows."""


class CannotDisarm(Exception):
    """The file has active content that cannot be taken out safely (an
    Excel 4 macro sheet, an add-in that is nothing but macros)."""


class CheckFailed(Exception):
    """The rewritten file does not pass the reference reader's check."""


class Deadline:
    """The wall-clock bound of one disarm, checked between units of work."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        """Raise OverBudget once the time is up."""
        if time.monotonic() > self.end:
            raise OverBudget(f"took longer than {self.seconds:g} s")


# Link schemes a click opens in a browser or a mail client.  Any other
# target (file:, a \\host\share path, a relative path, search-ms:,
# ms-msdt:, another program's protocol) opens a file or starts a program,
# and a click on a path to a share hands over the agent's Windows
# credentials: disarm takes such links out of PDFs and Office files alike.
WEB_SCHEMES = frozenset({"http", "https", "mailto"})


def link_scheme(target: str) -> str:
    """A link target's scheme, lower case ('' when it has none: a path)."""
    try:
        return urlsplit(target.strip()).scheme.lower()
    except ValueError:
        return ""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# How a library names the stream it read ("stream <_io.BytesIO object at
# 0x7f...>: "): nothing the agent or the customer reading the notice needs.
_STREAM_NAME = re.compile(r"(?:stream )?<[^<>]* object at 0x[0-9a-fA-F]+>:? ?")


def _plain(e: BaseException) -> str:
    """An error's text for a notice: without the libraries' names for
    in-memory streams, and bounded."""
    return _STREAM_NAME.sub("", str(e)).strip()[:300]


def disarm(data: bytes | str | os.PathLike[str], detected_type: str, *, budget: Budget = Budget(),
           hashes: bool = True) -> DisarmResult:
    """Disarm one file whose detected type is ``detected_type`` (one of
    ``TYPES``).  Blocking: call it in a thread, or use ``disarm_isolated``.
    ``hashes=False`` leaves ``original_sha256`` and ``sha256`` unset: a
    child's caller computes them itself and never reads the child's."""
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    original = _sha256(data) if hashes else ""
    deadline = Deadline(budget.seconds)
    try:
        if detected_type == PDF:
            from gateway.disarm import pdf
            result = pdf.disarm_pdf(data, budget, deadline)
        elif detected_type in OOXML_TYPES:
            from gateway.disarm import ooxml
            result = ooxml.disarm_ooxml(data, detected_type, budget, deadline)
        else:
            return DisarmResult("failed", reason=f"not examinable: disarm does not handle {detected_type}",
                                original_sha256=original)
    except NotExaminable as e:
        return DisarmResult("failed", reason=f"not examinable: {_plain(e)}", original_sha256=original)
    except OverBudget as e:
        return DisarmResult("failed", reason=f"over budget: {_plain(e)}", original_sha256=original)
    except CannotDisarm as e:
        return DisarmResult("failed", reason=f"cannot be disarmed: {_plain(e)}", original_sha256=original)
    except CheckFailed as e:
        return DisarmResult("failed", reason=f"the disarmed file did not check: {_plain(e)}", original_sha256=original)
    except MemoryError:
        return DisarmResult("failed", reason="over budget: out of memory", original_sha256=original)
    if result.status == "disarmed":
        assert result.data is not None
        limit = int(len(data) * budget.max_growth) + (64 << 10)
        if len(result.data) > limit:
            return DisarmResult("failed", reason=f"the disarmed file grew from {len(data)} to {len(result.data)} bytes",
                                original_sha256=original)
        return _replace(result, original_sha256=original, sha256=_sha256(result.data) if hashes else None)
    return _replace(result, original_sha256=original)


def _replace(result: DisarmResult, **changes: object) -> DisarmResult:
    return replace(result, **changes)  # type: ignore[arg-type]


def summary(result: DisarmResult) -> str:
    """What disarming did, in words for the person or agent reading the
    notice: "scripts and 1 embedded file removed"."""
    if result.status == "clean":
        return "nothing active found"
    if result.status == "failed":
        return f"could not be made safe ({result.reason})"
    words = list(result.removed)
    if not words:
        return "active content removed"
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{text} removed"


def count_words(n: int, one: str, many: str) -> str:
    """"1 embedded file", "3 embedded files"."""
    return f"{n} {one if n == 1 else many}"


# ---------------------------------------------------------------------------
# The child process.

_HERE = Path(__file__).resolve().parent.parent.parent


def disarm_isolated(data: bytes, detected_type: str, *, budget: Budget = Budget()) -> DisarmResult:
    """``disarm`` in a child Python process (``python -m gateway.disarm``)
    limited to ``budget.memory`` bytes of address space and killed after
    ``budget.seconds`` (plus the check's time): a PDF or package that makes
    qpdf or the parsers spin or allocate costs the child, not the gateway.
    Blocking: call it in a thread.  The child's answer is read as JSON and
    raw bytes, never unpickled; the hashes are computed here."""
    original = _sha256(data)
    request = json.dumps({"type": detected_type, "budget": asdict(budget)}).encode() + b"\n" + data
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_HERE), env.get("PYTHONPATH", "")) if p)
    timeout = budget.seconds + budget.check_seconds + 10  # interpreter start and imports
    try:
        proc = subprocess.run([sys.executable, "-m", "gateway.disarm"], input=request, capture_output=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return DisarmResult("failed", reason=f"over budget: took longer than {timeout:g} s", original_sha256=original)
    if proc.returncode != 0:
        tail = (proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""])[0][:200]
        why = "out of memory" if "MemoryError" in tail else f"exit status {proc.returncode}: {tail}"
        return DisarmResult("failed", reason=f"over budget: the disarm process failed ({why})",
                            original_sha256=original)
    try:
        result = decode_answer(proc.stdout)
    except (ValueError, KeyError, TypeError) as e:
        return DisarmResult("failed", reason=f"the disarm process answered badly: {e}", original_sha256=original)
    return _replace(result, original_sha256=original,
                    sha256=_sha256(result.data) if result.data is not None else None)


_FORKSERVER: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """The fork server disarm's children are forked from: a single-threaded
    process with pikepdf, lxml and olefile already imported, so a child costs
    a fork, not an interpreter start (the gateway's own threaded process is
    never forked)."""
    global _FORKSERVER
    if _FORKSERVER is None:
        ctx = multiprocessing.get_context("forkserver")
        # gateway.cli too: a child started from the console script imports
        # it again as the main module, which costs nothing once preloaded.
        ctx.set_forkserver_preload(["gateway.disarm", "gateway.disarm.pdf", "gateway.disarm.ooxml", "gateway.cli"])
        _FORKSERVER = ctx
    return _FORKSERVER


_SAFE_PATH_LOCK = threading.Lock()


def _ensure_forkserver() -> multiprocessing.context.ForkServerContext:
    """The fork server's context, the server running (started now if it is
    not: blocking).

    The fork server is started as ``python -c``, which puts the working
    directory first on its path (it ignores the path it is handed), so a
    ``gateway`` package there would be what the children run instead of
    this installation's: it is started in Python's safe-path mode, which
    leaves the directory out.  Only for that start: other programs the
    process runs keep the environment they had."""
    from multiprocessing import forkserver

    ctx = _forkserver()
    with _SAFE_PATH_LOCK:
        saved = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONSAFEPATH"]
            else:
                os.environ["PYTHONSAFEPATH"] = saved
    return ctx


def prestart() -> None:
    """Start the fork server now (blocking, call it in a thread), so that
    the first message with a PDF or Office file does not wait the third of a
    second its start and imports take."""
    _ensure_forkserver()


def _session_child(conn: multiprocessing.connection.Connection, budget: Budget) -> None:
    """In the child: limit itself, then disarm each file the parent sends,
    answering each as JSON and raw bytes, until the parent hangs up."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (budget.memory, budget.memory))
    cpu_per_file = int(budget.seconds + budget.check_seconds) + 1
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    sock = _bulk(conn)
    try:
        while True:
            try:
                files = json.loads(_recv_frame(sock))["files"]
                # Every file of the request is read before the first is
                # looked at: the parent sends them all, then reads answers.
                blobs = [bytes(_recv_exact(sock, f["size"])) for f in files]
            except EOFError:
                return
            for request in files:
                data = blobs.pop(0)
                # Each file gets its own CPU allowance on top of what the
                # files before it used (RLIMIT_CPU counts the whole process).
                usage = resource.getrusage(resource.RUSAGE_SELF)
                soft = int(usage.ru_utime + usage.ru_stime) + cpu_per_file
                if cpu_hard != resource.RLIM_INFINITY:
                    soft = min(soft, cpu_hard)
                resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
                result = disarm(data, request["type"], budget=budget, hashes=False)
                del data
                head, parts = _answer(result)
                sock.sendall(_frame(head))
                for part in parts:
                    sock.sendall(part)
                if result.status == "failed":
                    return  # the parent replaces this child: the rest of the files are not its
    finally:
        sock.close()
        conn.close()


def _bulk(conn: multiprocessing.connection.Connection) -> socket.socket:
    """The connection's socket, for file bytes: sent with ``sendall`` and
    read into one buffer (``_recv_exact``), where the connection's own
    framing would copy them several times and read them in pieces."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.setblocking(True)
    return sock


def _recv_exact(sock: socket.socket, size: object, limit: int | None = None,
                deadline: float | None = None) -> bytearray:
    """Exactly ``size`` bytes from ``sock`` (EOFError when it closes first,
    TimeoutError when ``deadline``, a ``time.monotonic()``, passes first;
    ValueError when ``size`` is not a count of at most ``limit``).  The
    buffer grows as the bytes arrive: a length announced and never sent
    costs nothing.  The socket stays blocking (its descriptor is shared
    with the connection): the deadline is kept by waiting for each read
    with ``select``."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or (limit is not None and size > limit):
        raise ValueError(f"bad length {size!r}")
    buf = bytearray(min(size, _RECV_STEP))
    pos = 0
    while pos < size:
        if pos == len(buf):
            buf.extend(bytes(min(len(buf), size - len(buf))))
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise TimeoutError("the other side sent nothing in time")
        with memoryview(buf) as view, view[pos:] as rest:
            n = sock.recv_into(rest)
        if n == 0:
            raise EOFError("the other side closed the connection")
        pos += n
    return buf


def _send_within(sock: socket.socket, data: bytes | memoryview, deadline: float) -> None:
    """``sock.sendall(data)`` that gives up (TimeoutError) at ``deadline``:
    each send waits with ``select`` and does not block (the descriptor is
    shared with the connection, so it stays in blocking mode)."""
    with memoryview(data) as view:
        pos = 0
        while pos < len(view):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [sock], [], left)[1]:
                raise TimeoutError("the other side took nothing in time")
            try:
                pos += sock.send(view[pos:pos + _RECV_STEP], socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue


def _frame(head: bytes) -> bytes:
    """A JSON line as it crosses the socket: its length (4 bytes, big-endian), then it."""
    return len(head).to_bytes(4, "big") + head


def _recv_frame(sock: socket.socket, deadline: float | None = None) -> bytes:
    """A ``_frame`` from ``sock``: at most ``_MAX_HEAD`` bytes, all of it by ``deadline``."""
    size = int.from_bytes(_recv_exact(sock, 4, deadline=deadline), "big")
    return bytes(_recv_exact(sock, size, limit=_MAX_HEAD, deadline=deadline))


# Bytes read or sent a system call at most, and the step the buffer of a
# file from the child grows by.
_RECV_STEP = 1 << 20
# The most a JSON line may hold (a request: a type and a size a file; an
# answer: a status, the names of what was removed and of the files taken
# out); refused before it is read.
_MAX_HEAD = 1 << 20


class Session:
    """The files of one message disarmed in turn by one child forked from
    the fork server, limited like ``disarm_isolated`` (RLIMIT_AS for the
    child, RLIMIT_CPU and a wall-clock bound per file).

    A fork per message, not per file: a message of 200 PDFs costs one fork.
    Files of different messages never share a child, so nothing one sender's
    file does to the libraries' state can touch another message's verdict.
    Within a message the files share a sender, and a file able to take over
    the child could already forge its own answer, so sharing gives it nothing
    more.  After a file that failed (over budget, out of memory, a bad
    answer) the child is replaced before the next file.  The answers are read as JSON and
    raw bytes, never unpickled; the hashes are computed here.  Blocking:
    call it in a thread.
    """

    def __init__(self, budget: Budget = Budget()) -> None:
        self.budget = budget
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._sock: socket.socket | None = None
        #: Children started so far (one unless a file failed).
        self.children = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> multiprocessing.connection.Connection:
        ctx = _ensure_forkserver()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_session_child, args=(child, self.budget), daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn, self._sock = proc, parent, _bulk(parent)
        self.children += 1
        return parent

    def disarm(self, data: bytes, detected_type: str) -> DisarmResult:
        """``disarm`` of one file in the session's child."""
        return self.disarm_all([(data, detected_type)])[0]

    def disarm_all(self, files: list[tuple[bytes, str]]) -> list[DisarmResult]:
        """``disarm`` of each ``(data, detected type)`` in turn, in order.

        The files go to the child together and their answers come back one
        by one, each within the per-file bound: one wake-up of the child for
        all of them, not a round trip each.  A file that fails ends its
        child, and the files after it go to a new one; should the child die
        taking the files in, they go one at a time."""
        results: list[DisarmResult] = []
        together = True
        while len(results) < len(files):
            done = self._round(files[len(results):] if together else files[len(results):len(results) + 1])
            if not done:
                together = False
            results.extend(done)
        return results

    def _round(self, files: list[tuple[bytes, str]]) -> list[DisarmResult]:
        """The answers for the first files of ``files`` sent to the child
        at once, up to and including the first that failed; none when the
        child could not take several files in (one file always gets one)."""
        timeout = self.budget.seconds + self.budget.check_seconds + 5
        if self._conn is None or self._sock is None:
            self._start()
        assert self._conn is not None and self._sock is not None
        sock = self._sock
        try:
            # All of it within one file's bound: a child that stops reading cannot hold the parent.
            deadline = time.monotonic() + timeout
            _send_within(sock, _frame(json.dumps({"files": [{"type": t, "size": len(d)} for d, t in files]}).encode()),
                         deadline)
            for data, _ in files:
                _send_within(sock, data, deadline)
        except OSError:
            if len(files) > 1:
                self.close()
                return []
            return [self._settle(files[0][0], None, "", timeout)]
        out: list[DisarmResult] = []
        for data, _ in files:
            result: DisarmResult | None = None
            why = ""
            try:
                result = self._read_answer(sock, time.monotonic() + timeout)
            except (EOFError, OSError):
                result = None  # the child died, or hung (TimeoutError is an OSError)
            except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as e:
                why = f"the disarm process answered badly: {type(e).__name__}: {e}"[:300]
            out.append(self._settle(data, result, why, timeout))
            if out[-1].status == "failed":
                break
        return out

    def _settle(self, data: bytes, result: DisarmResult | None, why: str, timeout: float) -> DisarmResult:
        """The result for ``data`` from the child's answer (None: none
        came), with the hashes computed here; a failed file ends the child."""
        original = _sha256(data)
        if result is None or result.status == "failed":
            exitcode = self.close()
            if result is None and not why:
                why = "over budget: the disarm process failed ({})".format(
                    f"took longer than {timeout:g} s" if exitcode is None or exitcode == -9
                    else f"exit status {exitcode}")
        if result is None:
            return DisarmResult("failed", reason=why, original_sha256=original)
        return _replace(result, original_sha256=original,
                        sha256=_sha256(result.data) if result.data is not None else None)

    def _read_answer(self, sock: socket.socket, deadline: float) -> DisarmResult:
        """The child's answer, all of it by ``deadline``: its JSON line (at
        most ``_MAX_HEAD`` bytes), then the bytes the line announces, at
        most the child's own memory limit in all."""
        head = json.loads(_recv_frame(sock, deadline))
        body = _recv_exact(sock, sum(_answer_lengths(head)), limit=self.budget.memory, deadline=deadline)
        return _decode_parts(head, body)

    def close(self) -> int | None:
        """End the child (it exits when the pipe closes; killed if it does
        not at once); its exit code, None when it had to be killed."""
        proc, conn, sock = self._proc, self._conn, self._sock
        self._proc = self._conn = self._sock = None
        if sock is not None:
            sock.close()
        if conn is not None:
            conn.close()
        if proc is None:
            return 0
        proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return None
        return proc.exitcode


def disarm_forked(data: bytes, detected_type: str, *, budget: Budget = Budget()) -> DisarmResult:
    """``disarm`` of one file in a child forked from the fork server (a
    ``Session`` of one file).  Blocking."""
    with Session(budget) as session:
        return session.disarm(data, detected_type)


def encode_answer(result: DisarmResult) -> bytes:
    """The child's answer: one JSON line, then the cleaned bytes and each
    extracted file's bytes, in order."""
    head, blobs = _answer(result)
    return head + b"\n" + b"".join(blobs)


def _answer(result: DisarmResult) -> tuple[bytes, list[bytes]]:
    """``encode_answer``'s JSON line (without its newline) and the byte
    strings that follow it."""
    blobs = ([result.data] if result.data is not None else []) + [e.data for e in result.extracted]
    head = {
        "status": result.status, "removed": list(result.removed), "new_type": result.new_type,
        "new_extension": result.new_extension, "reason": result.reason,
        "data": len(result.data) if result.data is not None else None,
        "extracted": [[e.filename, len(e.data)] for e in result.extracted],
    }
    return json.dumps(head).encode(), blobs


def _answer_lengths(head: dict[str, Any]) -> list[int]:
    """The byte counts an answer's parsed JSON line announces (ValueError
    when they are not counts)."""
    lengths = ([] if head["data"] is None else [head["data"]]) + [n for _, n in head["extracted"]]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths):
        raise ValueError("bad length")
    return lengths


def decode_answer(raw: bytes) -> DisarmResult:
    """The ``DisarmResult`` in a child's answer (ValueError when malformed)."""
    line, sep, rest = raw.partition(b"\n")
    if not sep:
        raise ValueError("no header")
    return _decode_parts(json.loads(line), rest)


def _decode_parts(head: dict[str, Any], rest: bytes | bytearray) -> DisarmResult:
    """The ``DisarmResult`` in an answer's parsed JSON line and the bytes
    after it; ValueError unless every field is what ``_answer`` writes."""
    status = head["status"]
    if status not in ("clean", "disarmed", "failed"):
        raise ValueError("unknown status")
    if (head["data"] is None) == (status == "disarmed"):
        raise ValueError(f"a {status} answer {'without' if status == 'disarmed' else 'with'} data")
    if head["new_type"] is not None and head["new_type"] not in TYPES:
        raise ValueError("a new type disarm never gives")
    extension = filetypes.DEFAULT_EXTENSIONS.get(head["new_type"], ())[:1] if head["new_type"] else ()
    if head["new_extension"] is not None and head["new_extension"] not in extension:
        raise ValueError("a new extension that is not the new type's")
    if not isinstance(head["reason"], str) or not isinstance(head["removed"], list) \
            or not all(isinstance(w, str) for w in head["removed"]) or not isinstance(head["extracted"], list):
        raise ValueError("bad fields")
    view = memoryview(rest)
    pos = 0

    def take(n: object) -> bytes:
        nonlocal pos
        if not isinstance(n, int) or isinstance(n, bool) or n < 0 or pos + n > len(view):
            raise ValueError("bad length")
        chunk = bytes(view[pos:pos + n])
        pos += n
        return chunk

    body = take(head["data"]) if head["data"] is not None else None
    extracted = []
    for entry in head["extracted"]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError("bad extracted file")
        extracted.append(Extracted(entry[0], take(entry[1])))
    if pos != len(view):
        raise ValueError("trailing bytes")
    return DisarmResult(status, body, tuple(head["removed"]), tuple(extracted), head["new_type"],
                        head["new_extension"], head["reason"])


def child_main() -> int:
    """The child's side of ``disarm_isolated``: limit itself, read the
    request on stdin, answer on stdout."""
    import resource
    raw = sys.stdin.buffer.read()
    line, _, data = raw.partition(b"\n")
    request = json.loads(line)
    budget = Budget(**request["budget"])
    resource.setrlimit(resource.RLIMIT_AS, (budget.memory, budget.memory))
    cpu = int(budget.seconds + budget.check_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    del raw
    result = disarm(data, request["type"], budget=budget, hashes=False)
    sys.stdout.buffer.write(encode_answer(result))
    sys.stdout.buffer.flush()
    return 0


__all__ = ["Budget", "DisarmResult", "Extracted", "PDF", "OOXML_TYPES", "TYPES", "Session", "disarm", "disarm_forked",
           "disarm_isolated", "prestart", "summary"]
