"""The pipeline: what happens to one message between the spool and delivery.

The processing is a list of named steps held as data (``STEPS``), each a
small class with one job, run in order by ``Pipeline.process`` on one
``MessageJob``:

    verify      DKIM, SPF, DMARC, ARC on the message as it arrived   (authenticity.py)
    parse       the MIME tree by offsets; unexaminable: quarantine    (parse.py)
    unpack      Outlook TNEF into its files                          (unpack.py)
    identify    customer id, Message-ID, text and HTML bodies         (identify.py)
    examine     measure, detect, scan, decide each part               (examine.py)
    disarm      PDFs and Office files rewritten without active content (disarm.py)
    offload     store what the policies send to storage, with links  (offload.py)
    quarantine  keep what they refused, notices in its place          (quarantine.py)
    uuencoded   files uuencoded inside the text                       (uuencoded.py)
    rewrite     the output as segments, trace headers on top          (rewrite.py)
    notify      the automatic reply to the sender                     (notify.py)
    seal        Authentication-Results, ARC and DKIM on the result    (authenticity.py)

A step with an ``enabled(job)`` method runs only when it says so: that is
how a route's config chooses the optional ones (``unpack_tnef``,
``autoreply``; ``[auth]`` for verify and seal, which only the SMTP relay
runs: inside an MTA, the MTA authenticates and signs).  When a message
cannot be examined at all, parse quarantines it whole and marks the job
finished: only the steps marked ``always`` still run.

The SMTP relay's queue runner (gateway/runner.py) and the milter
(gateway/ingress/milter.py) run the same ``Pipeline``; neither the pipeline
nor the milter knows the runner.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway import logs
from gateway.config import RouteSettings
from gateway.mime.decode import message_header
from gateway.mime.rewrite import segments_size
from gateway.mime.source import Source
from gateway.pipeline.authenticity import Seal, Verify
from gateway.pipeline.disarm import Disarm
from gateway.pipeline.examine import Examine
from gateway.pipeline.identify import Identify
from gateway.pipeline.job import Budget, MessageJob
from gateway.pipeline.notify import Notify
from gateway.pipeline.offload import Offload
from gateway.pipeline.parse import Parse
from gateway.pipeline.quarantine import Quarantine
from gateway.pipeline.rewrite import Rewrite, result
from gateway.pipeline.services import Services
from gateway.pipeline.step import Step
from gateway.pipeline.unpack import Unpack
from gateway.pipeline.uuencoded import Uuencoded
from gateway.spool.envelope import Envelope

log = logs.get("worker")


STEPS: list[type[Step]] = [Verify, Parse, Unpack, Identify, Examine, Disarm, Offload, Quarantine,
                                           Uuencoded, Rewrite, Notify, Seal]


class Pipeline:
    """The steps, built once per config, run on each message."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.steps: list[Step] = [make(services) for make in STEPS]

    @property
    def names(self) -> list[str]:
        """The steps' names, in order."""
        return [s.name for s in self.steps]

    async def process(self, src: Source, original: Path, envelope: Envelope, route: RouteSettings,
                      work: Callable[[str], Path], *, authenticate: bool = True) -> MessageJob:
        """Run the steps on the message in ``src`` (the file ``original``);
        ``work(name)`` is where a work file of this message goes.  The
        job's segments refer to ``job.path`` when set (an unpacked copy),
        else to ``original``."""
        qlog = log.bind(queue_id=envelope.queue_id, route=route.name)
        job = MessageJob(envelope=envelope, route=route, original=original, work=work, log=qlog,
                         budget=Budget(self.services.cfg.worker.max_cpu_seconds), authenticate=authenticate,
                         src=src)
        # Every line written while the steps run (theirs, the services',
        # the stores') carries the queue id, the client and, once the
        # headers are parsed, the Message-ID.
        with logs.message(envelope.queue_id, client=envelope.client_addr):
            try:
                named = False
                for step in self.steps:
                    if job.finished and not step.always:
                        continue
                    enabled = getattr(step, "enabled", None)
                    if enabled is not None and not enabled(job):
                        continue
                    await step.run(job)
                    if not named and job.root is not None:
                        named = True
                        job.message_id = job.message_id or message_header(job.root.headers, "Message-ID").strip()
                        logs.set_message_id(job.message_id)
            finally:
                if job.src is not None and job.src is not src:
                    job.src.close()
            job.result = result(job)
            qlog.info("processed", offloaded=len(job.offloaded),
                      offloaded_bytes=sum(o.size for o in job.offloaded), failed=len(job.failed),
                      refused=len(job.refused), size_in=src.size, size_out=segments_size(job.segments))
        return job

    async def process_file(self, path: Path, envelope: Envelope, route: RouteSettings) -> MessageJob:
        """Run the pipeline on a message file outside the spool (the milter's
        temporary file), without verify and seal; work files are named
        ``PATH.NAME``."""
        with Source(path) as src:
            return await self.process(src, path, envelope, route,
                                      lambda name: path.with_name(f"{path.name}.{name}"), authenticate=False)
