"""The seed sidecar's resident memory under fresh-prompt load, in a minute instead of a bench run.

Why it exists: `make bench`'s "new prompt every request" row reads the sidecar's high-water mark
(VmHWM) after ~2 minutes of rounds; checking a memory change against the 80 MiB target that way
costs a full proxy bench. This drives `loadgen.py --vary` (a new prompt and answer in every
request, so every text is scanned and cached) against seed-chain sidecars pinned like the bench
(sidecar on `--cpu`, load generator and upstream on the other core), one after the other in one
run, and reads VmRSS / VmHWM and /proc/PID/smaps_rollup's anonymous memory idle and after each
phase. With `--baseline DIR` the same is measured for a copy of the repo: before and after side
by side, with the load average.

    taskset -c 0 .venv/bin/python -m bench.rss_fresh --cpu 1 --baseline /tmp/base --seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: bench/ and the harness (cluster/) importable
    REPO = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(REPO), str(REPO / "cluster")]

from processes import free_port

from bench import payloads
from bench.common import BENCH, Service, http_post, log, pinned
from bench.proxy import CLIENT_KEY, seed_config, start_packgate


def memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and smaps_rollup's Anonymous of one process, in MiB."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Anonymous":
                out["Anon"] = int(value.split()[0]) / 1024
    return out


def regions(pid: int) -> str:
    """Resident MiB by kind of mapping: the brk heap, other anonymous mappings (glibc's
    per-thread arenas, pymalloc's arenas, big buffers), and file-backed (code and data)."""
    sums = {"heap": 0, "anon": 0, "file": 0}
    name = ""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            first = line.split(maxsplit=5)
            if "-" in first[0] and len(first) >= 5:  # a mapping's header line
                name = first[5] if len(first) > 5 else ""
            elif first[0] == "Rss:":
                kind = "heap" if name == "[heap]" else "file" if name.startswith("/") else "anon"
                sums[kind] += int(first[1])
    return " ".join(f"{k} {v / 1024:.1f}" for k, v in sums.items())


def load(port: int, body: Path, concurrency: int, seconds: float, cpu: str | None) -> float:
    """Run loadgen --vary for `seconds`; its requests per second."""
    argv = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--body", str(body)]
    argv += ["--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "1"]
    argv += ["--auth", CLIENT_KEY, "--vary"]
    done = subprocess.run(pinned(argv, cpu), capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1]).get("rps") or 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", help="pin the sidecars here (the bench's system-under-test core)")
    parser.add_argument("--load-cpu", help="pin the load generator and upstream here")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--phases", default="json,stream", help="kinds, in order")
    parser.add_argument("--baseline", type=Path, help="also measure this copy of the repo")
    parser.add_argument("--env", default="", help="extra KEY=VALUE for this tree's sidecar")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE ...",
        help="also measure this tree with these environment variables (repeatable)",
    )
    parser.add_argument(
        "--signal",
        action="store_true",
        help="send each sidecar SIGUSR1 at idle and after each phase (for a snapshot hook "
        "installed through --env, e.g. a sitecustomize that dumps tracemalloc snapshots)",
    )
    args = parser.parse_args(argv)
    load_cpu = args.load_cpu or ("0" if args.cpu == "1" else None)
    started_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="packgate-rss-"))
    bodies = {}
    for kind in ("json", "stream"):
        bodies[kind] = work / f"{kind}.json"
        bodies[kind].write_bytes(payloads.chat_body(kind == "stream"))
    started: list[Service] = []
    try:
        up = free_port()
        argv_up = [sys.executable, str(BENCH / "upstream.py"), "--port", str(up)]
        upstream = Service("upstream", pinned(argv_up, load_cpu), work / "upstream.log").start()
        started.append(upstream)
        upstream.wait_http(f"http://127.0.0.1:{up}/_bench/health", 30)
        base = f"http://127.0.0.1:{up}/v1"
        setups: dict[str, tuple[Service, int]] = {}
        trees: list[tuple[str, dict[str, str]]] = [("new", _env(args.env))]
        if args.baseline:
            root = args.baseline.resolve()
            trees.append(("base", {"PYTHONPATH": f"{root}/sidecar:{root}/operator"}))
        for variant in args.variant:
            name, _, env_text = variant.partition("=")
            trees.append((name, _env(env_text)))
        for name, env in trees:
            port = free_port()
            service, admin = start_packgate(name, seed_config(base), port, work, args.cpu, (), env)
            started.append(service)
            service.wait_http(admin + "/readyz", 60)
            for body in bodies.values():
                status, _ = http_post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    body.read_bytes(),
                    {"Authorization": f"Bearer {CLIENT_KEY}"},
                )
                if status != 200:
                    raise RuntimeError(f"{name}: a sanity request answered HTTP {status}")
            setups[name] = (service, port)
        rows: dict[str, list[str]] = {name: [] for name in setups}
        for name, (service, _) in setups.items():
            rows[name].append(_fmt("idle", memory(service.pid), None))
            if args.signal:
                os.kill(service.pid, signal.SIGUSR1)
        for kind in args.phases.split(","):
            for name, (service, port) in setups.items():
                log(f"rss: {name} {kind} c{args.concurrency} --vary {args.seconds:g}s")
                rps = load(port, bodies[kind], args.concurrency, args.seconds, load_cpu)
                rows[name].append(_fmt(kind, memory(service.pid), rps))
                if args.signal:
                    os.kill(service.pid, signal.SIGUSR1)
        for name, (service, _) in setups.items():
            print(f"{name:6} resident by mapping (MiB): {regions(service.pid)}")
        ended_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average {started_load} at the start, {ended_load} at the end")
        for name, cells in rows.items():
            print(f"{name:6} " + " | ".join(cells))
    finally:
        for service in reversed(started):
            service.stop()
        log(f"logs in {work}")
    return 0


def _env(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split())


def _fmt(phase: str, mem: dict[str, float], rps: float | None) -> str:
    rate = f" {rps:.0f}/s" if rps is not None else ""
    return (
        f"{phase}{rate}: RSS {mem.get('VmRSS', 0):.1f} HWM {mem.get('VmHWM', 0):.1f} "
        f"anon {mem.get('Anon', 0):.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
