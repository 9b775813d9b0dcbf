"""Shared plumbing of the benchmark: the report, child processes, CPU placement, /proc readings.

Why it exists: every measurement module starts processes on loopback, pins them to a core,
waits for them to be ready, reads their memory and CPU time, and adds rows to one report. Doing
that in one place keeps the modules about *what* they measure, and keeps the rules the same for
every setup (the same pinning, the same readiness check, the same way a missing prerequisite
becomes a row marked pending instead of a crash or a silently missing number).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CACHE = Path(os.environ.get("PACKGATE_BENCH_CACHE", Path.home() / ".cache/packgate/bench"))

Value = float | int | str | bool | None


# --- the report ----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a setup or a measurement, its numbers, and whether it ran."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | pending | skipped | error
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "note": self.note, **self.values}


@dataclass
class Section:
    title: str
    columns: list[tuple[str, str]]  # (key in Row.values, header)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def find(self, name: str) -> Row | None:
        return next((row for row in self.rows if row.name == name), None)


@dataclass
class Verdict:
    target: str
    measured: float | None
    limit: float
    unit: str
    higher_is_better: bool
    detail: str = ""

    @property
    def result(self) -> str:
        if self.measured is None:
            return "PENDING"
        ok = self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit
        return "PASS" if ok else "MISS"


@dataclass
class Report:
    quick: bool
    sections: dict[str, Section] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def section(self, key: str, title: str, columns: Sequence[tuple[str, str]]) -> Section:
        if key not in self.sections:
            self.sections[key] = Section(title, list(columns))
        return self.sections[key]

    def to_json(self, command: str) -> dict[str, Any]:
        return {
            "command": command,
            "quick": self.quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "sections": {
                key: {
                    "title": section.title,
                    "columns": [list(c) for c in section.columns],
                    "rows": [row.to_json() for row in section.rows],
                    "notes": section.notes,
                }
                for key, section in self.sections.items()
            },
            "targets": [
                {
                    "target": v.target,
                    "measured": v.measured,
                    "limit": v.limit,
                    "unit": v.unit,
                    "higher_is_better": v.higher_is_better,
                    "result": v.result,
                    "detail": v.detail,
                }
                for v in self.verdicts
            ],
        }


def report_from_json(data: dict[str, Any]) -> Report:
    """Rebuild a report from its JSON, to re-render a finished run."""
    report = Report(quick=bool(data.get("quick")))
    report.started = calendar.timegm(time.strptime(data["started"], "%Y-%m-%dT%H:%M:%SZ"))
    for key, body in data["sections"].items():
        rows = [
            Row(
                raw["name"],
                {k: v for k, v in raw.items() if k not in ("name", "status", "note")},
                raw.get("status", "ok"),
                raw.get("note", ""),
            )
            for raw in body["rows"]
        ]
        columns = [(str(k), str(h)) for k, h in body.get("columns", [])] or [
            (k, k) for k in dict.fromkeys(k for row in rows for k in row.values)
        ]
        report.sections[key] = Section(body["title"], columns, rows, list(body["notes"]))
    for t in data.get("targets", []):
        report.verdicts.append(
            Verdict(t["target"], t["measured"], t["limit"], t["unit"],
                    bool(t.get("higher_is_better", t["unit"] in ("x", " MB/s"))),
                    t.get("detail", ""))
        )  # fmt: skip
    return report


def measure_in_trees(
    module: str, child_args: Sequence[str], baseline: Path | None
) -> dict[str, Any]:
    """Run `python -m <module> --json <child_args>` with this tree's sidecar and operator first on
    PYTHONPATH, and again with `baseline`'s (another checkout: an A/B of a change in one run);
    returns each run's JSON (its last output line) by label, "this tree" then "baseline"."""
    trees = {"this tree": REPO}
    if baseline is not None:
        trees["baseline"] = baseline.resolve()
    results: dict[str, Any] = {}
    for label, root in trees.items():
        env = {**os.environ, "PYTHONPATH": f"{root}/sidecar:{root}/operator:{REPO}"}
        argv = [sys.executable, "-m", module, "--json", *child_args]
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{module} in {label} failed: {done.stderr[-800:]}")
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def fmt(value: Value, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key.endswith("_x"):
            return f"{value:.2f}x"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3f}"
    return str(value)


def verdict_value(v: Verdict) -> str:
    """The measured value as `fmt` shows it, with a third decimal where `fmt`'s rounding would
    show a miss as the bound itself (0.499x against >= 0.50x)."""
    if v.measured is None:
        return "-"
    text = fmt(round(v.measured, 3))
    if text == fmt(v.limit) and v.measured != v.limit:
        text = f"{v.measured:.3f}"
    return text


