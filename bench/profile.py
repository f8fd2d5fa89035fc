"""Profile the gateway on one workload with py-spy, and say where the time goes.

Starts ``attachment-gateway serve`` (one process, relaying to smtp-sink) as
the bench does, records it with ``py-spy record --format raw`` (every
thread holding the GIL, the fork server's children included) while one
workload is sent,
then prints the functions with the most samples, by their own time (self)
and with what they call (inclusive), as shares of all samples::

    python bench/profile.py --workload replies     # the mix's small MIME replies
    python bench/profile.py --workload many        # the 5 MB message in 200 attachments
    python bench/profile.py --workload mix         # the whole mix, attachments included

Run as root (py-spy attaches with ptrace).  Sampling pauses the process a
moment at each sample, so the wall-clock figures it prints are slower than
the bench's; the shares are what matters.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/profile.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from bench.candidates import Gateway, find_gateway_executable  # noqa: E402
from bench.mix import build_many_attachments, build_mix, send_mix  # noqa: E402
from bench.run import send_large  # noqa: E402

#: py-spy's raw frame: "function (file:line)"; the line is dropped to group by function.
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m.group(2)
    for marker in ("/gateway/", "/policies/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) + 1:]
            break
    return f"{m.group(1)} ({path})"


def summarise(raw: Path, top: int) -> str:
    """The top functions of a py-spy raw file, by self and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        # The first frames are the process and thread ("process 123:..."): not functions.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    out = [f"{total} samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        out.append(f"top {top} by {title} time:")
        out.extend(f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the profile; print the summary; keep the raw file."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=("replies", "many", "mix"), default="replies")
    p.add_argument("--messages", type=int, default=400, help="replies or mix: how many (default 400)")
    p.add_argument("--repeat", type=int, default=10, help="many: how many times the message is sent (default 10)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--all-threads", action="store_true",
                   help="sample every thread, not only the one holding the GIL (the default: where CPU goes; "
                        "idle pool threads blocked in a lock otherwise count as busy)")
    p.add_argument("--out", type=Path, default=None, help="where to keep the raw profile")
    p.add_argument("--gateway", help="the attachment-gateway executable (default: .venv/bin, then PATH)")
    args = p.parse_args(argv)
    exe = find_gateway_executable(args.gateway)
    if exe is None:
        print("attachment-gateway executable is missing", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    os.chmod(workdir, 0o755)
    raw = args.out or workdir / f"{args.workload}.raw"
    gw = Gateway(workdir, exe, sink_dump=False, processes=1)
    gw.start()
    try:
        sink = gw.arrival_sink
        assert sink is not None and gw.proc is not None
        mix = build_mix(max(args.messages * 100 // 85 + 3, 4), 18)
        replies = [m for m in mix if m.kind == "reply"][:args.messages]
        many = build_many_attachments(18)
        # Warm up (imports, the fork server, pooled connections): not recorded.
        send_mix(gw.smtp_port, replies[:20], 4, 120)
        send_large(gw.smtp_port, many, 120)
        sink.wait_for_count(21, timeout=120)
        base = sink.received_count()
        # py-spy is installed in the venv beside this Python (pip install -e '.[test]').
        search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        pyspy = shutil.which("py-spy", path=search)
        if pyspy is None:
            print("py-spy is missing: pip install py-spy", file=sys.stderr)
            return 2
        spy = subprocess.Popen([pyspy, "record", "--pid", str(gw.proc.pid), "--subprocesses", "--format", "raw",
                                "--rate", str(args.rate), "--output", str(raw),
                                *([] if args.all_threads else ["--gil"])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attached
        t0 = time.monotonic()
        if args.workload == "replies":
            send_mix(gw.smtp_port, replies, 20, 600)
            n = len(replies)
        elif args.workload == "mix":
            mix = mix[:args.messages]
            send_mix(gw.smtp_port, mix, 20, 600)
            n = len(mix)
        else:
            for _ in range(args.repeat):
                send_large(gw.smtp_port, many, 120)
            n = args.repeat
        sink.wait_for_count(base + n, timeout=600)
        elapsed = time.monotonic() - t0
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not raw.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
            return 1
        print(f"{args.workload}: {n} message(s) in {elapsed:.2f} s under py-spy ({n / elapsed:.1f}/s)")
        print(summarise(raw, args.top))
        print(f"raw profile: {raw}")
    finally:
        gw.stop()
        # The gateway's spool, logs and config go; the raw profile stays
        # (in the temporary directory when --out did not say where).
        for entry in workdir.iterdir():
            if entry == raw:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if args.out is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
