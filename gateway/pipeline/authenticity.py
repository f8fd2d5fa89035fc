"""Authenticity: DKIM, SPF, DMARC and ARC are verified on the message as it
arrived, before any step changes it; after the rewrite, our
Authentication-Results goes on top (forged ones claiming our name are cut)
and the final bytes are sealed (ARC, optional DKIM).  Both fail open: a
check or a seal that fails never stops the message."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway import metrics, srs
from gateway.authn.verify import Verification
from gateway.delivery import Content
from gateway.mime.rewrite import Segment, cut_ranges, segments_size
from gateway.pipeline.job import MessageJob
from gateway.pipeline.step import Step


class Verify(Step):
    """Check the message's authentication on the original bytes."""

    name = "verify"
    always = True

    def enabled(self, job: MessageJob) -> bool:
        """When [auth] verify is on, in the relay (the milter's MTA checks)."""
        return self.services.verifier is not None and job.authenticate

    async def run(self, job: MessageJob) -> None:
        verifier = self.services.verifier
        assert verifier is not None and job.src is not None
        started = time.monotonic()
        try:
            auth = await asyncio.to_thread(verifier.verify, job.original, job.envelope, job.src.size)
        except Exception as e:  # noqa: BLE001 - rule 2: a failed check never stops the message
            job.log.error("authentication checks failed; forwarded without results",
                          error=f"{type(e).__name__}: {e}")
            metrics.AUTH_FAILURES.labels("verify").inc()
            # Without our results, but never with a forged one under our
            # name: the next hop would take it for ours.
            drop = await asyncio.to_thread(verifier.forged_results, job.original, job.src.size)
            job.auth = Verification(b"", drop)
            return
        for method, result in auth.summary.items():
            metrics.AUTH_RESULTS.labels(method, result).inc()
        job.log.info("authentication", seconds=round(time.monotonic() - started, 4),
                     dropped_authentication_results=len(auth.drop), **auth.summary)
        job.auth = auth


class Seal(Step):
    """Put our Authentication-Results on top and seal the final bytes."""

    name = "seal"
    always = True

    def enabled(self, job: MessageJob) -> bool:
        """In the relay, when there are results to add or keys to sign with."""
        return job.authenticate and (job.auth is not None or self.services.sealer is not None)

    async def run(self, job: MessageJob) -> None:
        path = job.path or job.original
        auth = job.auth
        segments = job.segments
        if auth is not None and auth.drop and path != job.original:
            # The fields to drop are byte ranges of the original; the
            # unpacked copy has other offsets, so cut them by their text.
            segments = await asyncio.to_thread(drop_fields_by_text, segments, auth.drop, job.original, path)
            segments = [auth.header, *segments] if auth.header else segments
        elif auth is not None:
            segments = drop_ranges(segments, auth.drop, job.original)
            segments = [auth.header, *segments] if auth.header else segments
        job.segments = segments
        sealer = self.services.sealer
        if sealer is None:
            return
        size = segments_size(segments)
        limit = self.services.cfg.auth.sign_max_size
        if size > limit:
            job.log.warning("message too large to seal; forwarded unsealed", size=size, limit=limit)
            metrics.AUTH_FAILURES.labels("seal_size").inc()
            return
        content = Content(path, segments)
        # Mail to an SRS address goes out as it came, to the address it
        # names, which its sender can make their own (the platform's
        # bounces quote it): signed with our key, whatever they sent there
        # would come back to them with a valid signature of our domain, to
        # replay to anyone.  Only the ARC set, which carries our verdict on
        # it, is added.
        sign = job.route.name != srs.BOUNCE_ROUTE

        def _seal() -> bytes:
            # dkimpy signs a message it holds whole; the bound above keeps
            # that to the (small, rewritten) messages it is meant for.
            return sealer.seal(b"".join(content.chunks()), sign=sign)

        try:
            headers = await asyncio.to_thread(_seal)
        except Exception as e:  # noqa: BLE001 - fail open: unsealed beats undelivered
            job.log.error("sealing failed; forwarded unsealed", error=f"{type(e).__name__}: {e}")
            metrics.AUTH_FAILURES.labels("seal").inc()
            return
        job.segments = [headers, *segments]


def drop_ranges(segments: list[Segment], drops: list[tuple[int, int]], path: Path) -> list[Segment]:
    """``segments`` without the original's byte ranges in ``drops`` (whole
    header fields) of the file at ``path``."""
    if not drops:
        return segments
    with open(path, "rb") as f:
        raws = []
        for start, end in drops:
            f.seek(start)
            raws.append(f.read(end - start))
    return cut_ranges(segments, drops, raws)


def drop_fields_by_text(segments: list[Segment], drops: list[tuple[int, int]], original: Path,
                        path: Path) -> list[Segment]:
    """``segments`` of ``path`` with the header fields at ``drops`` in
    ``original`` cut out by their text, from the output's header block only
    (the first empty line ends it); the rest of the output stays ranges."""
    with open(original, "rb") as f:
        raws = []
        for start, end in drops:
            f.seek(start)
            raws.append(f.read(end - start))
    content = Content(path, segments)
    head = b""
    for chunk in content.chunks(window=1 << 16):
        head += chunk
        if b"\r\n\r\n" in head or len(head) > (1 << 20):
            break
    cut = head.find(b"\r\n\r\n")
    cut = len(head) if cut < 0 else cut + 4
    new_head = head[:cut]
    for raw in raws:
        new_head = new_head.replace(raw, b"")
    return [new_head, *_skip(segments, cut)]


def _skip(segments: list[Segment], n: int) -> list[Segment]:
    """``segments`` without their first ``n`` bytes."""
    out: list[Segment] = []
    for seg in segments:
        size = len(seg) if isinstance(seg, bytes) else seg[1] - seg[0]
        if n >= size:
            n -= size
            continue
        if n:
            seg = seg[n:] if isinstance(seg, bytes) else (seg[0] + n, seg[1])
            n = 0
        out.append(seg)
    return out