def render(report: Report) -> str:
    """The whole report as one plain-text table, section by section, targets last."""
    out: list[str] = []
    for section in report.sections.values():
        headers = ["", *(h for _, h in section.columns), "status"]
        body = []
        for row in section.rows:
            cells = [row.name, *(fmt(row.values.get(k), k) for k, _ in section.columns)]
            cells.append(row.status if row.status != "ok" else "")
            body.append(cells)
        widths = [
            max(len(h), *(len(r[i]) for r in body)) if body else len(h)
            for i, h in enumerate(headers)
        ]
        out.append(f"== {section.title}")
        out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        for cells in body:
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        for row in section.rows:
            if row.note:
                out.append(f"   * {row.name}: {row.note}")
        for note in section.notes:
            out.append(f"   - {note}")
        out.append("")
    if report.verdicts:
        out.append("== Targets (same run, same machine)")
        width = max(len(v.target) for v in report.verdicts)
        for v in report.verdicts:
            measured = verdict_value(v)
            bound = (">=" if v.higher_is_better else "<=") + f" {fmt(v.limit)}{v.unit}"
            detail = f"  ({v.detail})" if v.detail else ""
            out.append(
                f"{v.target.ljust(width)}  {measured:>8}{v.unit}  {bound:<12} {v.result}{detail}"
            )
    return "\n".join(out)


def render_markdown(report: Report, command: str) -> str:
    """The same report as Markdown tables, for the README's Performance section."""
    info = machine()
    out = [
        f"Measured with `{command}` on {info['cpu']} ({info['cores']} cores, "
        f"{info['memory_gib']} GiB, Linux {info['kernel']}, Python {info['python']}), "
        f"{time.strftime('%Y-%m-%d', time.gmtime(report.started))}"
        + (" (--quick: tiny configuration, not for publication)" if report.quick else "")
        + ".",
        "",
    ]
    for section in report.sections.values():
        headers = ["", *(h for _, h in section.columns)]
        out.append(f"**{section.title}**")
        out.append("")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "---|" * len(headers))
        for row in section.rows:
            cells = [_md(row.name), *(fmt(row.values.get(k), k) for k, _ in section.columns)]
            if row.status != "ok":
                cells = [_md(row.name), f"*{row.status}*", *([""] * (len(headers) - 2))]
            out.append("| " + " | ".join(cells) + " |")
        notes = [f"{r.name}: {r.note}" for r in section.rows if r.note] + section.notes
        out += ["", *(f"- {_md(n)}" for n in notes), ""] if notes else [""]
    if report.verdicts:
        out += ["**Targets**", "", "| target | measured | bound | result |", "|---|---|---|---|"]
        for v in report.verdicts:
            measured = verdict_value(v) + ("" if v.measured is None else v.unit)
            bound = (">= " if v.higher_is_better else "<= ") + f"{fmt(v.limit)}{v.unit}"
            result = v.result + (f" ({v.detail})" if v.detail else "")
            out.append(f"| {v.target} | {measured} | {bound} | {result} |")
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    """Escape what Markdown would take for HTML tags or table cell breaks."""
    return text.replace("<", "\\<").replace(">", "\\>").replace("|", "\\|").replace("\n", " ")


# --- statistics ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# --- CPU placement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """Where things run. On two or more cores the system under test gets a core of its own and
    the load generator and the upstream share the other; on one core nothing is pinned."""

    sut: str | None
    load: str | None

    @classmethod
    def detect(cls) -> Cores:
        try:
            available = sorted(os.sched_getaffinity(0))
        except AttributeError:
            available = list(range(os.cpu_count() or 1))
        if len(available) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(str(available[-1]), str(available[0]))

    def describe(self) -> str:
        if self.sut is None:
            return "no CPU pinning (fewer than 2 cores or no taskset)"
        return (
            f"system under test pinned to CPU {self.sut}; load generator and upstream pinned "
            f"to CPU {self.load}"
        )


def pinned(argv: Sequence[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else list(argv)


# --- processes -------------------------------------------------------------------------------


class StartError(RuntimeError):
    """A process did not become ready; the message carries the reason and its log tail."""


@dataclass
class Service:
    """A child process with its log in a file, stopped with SIGTERM (then SIGKILL)."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(
        self,
        url: str,
        timeout: float,
        ok: Sequence[int] = (200,),
        give_up: Callable[[int, bytes], str | None] | None = None,
    ) -> None:
        """Wait until GET `url` answers one of `ok`; raise StartError with the reason if not.

        `give_up(status, body)` may return a reason to stop waiting early (a final refusal).
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        refusals = 0
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(f"{self.name} exited with {self.returncode()}: {self.tail()}")
            status, body = http_get(url, timeout=2)
            if status in ok:
                return
            reason = give_up(status, body) if give_up is not None else None
            refusals = refusals + 1 if reason else 0
            if reason and refusals >= 10:  # the same verdict for a second: it is final
                raise StartError(reason)
            last = f"HTTP {status}: {body[:400]!r}" if status else "connection refused"
            time.sleep(0.1)
        raise StartError(f"{self.name} not ready after {timeout:.0f}s ({last})")

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return " | ".join(text[-lines:])
        return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all (in reverse) on the way out."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def http_post(
    url: str, body: bytes, headers: Mapping[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


# --- /proc ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        todo += _children(current)
    return seen


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int, tree: bool = True) -> float:
    """Resident set size in MiB (of the process and its descendants when `tree`)."""
    pids = process_tree(pid) if tree else [pid]
    return sum(_status_kb(p, "VmRSS") for p in pids) / 1024


def peak_rss_mb(pid: int, tree: bool = True) -> float:
    """High-water mark of the resident set (VmHWM) in MiB, summed over the tree."""
    pids = process_tree(pid) if tree else [pid]
    return sum(_status_kb(p, "VmHWM") for p in pids) / 1024


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU time consumed so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


# --- misc ----------------------------------------------------------------------------------


def python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
