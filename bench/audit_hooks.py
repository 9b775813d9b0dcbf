"""The audit-logger's CPU per request in-process: its hooks as the gateway calls them, c at a time.

Why it exists: what audit-logger costs in the sidecar (`cpu_cost.py`: the seed chain minus the
same chain without it) is a difference of two ~500-1000 us numbers, and on this shared machine
it moved by +-50 us from run to run, more than a change to the record's own work. This runs only
audit-logger's part of a request in one process, on the event loop's thread: `on_request`, for a
stream `write_ahead` and waiting for that record to be durable, then `on_finish` (a JSON answer
waits for its record too, a stream's outcome record goes lazily), with the real writer, its
compiled syncer and fsyncs, `concurrency` requests in flight (each yields to the others where the
upstream call would be). Reported: the loop thread's CPU per request, min of rounds (records from
the first seed config's chain: three request-phase decisions, usage, no cost-attribution), and
the same loop doing everything but the hooks (`bench`: what the harness itself costs). With
`--baseline DIR` the same runs use another checkout's sidecar in a second process, for an A/B.
Not part of `make bench`: a development tool.

    .venv/bin/python -m bench.audit_hooks [--baseline /tmp/before] [--requests 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import measure_in_trees

KINDS = ("json", "stream")


def _context(i: int, stream: bool) -> Any:
    from packgate_sidecar.policy import DecisionRecord, PodIdentity, RequestContext

    ctx = RequestContext(
        f"{i:032x}",
        "/v1/chat/completions",
        pack="chatgpt-enterprise-gateway",
        pack_version="1.0.0",
        config_hash="sha256:f9f83de51c5cd16de32dd480f2e57484116a242399bfb2f2de7c770fdb1121d0",
        pod=PodIdentity("app-7d9f", "team-a"),
        model="gpt-4o",
        stream=stream,
    )
    ctx.decisions.extend(
        [
            DecisionRecord("prompt-injection", "request", "allow", "", {"score": 0.0815}),
            DecisionRecord(
                "pii-detector",
                "request",
                "rewrite",
                "pii:CREDIT_CARD,EMAIL,PHONE,SSN",
                {"EMAIL": 1, "PHONE": 1, "SSN": 1, "CREDIT_CARD": 1},
            ),
            DecisionRecord("audit-logger", "request", "allow", "", {}),
        ]
    )
    ctx.upstream_model, ctx.target, ctx.status, ctx.latency_ms = "gpt-4o", "chatgpt", 200, 12.5
    ctx.attempts.append(("chatgpt", "200"))
    ctx.usage = {"prompt_tokens": 310, "completion_tokens": 52, "total_tokens": 362}
    return ctx


async def _request(policy: Any, i: int, kind: str, hooks: bool) -> None:
    from packgate_sidecar.audit.writer import DURABLE_STATE_KEY, STREAMED_STATE_KEY

    ctx = _context(i, kind == "stream")
    if hooks:
        await policy.on_request(ctx, [])
    for _ in range(3):  # the upstream call: the other requests run meanwhile
        await asyncio.sleep(0)
    if kind == "stream":
        if hooks:
            ahead = policy.write_ahead(ctx)
            if ahead is not None:
                await ahead
        ctx.state[STREAMED_STATE_KEY] = True
        await asyncio.sleep(0)  # the stream is relayed
    if hooks:
        await policy.on_finish(ctx)
    if kind == "json":
        for durable in ctx.state.get(DURABLE_STATE_KEY, ()):
            await durable


async def _measure(requests: int, rounds: int, concurrency: int) -> dict[str, float]:
    from packgate_policy import AuditLogger
    from packgate_sidecar.policies.audit_logger import AuditLoggerPolicy
    from packgate_sidecar.policy import PodIdentity, PolicyRuntime

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="packgate-audit-hooks-") as data:
        runtime = PolicyRuntime(PodIdentity("app-7d9f", "team-a"), None, Path(data))
        policy = AuditLoggerPolicy(AuditLogger.model_validate({"stdout": False}), runtime)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, kind: str, hooks: bool) -> None:
            async with gate:
                await _request(policy, i, kind, hooks)

        count = 0
        for kind in KINDS:
            for hooks in (True, False):
                best = float("inf")
                for _ in range(rounds + 1):  # the first round warms up
                    start = time.thread_time()
                    await asyncio.gather(*(one(count + i, kind, hooks) for i in range(requests)))
                    best = min(best, (time.thread_time() - start) / requests * 1e6)
                    count += requests
                results[kind if hooks else f"{kind} bench"] = best
        await policy.aclose()
    return results


def measure(requests: int, rounds: int, concurrency: int) -> dict[str, float]:
    import uvloop

    os.environ.setdefault("PACKGATE_AUDIT_KEY", "ab" * 32)
    return uvloop.run(_measure(requests, rounds, concurrency))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="another checkout to compare")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child output
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.requests, args.rounds, args.concurrency)))
        return 0
    child = ["--requests", str(args.requests), "--rounds", str(args.rounds)]
    child += ["--concurrency", str(args.concurrency)]
    results = measure_in_trees("bench.audit_hooks", child, args.baseline)
    print(
        f"audit-logger hooks, c{args.concurrency}: loop thread CPU us per request (min of rounds)"
    )
    print(f"{'':12s}" + "".join(f"{k:>14s}" for k in (*KINDS, *(f"{k} bench" for k in KINDS))))
    for label, row in results.items():
        cells = (row[k] for k in (*KINDS, *(f"{k} bench" for k in KINDS)))
        print(f"{label:12s}" + "".join(f"{v:14.1f}" for v in cells))
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
