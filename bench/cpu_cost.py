"""CPU time per request of each proxy setup: the number that does not drift on a loaded machine.

Why it exists: requests per second on a two-core machine shared with other jobs move by 2-4x
from one minute to the next, so wall-clock ratios cannot tell a 50 us saving from noise. The CPU
time a process spends per request barely moves with load: this module sends exactly N requests
through each setup (bare aiohttp floor, packgate empty chain, packgate seed chain) and reads the
server's own CPU time from the kernel's per-thread scheduler statistics
(`/proc/PID/task/TID/schedstat`, nanoseconds on the CPU) before and after, split into the event
loop thread and the other threads (the audit writer's writes and fsyncs). Rounds alternate the
setups and the table reports the median.

    .venv/bin/python -m bench.cpu_cost                       # json and stream, c=1 and c=32
    .venv/bin/python -m bench.cpu_cost --requests 3000 --rounds 5 --kinds json --concurrency 32
    taskset -c 0 .venv/bin/python -m bench.cpu_cost --cpu 1 \\
        --setups packgate-seed,packgate-seed-no-audit --kinds json --concurrency 32

The last column counts context switches per request (all threads): each hand-off between the
event loop and the audit writer thread costs some, and on a pinned sidecar they are on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ and the harness (cluster/) importable
    REPO = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(REPO), str(REPO / "cluster")]

from processes import free_port

from bench import payloads
from bench.common import BENCH, Service, log, pinned
from bench.loadgen import Client, build_request
from bench.proxy import UPSTREAM_KEY, empty_config, seed_config, start_packgate

SETUPS = ("floor", "packgate-empty", "packgate-seed")
# Not run by default: the seed chain without audit-logger, to read off what audit-logger costs.
NO_AUDIT = "packgate-seed-no-audit"


def switches(pid: int) -> int:
    """Context switches of all the process's threads so far (voluntary and involuntary)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches" in line:
                    total += int(line.split()[1])
    return total


def thread_cpu_ns(pid: int) -> tuple[int, int]:
    """(main thread, all other threads) CPU nanoseconds so far."""
    main = other = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            spent = int((task / "schedstat").read_text().split()[0])
            if int(task.name) == pid:
                main += spent
            else:
                other += spent
    return main, other


# --vary: one count for the whole run, so no prompt repeats across setups and rounds either.
_TAGS = itertools.count(1)


