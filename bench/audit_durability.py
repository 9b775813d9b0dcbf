"""What durable audit records cost: the same sidecar with and without waiting for the fsync.

Why it exists: since issue 13 a whole response is sent only once its audit record is fsynced,
and a stream's first byte waits for its durable write-ahead record (written while the request is
upstream), so a `kill -9` cannot lose the record of an answer a client got. That wait sits on
the request path; this measures it side by side in one run: the seed-style audit chain
(`audit-logger`, every request logged) as shipped, the same with `--no-durable-audit` (records
written by the same thread, but not waited for), and an empty chain as the floor. Concurrent
requests share fsyncs (group commit), so the cost per request falls as concurrency rises. The
data directory is on the bench work directory's filesystem (named in the notes); on a slower
disk the fsync, and so the cost, is larger.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from processes import free_port

from tests.support.gateway_cli import gateway_argv

from . import payloads
from .common import BENCH, Cores, Report, Row, Service, log, median, pinned
from .proxy import AUDIT_KEY, UPSTREAM_KEY, Options, _loadgen, empty_config

SCENARIOS = [("json", 1), ("json", 32), ("stream", 1)]
SETUPS = ("durable", "not-durable", "no-audit")


def _config(base_url: str, audit: bool) -> dict[str, Any]:
    config = empty_config(base_url)
    config["pack"]["name"] = "bench-audit"
    if audit:
        config["policies"] = {"chain": ["audit-logger"]}
        config["policy"] = {"audit-logger": {"log_all_access": True}}
    return config


def _start(key: str, config: dict[str, Any], port: int, work: Path, cpu: str | None) -> Service:
    """A `packgate gateway run` process; `--no-durable-audit` for the not-durable setup."""
    admin = free_port()
    config_path = work / f"{key}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    data = work / f"{key}-data"
    data.mkdir(exist_ok=True)
    extra = ["--no-durable-audit"] if key == "not-durable" else []
    argv = gateway_argv(port, admin, config_path, data, *extra)
    env = {"OPENAI_API_KEY": UPSTREAM_KEY, "PACKGATE_AUDIT_KEY": AUDIT_KEY}
    service = Service(key, pinned(argv, cpu), work / f"{key}.log", env=env).start()
    service.wait_http(f"http://127.0.0.1:{admin}/readyz", 60)
    return service


def _filesystem(path: Path) -> str:
    done = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False
    )
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines else "unknown"


def run(report: Report, opts: Options) -> None:
    cores = Cores.detect()
    work = opts.workdir / "audit_durability"
    work.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for kind, streamed in (("json", False), ("stream", True)):
        bodies[kind] = work / f"{kind}.json"
        bodies[kind].write_bytes(payloads.chat_body(streamed))
    section = report.section(
        "audit_durability",
        "Durable audit records (issue 13): latency with and without waiting for the fsync",
        [
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("ttfb_p50_ms", "TTFB p50 ms"),
            ("rps", "req/s"),
            ("added_p50_ms", "+p50 vs not durable ms"),
            ("added_ttfb_ms", "+TTFB p50 vs not durable ms"),
        ],
    )
    section.notes.append(cores.describe())
    section.notes.append(
        f"audit segments on {_filesystem(work)}; {opts.rounds} rounds x {opts.duration:g}s per "
        "setup and scenario, order rotated; medians over rounds"
    )
    started: list[Service] = []
    try:
        port = free_port()
        argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        upstream = Service("upstream", pinned(argv, cores.load), work / "upstream.log").start()
        started.append(upstream)
        upstream.wait_http(f"http://127.0.0.1:{port}/_bench/health", 30)
        base = f"http://127.0.0.1:{port}/v1"
        ports: dict[str, int] = {}
        for key in SETUPS:
            ports[key] = free_port()
            config = _config(base, key != "no-audit")
            started.append(_start(key, config, ports[key], work, cores.sut))
        results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for round_no in range(opts.rounds):
            order = SETUPS[round_no % 3 :] + SETUPS[: round_no % 3]
            for kind, concurrency in SCENARIOS:
                for key in order:
                    log(f"audit_durability round {round_no + 1}: {key} {kind} c{concurrency}")
                    result = _loadgen(ports[key], bodies[kind], concurrency, opts, cores.load)
                    results.setdefault((key, kind, concurrency), []).append(result)
        for kind, concurrency in SCENARIOS:
            base_p50 = _med(results, ("not-durable", kind, concurrency), "latency_ms", "p50")
            base_ttfb = _med(results, ("not-durable", kind, concurrency), "ttfb_ms", "p50")
            for key in SETUPS:
                got = results[(key, kind, concurrency)]
                p50 = _med(results, (key, kind, concurrency), "latency_ms", "p50")
                ttfb = _med(results, (key, kind, concurrency), "ttfb_ms", "p50")
                section.add(
                    Row(
                        f"{key} {kind} c{concurrency}",
                        {
                            "p50_ms": p50,
                            "p99_ms": _med(results, (key, kind, concurrency), "latency_ms", "p99"),
                            "ttfb_p50_ms": ttfb,
                            "rps": median([r["rps"] for r in got]),
                            "added_p50_ms": _diff(p50, base_p50),
                            "added_ttfb_ms": _diff(ttfb, base_ttfb),
                        },
                    )
                )
    finally:
        for service in reversed(started):
            service.stop()


def _med(
    results: dict[tuple[str, str, int], list[dict[str, Any]]],
    key: tuple[str, str, int],
    metric: str,
    quantile: str,
) -> float | None:
    return median([r[metric][quantile] for r in results.get(key, [])])


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)
