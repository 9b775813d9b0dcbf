"""What a request costs the sidecar as a conversation grows, and for one very large prompt.

Why it exists: issue 15 asks that a 20-turn chat (1 KB per turn) cost at most 1.5x a one-turn
chat, because each earlier message is judged once and then comes from the verdict cache, and that
a harmless 500 KB prompt fits the default policy time budget (200 ms per policy). Both are about
the sidecar's own work per request, so they are measured in-process on the SUT core, as CPU time
of the thread (preemption by other processes on a shared machine does not count): the request
body parsed, its texts extracted, the seed chain's request phase run on them (prompt-injection,
pii-detector, audit-logger, with one verdict cache as in a sidecar), the body serialised again.

- chat: p50 over many requests of a one-turn chat (system prompt + a new 1 KB user message) and of
  turn 20 of a conversation (19 earlier 1 KB user turns and short assistant answers, already seen,
  plus a new 1 KB message): each request carries a message never seen before.
- 500 KB: a harmless generated report (prose, a contact address every ~20 KB); each policy's CPU
  time on its first sight (no cache), median of a few runs, against its 200 ms budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import Cores, Report, Row, Verdict
from .detect import on_cpu
from .proxy import SEED_CONFIG, SHARED_SEED

TURN_SENTENCES = (
    "Could you look at the attached figures for the {n}th region again?",
    "The totals in column four do not add up to what finance reported last week.",
    "Please keep the answer short and list the three biggest differences first.",
    "We also need a sentence we can paste into the summary for the board.",
    "Mention if the change in the exchange rate explains part of the gap.",
    "Last time the numbers for the smaller offices were left out by mistake.",
)
REPORT_SENTENCES = (
    "The committee reviewed the maintenance schedule for the northern pumping station.",
    "Flow rates stayed within the expected range during the spring thaw.",
    "Budget figures for the next quarter are summarised in the appendix.",
    "Two valves were replaced and the pressure tests passed on the first attempt.",
    "Inspection photos are stored on the shared drive under the station's code.",
    "Please forward any questions about the overtime rota to the site office.",
)


@dataclass
class Options:
    requests: int  # measured requests per chat shape
    big_runs: int  # runs of the 500 KB prompt
    workdir: Path


def _prose(rng: random.Random, sentences: tuple[str, ...], size: int, tag: int) -> str:
    parts: list[str] = [f"Request {tag}:"]
    length = len(parts[0])
    while length < size:
        sentence = rng.choice(sentences).format(n=rng.randint(4, 99))
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]


def report_document(size: int) -> str:
    rng = random.Random(15)
    parts: list[str] = []
    length = 0
    while length < size:
        sentence = rng.choice(REPORT_SENTENCES)
        if len(parts) % 200 == 199:
            sentence = f"Questions go to ops{len(parts)}@example.com during office hours."
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]


def _seed_chain(workdir: Path) -> Any:
    from packgate_policy import load_mapping
    from packgate_sidecar.chain import Chain, builtin_registry
    from packgate_sidecar.metrics import Metrics
    from packgate_sidecar.policy import PolicyRuntime

    if SEED_CONFIG.exists():
        document = yaml.safe_load(SEED_CONFIG.read_text())
    else:
        document = next(yaml.safe_load_all(SHARED_SEED.read_text()))
    os.environ.setdefault("PACKGATE_AUDIT_KEY", "42" * 32)
    metrics = Metrics()
    runtime = PolicyRuntime(metrics=metrics, data_dir=workdir / "chat-audit")
    return Chain.build(load_mapping(document).config, builtin_registry(), runtime, metrics)


_LOOP = asyncio.new_event_loop()


def _request_cpu(chain: Any, raw: bytes) -> float:
    """Thread CPU seconds of the sidecar's per-request work on one chat body."""
    from packgate_sidecar import strict_json
    from packgate_sidecar.policy import RequestContext
    from packgate_sidecar.shapes import CHAT, request_texts

    # The sidecar's own reading (strict: duplicate keys, depth) and writing of a body, as app.py
    # and forward.py do them; the standard library's plain loads/dumps are not what it runs.
    started = time.thread_time()
    body = strict_json.loads(raw)
    slots = request_texts(CHAT, body)
    blocked = _LOOP.run_until_complete(chain.run_request(RequestContext("bench", CHAT), slots))
    strict_json.dumps(body)
    spent = time.thread_time() - started
    if blocked is not None:
        raise RuntimeError(f"the bench chat was blocked by {blocked.kind}: {blocked.reason}")
    return spent


