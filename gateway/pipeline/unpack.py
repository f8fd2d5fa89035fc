"""Unpack: Outlook's winmail.dat (TNEF) parts become the files they carry,
in a copy of the message the later steps read instead (``unpacked.eml``).
A TNEF that does not unpack stays packed, and the policies refuse it."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway import metrics
from gateway.mime import tnef
from gateway.mime.decode import decoded_bytes
from gateway.mime.parse import Part
from gateway.mime.rewrite import Replacement, plan, split_fields, write_segments
from gateway.mime.source import Source
from gateway.pipeline.job import Budget, MessageJob
from gateway.pipeline.parse import parse_timed
from gateway.pipeline.step import Step

# The message with its TNEF parts unpacked, beside the original.
UNPACKED = "unpacked.eml"


class Unpack(Step):
    """Unpack TNEF parts (on routes with ``unpack_tnef``) and parse the result."""

    name = "unpack"
    always = False

    def enabled(self, job: MessageJob) -> bool:
        """On routes that unpack, for messages that have a TNEF part."""
        return job.route.unpack_tnef and job.root is not None and any(tnef.is_tnef(p) for p in job.root.leaves())

    async def run(self, job: MessageJob) -> None:
        assert job.src is not None and job.root is not None
        dest = job.work(UNPACKED)
        if not await _unpack(job.src, job.root, dest, job.log, job.budget):
            return
        job.src.close()
        job.src, job.path, job.unpacked = Source(dest), dest, True
        job.root, spent = await asyncio.to_thread(parse_timed, job.src, self.services.limits)
        job.budget.spend(spent)


def _unpack_part(src: Source, leaf: Part, seconds: float) -> list[tnef.TnefFile]:
    """The files in one TNEF part, unpacked in a child process (blocking)."""
    return tnef.unpack_isolated(decoded_bytes(src, leaf), seconds)


async def _unpack(src: Source, root: Part, dest: Path, qlog: object, budget: Budget) -> bool:
    """Write ``dest``: the message with each readable TNEF part replaced by
    the files it carries; False when there is none to unpack.  Each TNEF is
    parsed in a child process given what is left of the message's CPU
    ``budget`` (tnefparse can loop on counts the blob declares), and the
    child's wall time is spent from it; none is left, the TNEF stays packed."""
    edits: list[Replacement] = []
    for leaf in root.leaves():
        if not tnef.is_tnef(leaf):
            continue
        started = time.monotonic()
        try:
            if budget.exhausted:
                raise tnef.TnefError("the time for examining the message ran out")
            files = await asyncio.to_thread(_unpack_part, src, leaf, budget.limit - budget.spent)
        except tnef.TnefError as e:
            qlog.warning("TNEF not unpacked; the policies refuse it packed",  # type: ignore[attr-defined]
                         part=leaf.path or "1", reason=str(e))
            metrics.TNEF_PARTS.labels("failed").inc()
            continue
        finally:
            budget.spend(time.monotonic() - started)
        keep = b""
        if leaf is root:
            keep = b"".join(raw for name, raw in split_fields(src.read(root.start, root.body_start))
                            if not name.startswith("content-") and raw.strip())
        qlog.info("TNEF unpacked", part=leaf.path or "1", files=[f.name for f in files])  # type: ignore[attr-defined]
        metrics.TNEF_PARTS.labels("unpacked").inc()
        edits.append(Replacement(leaf, "", raw=await asyncio.to_thread(tnef.entity, files, keep)))
    if not edits:
        return False
    segments = plan(src, root, replacements=edits, links=[], text_part=None, html_part=None,
                    link_template="", trace=b"")
    await asyncio.to_thread(write_segments, src, segments, dest)
    return True