async def _send(port: int, body: bytes, requests: int, concurrency: int, vary: bool) -> int:
    """Send exactly `requests` requests over `concurrency` keep-alive connections; count 200s.
    With `vary`, each request carries a new case tag (`payloads.tag`), as loadgen --vary does."""
    loop = asyncio.get_running_loop()
    data = build_request("127.0.0.1", port, "/v1/chat/completions", body, "sk-bench-client")
    at = data.find(payloads.TAG_PREFIX + payloads.TAG_DEFAULT) + len(payloads.TAG_PREFIX)
    left = requests
    ok = 0

    def next_request() -> bytes:
        if not vary:
            return data
        return data[:at] + payloads.tag(next(_TAGS)) + data[at + len(payloads.TAG_DEFAULT) :]

    async def worker() -> None:
        nonlocal left, ok
        _, client = await loop.create_connection(Client, "127.0.0.1", port)
        while left > 0:
            left -= 1
            answer = await client.request(next_request())
            ok += answer.status == 200
        assert client.transport is not None
        client.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def measure(
    pid: int, port: int, body: bytes, requests: int, concurrency: int, vary: bool = False
) -> dict[str, float]:
    import uvloop

    uvloop.run(_send(port, body, max(50, requests // 10), concurrency, vary))  # warm-up
    time.sleep(0.05)  # let after-response work (audit records) of the warm-up finish
    main0, other0 = thread_cpu_ns(pid)
    switched = switches(pid)
    started = time.perf_counter()
    ok = uvloop.run(_send(port, body, requests, concurrency, vary))
    wall = time.perf_counter() - started
    time.sleep(0.05)
    main1, other1 = thread_cpu_ns(pid)
    switched = switches(pid) - switched
    if ok < requests * 0.99:
        raise RuntimeError(f"only {ok} of {requests} requests answered 200")
    return {
        "loop_us": (main1 - main0) / requests / 1000,
        "other_us": (other1 - other0) / requests / 1000,
        "rps": requests / wall,
        "switches": switched / requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="json,stream")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--extra", default="", help="extra `gateway run` flags, space-separated")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run each packgate setup from this copy of the repo (its sidecar/ and "
        "operator/ first on PYTHONPATH), as `base:<setup>`: an A/B of a change in one run",
    )
    parser.add_argument(
        "--cpu",
        help="pin the servers to this CPU (taskset), as `make bench-proxy` does; run this "
        "script pinned elsewhere, e.g. `taskset -c 0 ... --cpu 1`",
    )
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument(
        "--vary",
        action="store_true",
        help="a new prompt in every request (as the bench's packgate-seed-fresh row): no "
        "verdict-cache hits",
    )
    args = parser.parse_args(argv)
    setups = args.setups.split(",")
    if args.baseline is not None:
        setups += [f"base:{key}" for key in setups if key.startswith("packgate")]
    kinds = args.kinds.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="packgate-cpu-"))
    started: list[Service] = []
    try:
        up = free_port()
        upstream = Service(
            "upstream",
            [sys.executable, str(BENCH / "upstream.py"), "--port", str(up)],
            work / "upstream.log",
        ).start()
        started.append(upstream)
        upstream.wait_http(f"http://127.0.0.1:{up}/health", 30)
        base = f"http://127.0.0.1:{up}/v1"
        servers: dict[str, tuple[int, int]] = {}
        for key in setups:
            port = free_port()
            if key == "floor":
                argv = [sys.executable, str(BENCH / "floor.py"), "--port", str(port)]
                argv += ["--upstream", base, "--key", UPSTREAM_KEY]
                # On the same CPU as the packgate setups: a server that shares the load
                # generator's CPU wakes it and is woken without an inter-processor interrupt
                # (costly in a VM), which made the floor look ~100 us cheaper at c=1.
                service = Service(key, pinned(argv, args.cpu), work / "floor.log").start()
                service.wait_http(f"http://127.0.0.1:{port}/healthz", 30)
            else:
                plain = key.removeprefix("base:")
                config = (
                    seed_config(base) if plain.startswith("packgate-seed") else empty_config(base)
                )
                if plain == NO_AUDIT:
                    config["policies"]["chain"].remove("audit-logger")
                    config["policy"].pop("audit-logger", None)
                env = None
                if plain != key:
                    root = args.baseline.resolve()
                    env = {"PYTHONPATH": f"{root}/sidecar:{root}/operator"}
                service, admin = start_packgate(
                    key.replace(":", "-"), config, port, work, args.cpu, args.extra.split(), env
                )
                service.wait_http(admin + "/readyz", 60)
            started.append(service)
            servers[key] = (service.pid, port)
        results: dict[str, list[dict[str, float]]] = {}
        for kind in kinds:
            body = payloads.chat_body(kind == "stream")
            for concurrency in levels:
                for round_no in range(args.rounds):
                    shift = round_no % len(setups)
                    for key in setups[shift:] + setups[:shift]:
                        pid, port = servers[key]
                        name = f"{kind} c{concurrency} {key}"
                        results.setdefault(name, []).append(
                            measure(pid, port, body, args.requests, concurrency, args.vary)
                        )
        out: dict[str, Any] = {"load_avg": os.getloadavg()}
        print(
            f"{'':34} {'loop us':>9} {'other us':>9} {'total us':>9} {'req/s':>8} {'switches':>9}"
        )
        for name, rounds in results.items():
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            total = med["loop_us"] + med["other_us"]
            out[name] = {**med, "total_us": total}
            print(
                f"{name:34} {med['loop_us']:9.0f} {med['other_us']:9.0f} {total:9.0f} "
                f"{med['rps']:8.0f} {med['switches']:9.2f}"
            )
        print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        for service in reversed(started):
            service.stop()
        log(f"logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