def _body(turns: list[str], new: str) -> bytes:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "Answer as a financial analyst."}
    ]
    for n, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        messages.append({"role": "assistant", "content": f"Here is the summary for part {n}."})
    messages.append({"role": "user", "content": new})
    return json.dumps({"model": "gpt-4o", "messages": messages}).encode()


def run(report: Report, opts: Options) -> None:
    cores = Cores.detect()
    section = report.section(
        "chat",
        "Sidecar CPU per request: a growing chat and a 500 KB prompt (seed chain, in-process)",
        [("p50_ms", "p50 ms CPU"), ("ratio", "ratio"), ("budget_ms", "budget ms")],
    )
    rng = random.Random(20)
    history = [_prose(rng, TURN_SENTENCES, 1024, -n) for n in range(1, 20)]
    with on_cpu(cores.sut):
        chain = _seed_chain(opts.workdir)
        _request_cpu(chain, _body(history, _prose(rng, TURN_SENTENCES, 1024, 0)))  # warm, seen
        one, twenty = [], []
        for i in range(opts.requests):
            one.append(_request_cpu(chain, _body([], _prose(rng, TURN_SENTENCES, 1024, 2 * i))))
            twenty.append(
                _request_cpu(chain, _body(history, _prose(rng, TURN_SENTENCES, 1024, 2 * i + 1)))
            )
        p1, p20 = statistics.median(one) * 1e3, statistics.median(twenty) * 1e3
        section.add(Row("one-turn chat (system + new 1 KB message)", {"p50_ms": p1}))
        section.add(
            Row(
                "turn 20 (19 seen 1 KB turns + new 1 KB message)",
                {"p50_ms": p20, "ratio": p20 / p1},
            )
        )
        report.verdicts.append(
            Verdict("20-turn chat CPU / one-turn chat CPU, 1 KB turns", p20 / p1, 1.5, "x", False)
        )
        _big_prompt(report, section, opts)
    section.notes.append(
        "CPU time of the request phase in one thread: JSON parse, text extraction, the seed "
        "chain's request policies (verdict cache on, as in a sidecar), JSON serialisation"
    )


def _big_prompt(report: Report, section: Any, opts: Options) -> None:
    from packgate_sidecar.policy import TextItem

    text = report_document(500 * 1024)
    by_kind = {entry.kind: entry for entry in _seed_chain(opts.workdir).entries}
    for kind in ("prompt-injection", "pii-detector"):
        entry = by_kind.get(kind)
        if entry is None:
            continue
        spent = []
        for run in range(opts.big_runs):
            # A text never seen: a prefix of a new length per run shifts every window, so no
            # piece of it is in the verdict cache.
            prefix = f"Report copy {run}." + " " * (run + 1)
            item = TextItem(prefix + text, "user", "messages[0].content")
            started = time.thread_time()
            if kind == "prompt-injection":
                entry.policy.score([item])
            else:
                entry.policy.scan([item])
            spent.append(time.thread_time() - started)
        ms = statistics.median(spent) * 1e3
        budget = entry.budget * 1e3
        section.add(Row(f"500 KB harmless prompt, {kind}", {"p50_ms": ms, "budget_ms": budget}))
        report.verdicts.append(
            Verdict(
                f"500 KB harmless prompt, {kind} CPU (default budget)", ms, budget, " ms", False
            )
        )
