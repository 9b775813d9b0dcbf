"""CPU per streamed answer of the sidecar's stream path, in-process: the SSE rewriter and the seed
chain's stream filters, without the network.

Why it exists: a streamed answer costs the sidecar per event, and how the events arrive decides
which path they take. The bench upstream (`upstream.py`) sends a whole answer in one write, so
the sidecar reads its events as one chunk; a provider generating tokens sends them one event
per chunk. This measures both for the bench answer, as a chat completions stream and as a
Responses API stream (`upstream.responses_stream_events`), through the first seed config's stream
filters (pii-detector redact; audit-logger left out, as in `cpu_cost.py`'s seed-no-audit), as
thread CPU time per stream (the minimum of several rounds, which barely moves on a loaded
machine). With `--baseline DIR` the same runs use another checkout's sidecar in a second
process, for an A/B of a change. Not part of `make bench`: a development tool.

    .venv/bin/python -m bench.stream_cost [--baseline /tmp/before] [--streams 500] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import upstream
from bench.common import measure_in_trees
from bench.proxy import SEED_CONFIG, SHARED_SEED


def _chain() -> Any:
    from packgate_policy import load_mapping
    from packgate_sidecar.chain import Chain, builtin_registry
    from packgate_sidecar.metrics import Metrics
    from packgate_sidecar.policy import PolicyRuntime

    if SEED_CONFIG.exists():
        document = yaml.safe_load(SEED_CONFIG.read_text())
    else:
        document = next(yaml.safe_load_all(SHARED_SEED.read_text()))
    document["policies"]["chain"].remove("audit-logger")
    document["policy"].pop("audit-logger", None)
    metrics = Metrics()
    config = load_mapping(document).config
    return Chain.build(config, builtin_registry(), PolicyRuntime(metrics=metrics), metrics)


def measure(streams: int, rounds: int) -> dict[str, float]:
    """Microseconds of thread CPU per stream, for each way the events arrive."""
    from packgate_sidecar.policy import RequestContext
    from packgate_sidecar.shapes import CHAT, RESPONSES
    from packgate_sidecar.sse import StreamRewriter
    from packgate_sidecar.stream_shapes import STREAM_SHAPES

    chain = _chain()
    created = int(time.time())
    arrivals: dict[str, tuple[str, list[bytes]]] = {}
    for route, events in (
        (CHAT, upstream.stream_events(created)),
        (RESPONSES, upstream.responses_stream_events(created)),
    ):
        label = f"{route.removeprefix('/v1/')}, {len(events)} events"
        arrivals[f"{label}, one chunk"] = (route, [b"".join(events)])
        arrivals[f"{label}, one event per chunk"] = (route, events)

    def one(route: str, chunks: list[bytes]) -> None:
        # As forward._relay feeds it: the first bytes as soon as one event is checked.
        ctx = RequestContext("bench", route)
        policies = chain.open_stream(ctx)
        rewriter = StreamRewriter(STREAM_SHAPES[route], policies, ctx)
        sent = False
        for chunk in chunks:
            if rewriter.feed(chunk, first=not sent) and not sent:
                sent = True
                rewriter.feed(b"")
        rewriter.end()
        policies.close()

    out: dict[str, float] = {}
    for name, (route, chunks) in arrivals.items():
        one(route, chunks)
        best = float("inf")
        for _ in range(rounds):
            started = time.thread_time()
            for _ in range(streams):
                one(route, chunks)
            best = min(best, (time.thread_time() - started) / streams * 1e6)
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500, help="streams per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="another checkout to compare")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child output
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.streams, args.rounds)))
        return 0
    child = ["--streams", str(args.streams), "--rounds", str(args.rounds)]
    results = measure_in_trees("bench.stream_cost", child, args.baseline)
    trees = list(results)
    print(f"{'us of thread CPU per stream':48}" + "".join(f"{t:>12}" for t in trees))
    for name in results["this tree"]:
        print(f"{name:48}" + "".join(f"{results[t][name]:12.0f}" for t in trees))
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
