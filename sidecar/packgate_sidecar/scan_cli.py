"""`packgate scan --policy-config FILE`: run a config's detection policies over JSON lines.

Why it exists: it is the offline way to try a policy config on sample text before rolling it
out, and the way detection quality is measured, with exactly the code the sidecar runs: the
prompt-injection, pii-detector and content-filter policies of the config's chain, built by the
same factories, each called through the chain's runner (so time budgets and fail-closed apply).

Input: one JSON object `{"text": "..."}` per line on stdin (blank lines are skipped). Output:
one JSON line per input, in order:

    {"blocked": bool, "policy": str | null, "score": float | null,
     "findings": [{"entity": str, "start": int, "end": int}], "text": str}

`policy` is the first policy that blocked; `score` the prompt-injection score (null when that
policy is not in the chain); `findings` the PII entities with offsets into the input; `text` the
input after redaction. Unlike the sidecar, a block does not stop the later policies, so every
line gets its score and findings. A malformed line gets `{"line": N, "error": "..."}` and the run
goes on. Exit status: 0 when every line was read, 1 when some line was malformed, 2 when the
config cannot be used. Audit and cost policies are not run: nothing is written anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from typing import IO, Any

from packgate_policy import ConfigError, PolicyConfig, load_file

from .chain import Chain, Entry
from .metrics import Metrics
from .policy import PolicyRuntime, RequestContext
from .shapes import TextSlot

SCANNERS = ("prompt-injection", "pii-detector", "content-filter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy-config", required=True, metavar="FILE", help="policy config file to apply"
    )


def build(config: PolicyConfig) -> list[Chain]:
    """One single-policy chain per detection policy, in chain order."""
    from .policies import FACTORIES  # the policies load models; only when actually scanning

    metrics = Metrics()
    runtime = PolicyRuntime(metrics=metrics)
    chains = []
    for kind in config.policies.chain:
        if kind in SCANNERS:
            settings = config.block(kind)
            policy = FACTORIES[kind](settings, runtime)
            budget = settings.timeout_ms / 1000
            chains.append(Chain([Entry(kind, policy, budget, settings.fail_open)], metrics))
    return chains


async def scan_text(chains: list[Chain], text: str, number: int) -> dict[str, Any]:
    ctx = RequestContext(f"scan-{number}", "scan")
    slots = [TextSlot({"text": text}, "text", "user", "text")]
    blocker: str | None = None
    for chain in chains:
        blocked = await chain.run_request(ctx, slots)
        if blocked is not None and blocker is None:
            blocker = blocked.kind
    score = None
    for record in ctx.decisions:
        value = record.details.get("score")
        if record.kind == "prompt-injection" and isinstance(value, int | float):
            score = float(value)
    found = ctx.state.get("pii-detector", {}).get("findings", {}).get(0, [])
    return {
        "blocked": blocker is not None,
        "policy": blocker,
        "score": score,
        "findings": [{"entity": f.entity, "start": f.start, "end": f.end} for f in found],
        "text": slots[0].get(),
    }


def _parse(line: str) -> str:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(item, dict):
        raise ValueError('expected an object like {"text": "..."}')
    text = item.get("text")
    if not isinstance(text, str):
        raise ValueError('"text" is missing or not a string')
    return text


async def scan_lines(chains: list[Chain], lines: Iterable[str], out: IO[str]) -> int:
    failed = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            result = await scan_text(chains, _parse(line), number)
        except ValueError as exc:
            failed += 1
            result = {"line": number, "error": str(exc)}
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
        out.flush()
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_file(args.policy_config).config
    except ConfigError as exc:
        print(f"packgate scan: {args.policy_config}: {exc}", file=sys.stderr)
        return 2
    try:
        chains = build(config)
    except Exception as exc:
        print(f"packgate scan: a policy could not start: {exc}", file=sys.stderr)
        return 2
    if not chains:
        print(
            "packgate scan: the chain has none of " + ", ".join(SCANNERS) + "; nothing is checked",
            file=sys.stderr,
        )
    # Invalid UTF-8 becomes U+FFFD instead of ending the run; output is UTF-8 whatever the locale.
    with (
        open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False) as stdin,
        open(sys.stdout.fileno(), "w", encoding="utf-8", closefd=False) as stdout,
    ):
        return asyncio.run(scan_lines(chains, stdin, stdout))
