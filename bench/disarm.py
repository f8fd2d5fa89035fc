"""The disarm step's cost: milliseconds per MB of PDF, clean and active.

A clean PDF is only parsed and walked (it passes unchanged); an active one
(a script, a launch action and an embedded program) is also rewritten,
checked with ``qpdf --check`` and its embedded file extracted.  Both carry
the same random payload stream, so the figure is per MB of a realistic
file.  Measured in process with ``time.perf_counter``, best and median of
several runs; the forked figure is what the gateway pays: a child forked
from the disarm fork server, under its memory and time limits
(``disarm_forked``), per file.

Run from the repository root: ``python bench/disarm.py [--size-mb N] [--runs N]``.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pikepdf  # noqa: E402

from gateway.disarm import PDF, Budget, DisarmResult, disarm, disarm_forked  # noqa: E402
from tests import active_documents as docs  # noqa: E402


def active_pdf(payload: int) -> bytes:
    """The clean PDF of the same size with a script, a launch action and an embedded program added."""
    pdf = pikepdf.open(io.BytesIO(docs.clean_pdf(payload=payload)))
    active = pikepdf.open(io.BytesIO(docs.pdf_embedded_exe()))
    spec = pdf.copy_foreign(active.Root.Names.EmbeddedFiles.Names[1])
    pdf.Root.Names = pikepdf.Dictionary(EmbeddedFiles=pikepdf.Dictionary(
        Names=pikepdf.Array([pikepdf.String("setup.exe"), spec])))
    pdf.Root.OpenAction = pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("app.alert(1)"))
    pdf.pages[0].obj.AA = pikepdf.Dictionary(O=pikepdf.Dictionary(S=pikepdf.Name.Launch, F=pikepdf.String("cmd.exe")))
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def measure(fn: Callable[[], DisarmResult], runs: int, expect: str) -> list[float]:
    """Seconds per run of ``fn``, each checked to give status ``expect``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        if result.status != expect:
            raise SystemExit(f"disarm gave {result.status} ({result.reason}), expected {expect}")
    return times


def run(size_mb: float = 4.0, runs: int = 7) -> dict[str, float]:
    """ms/MB (median) for each case; also printed."""
    payload = int(size_mb * 1_000_000)
    cases = {"clean": (docs.clean_pdf(payload=payload), "clean"), "active": (active_pdf(payload), "disarmed")}
    figures: dict[str, float] = {}
    for name, (data, expect) in cases.items():
        mb = len(data) / 1_000_000
        for mode, fn in (("in process", lambda d=data: disarm(d, PDF, budget=Budget())),
                         ("forked", lambda d=data: disarm_forked(d, PDF, budget=Budget()))):
            times = measure(fn, runs, expect)
            median = statistics.median(times) * 1000 / mb
            figures[f"{name} {mode}"] = median
            print(f"disarm {name:6} PDF {mode:10}: {median:8.2f} ms/MB median, {min(times) * 1000 / mb:8.2f} best "
                  f"({mb:.2f} MB, {len(times)} runs)")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    run(args.size_mb, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
