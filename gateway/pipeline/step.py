"""What every step of the pipeline is: a name, the services it shares with
the others, and one method that does its job on a message."""
from __future__ import annotations

from gateway.pipeline.job import MessageJob
from gateway.pipeline.services import Services

# Work on at most this many bytes (a small message's parse, a small part's
# decoding and checks) is done on the event loop: cheaper than the hop to a
# thread and back, which costs GIL hand-overs on both sides.
INLINE_BYTES = 64 << 10


class Step:
    """Base of the steps listed in gateway/pipeline/__init__.py (STEPS).

    A step that defines ``enabled(job)`` runs only when it returns True;
    ``always`` steps run even for a message quarantined whole."""

    name = ""
    always = False

    def __init__(self, services: Services) -> None:
        self.services = services

    async def run(self, job: MessageJob) -> None:
        """Do the step's one job on ``job``."""
        raise NotImplementedError
