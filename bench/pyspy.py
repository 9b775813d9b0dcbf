"""Where the seed-chain sidecar spends its time under load: a py-spy sample, summarised.

Why it exists: the issue asks, where a target is missed, to profile the hot path rather than
guess. With `--profile`, the proxy measurement attaches py-spy (a sampling profiler that reads the
process from outside, so the sidecar runs unmodified) to the seed-chain sidecar during one extra
concurrency-32 JSON run, writes the collapsed stacks next to the results (speedscope and
flamegraph.pl read them), and adds the functions
with the most samples (own time, and time including callees, by packgate module) to the report.
py-spy lives in its own cached virtualenv like the peers (it is a tool, not a dependency).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from . import peers
from .common import Report, Row, log

PY_SPY_VERSION = "0.4.3"


def py_spy() -> Path:
    venv = peers.ensure_venv("py-spy", PY_SPY_VERSION, [f"py-spy=={PY_SPY_VERSION}"])
    return venv / "bin/py-spy"


def record(pid: int, seconds: float, out_dir: Path, load: Callable[[], None]) -> Path | None:
    """Sample `pid` while `load()` runs; returns the collapsed-stack file (None if py-spy fails)."""
    try:
        tool = py_spy()
    except (peers.InstallError, OSError) as exc:
        log(f"profile: py-spy unavailable: {exc}")
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "seed-sidecar.collapsed.txt"  # speedscope and flamegraph.pl read this
    argv = [str(tool), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
            "250", "--nonblocking", "--format", "raw", "--output", str(raw)]  # fmt: skip
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        load()
    finally:
        _, err = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0 or not raw.exists():
        log(f"profile: py-spy failed: {err.decode(errors='replace')[-300:]}")
        return None
    return raw


def summarise(report: Report, raw: Path, top: int = 12) -> None:
    """Own-time leaders and packgate functions by inclusive time, as report rows."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            # The entry frames (cli main, run, the event loop) contain everything: skip them.
            if "packgate_" in frame and "/cli.py" not in frame and "/run.py" not in frame:
                inclusive[frame] += count
    section = report.section(
        "profile", "Seed-chain sidecar under load, py-spy samples (share of all samples)",
        [("own_pct", "own %"), ("incl_pct", "incl. callees %")],
    )  # fmt: skip
    if not total:
        section.add(Row("py-spy", status="error", note="no samples"))
        return
    for frame, count in own.most_common(top):
        section.add(Row(f"own: {frame}", {"own_pct": 100 * count / total}))
    for frame, count in inclusive.most_common(top):
        section.add(Row(f"incl: {frame}", {"incl_pct": 100 * count / total}))
    section.notes.append(f"{total} samples at 250 Hz; collapsed stacks in {raw}")


def _short(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `function (module.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    module = "/".join(parts[-2:]) if "packgate_" in path else parts[-1]
    return f"{name} ({module})"
