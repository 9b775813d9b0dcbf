"""The audit-logger policy: what lands in the log, when, and what happens when it cannot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from packgate_policy import AuditLogger, CostAttribution
from packgate_sidecar.audit.record import PolicyDecision
from packgate_sidecar.audit.verify import verify_path
from packgate_sidecar.audit.writer import DURABLE_STATE_KEY, STREAMED_STATE_KEY, AuditWriter
from packgate_sidecar.chain import Chain, Entry
from packgate_sidecar.metrics import Metrics
from packgate_sidecar.policies import audit_body, audit_logger
from packgate_sidecar.policies.audit_logger import AuditLoggerPolicy, decision_reason
from packgate_sidecar.policies.cost_attribution import CostAttributionPolicy
from packgate_sidecar.policy import (
    DecisionRecord,
    PodIdentity,
    PolicyRuntime,
    RequestContext,
)
from packgate_sidecar.shapes import TextSlot

KEY = bytes(range(32))
PROMPT = "Please summarise the merger memo for Globex, my SSN is 078-05-1120"


@pytest.fixture(autouse=True)
def audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKGATE_AUDIT_KEY", KEY.hex())


def make(data_dir: Path, **values: Any) -> AuditLoggerPolicy:
    values.setdefault("stdout", False)
    return AuditLoggerPolicy(
        AuditLogger.model_validate(values),
        PolicyRuntime(PodIdentity("pod-a", "ns-a"), None, data_dir),
    )


def request(*decisions: DecisionRecord, status: int = 200) -> RequestContext:
    ctx = RequestContext(
        "0123abcd",
        "/v1/chat/completions",
        pack="chatgpt",
        pack_version="1.0.0",
        config_hash="sha256:abc",
        pod=PodIdentity("pod-a", "ns-a"),
        model="gpt-4o",
    )
    ctx.upstream_model, ctx.target, ctx.status, ctx.latency_ms = "gpt-4o", "t0", status, 12.5
    ctx.attempts.append(("t0", "200"))
    ctx.usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    ctx.decisions.extend(decisions)
    return ctx


def records(data_dir: Path) -> list[dict[str, Any]]:
    found = []
    for segment in sorted((data_dir / "audit").glob("audit-*.jsonl")):
        for line in segment.read_text().splitlines():
            envelope = json.loads(line)
            if envelope["type"] == "access":
                found.append(envelope["body"])
    return found


async def test_a_record_per_request_that_verifies_and_holds_no_text(tmp_path: Path) -> None:
    policy = make(tmp_path)
    flagged = DecisionRecord("prompt-injection", "request", "flag", "injection", {"score": 0.91})
    await policy.on_finish(request(flagged))
    await policy.aclose()
    (body,) = records(tmp_path)
    assert body["request_id"] == "0123abcd"
    assert body["endpoint"] == "chat.completions"
    assert (body["pod"], body["namespace"], body["pack"]) == ("pod-a", "ns-a", "chatgpt")
    assert body["decisions"][0] == {
        "policy": "prompt-injection",
        "decision": "flag",
        "reason": "request:injection/score=0.91",
    }
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "estimated": False,
    }
    # Only policies that ran appear as decisions; usage is a field of its own.
    assert [d["policy"] for d in body["decisions"]] == ["prompt-injection"]
    result = verify_path(tmp_path / "audit", [KEY])
    assert result.ok and result.mac_checked
    raw = b"".join(p.read_bytes() for p in (tmp_path / "audit").iterdir())
    assert b"Globex" not in raw and b"078-05-1120" not in raw


async def test_requests_in_flight_are_counted_until_their_last_record(tmp_path: Path) -> None:
    policy = make(tmp_path)
    plain, stream, blocked_earlier = request(), request(), request()
    stream.stream = True
    for ctx in (plain, stream):
        await policy.on_request(ctx, [])
    assert policy.writer._expecting == 2
    ahead = policy.write_ahead(stream)  # its outcome record comes when the stream ends
    assert ahead is not None and policy.writer._expecting == 2
    await ahead
    for ctx in (plain, stream, blocked_earlier):  # blocked_earlier never reached on_request
        await policy.on_finish(ctx)
    assert policy.writer._expecting == 0
    await policy.aclose()
    assert len(records(tmp_path)) == 4


async def test_a_relayed_streams_outcome_waits_for_the_next_record_a_whole_answers_does_not(
    tmp_path: Path,
) -> None:
    policy = make(tmp_path)
    policy.writer._linger = 2.0  # what a lazy record waits for at most when nothing follows
    whole, relayed = request(), request()
    relayed.stream = True
    relayed.state[STREAMED_STATE_KEY] = True  # set by the forwarder once the stream went out
    await policy.on_finish(whole)
    (answer,) = whole.state[DURABLE_STATE_KEY]
    await asyncio.wait_for(answer, 1)  # a whole answer's record is written at once
    await policy.on_finish(relayed)
    (outcome,) = relayed.state[DURABLE_STATE_KEY]
    await asyncio.sleep(0.1)
    assert not outcome.done()  # nobody waits for it: it goes with the next record
    await policy.on_finish(request())
    await asyncio.wait_for(outcome, 1)
    assert policy.writer.stats.batches == 2  # one fsync for the outcome and the next record
    await policy.aclose()
    assert len(records(tmp_path)) == 3


async def test_without_log_all_access_only_requests_a_policy_acted_on(tmp_path: Path) -> None:
    policy = make(tmp_path, log_all_access=False)
    allowed = DecisionRecord("content-filter", "request", "allow")
    await policy.on_finish(request(allowed))
    await policy.on_finish(
        request(allowed, DecisionRecord("pii-detector", "request", "rewrite", "pii:EMAIL"))
    )
    failed_open = DecisionRecord("pii-detector", "request", "allow", "x", {}, 1.0, "timeout", True)
    await policy.on_finish(request(failed_open))
    await policy.aclose()
    reasons = [[d["reason"] for d in body["decisions"]] for body in records(tmp_path)]
    assert len(reasons) == 2
    assert "request:pii:EMAIL" in reasons[0]
    assert "request:timeout,fail_open" in reasons[1]


def test_decision_reasons_become_audit_tokens() -> None:
    odd = DecisionRecord(
        "content-filter",
        "stream",
        "flag",
        "content:hate;content:custom",
        {"hate": 1, "note": "x y"},
    )
    assert decision_reason(odd) == "stream:content:hate_content:custom/hate=1"
    failed = DecisionRecord(
        "pii-detector", "request", "block", "policy error, failed closed", {}, 1.0, "error"
    )
    assert decision_reason(failed) == "request:error,fail_closed"


def test_remembered_decisions_are_the_ones_built_afresh() -> None:
    ctx = request(
        DecisionRecord("pii-detector", "request", "rewrite", "pii:EMAIL", {"EMAIL": 2}),
        DecisionRecord("prompt-injection", "request", "allow", "", {"score": 0.25}),
    )
    first, again = audit_logger.build_record(ctx), audit_logger.build_record(ctx)
    assert (
        again.decisions
        == first.decisions
        == tuple(PolicyDecision(d.kind, d.action, decision_reason(d)) for d in ctx.decisions)
    )
    assert again.encode() == first.encode()
    ctx.decisions[1] = DecisionRecord("prompt-injection", "request", "allow", "", {"score": 0.5})
    assert audit_logger.build_record(ctx).decisions[1].reason == "request/score=0.5"
    with pytest.raises(ValueError, match=r"decisions\.policy"):  # never remembered, still refused
        audit_body._decision("not a token", "allow", "request")
    with pytest.raises(ValueError, match=r"decisions\.policy"):
        audit_body._decision("not a token", "allow", "request")


async def test_cost_is_recorded_even_when_audit_comes_first_in_the_chain(tmp_path: Path) -> None:
    audit = make(tmp_path)
    cost = CostAttributionPolicy(CostAttribution(tags={"team": "blue"}), PolicyRuntime())
    entries = [
        Entry("audit-logger", audit, 1.0, False),
        Entry("cost-attribution", cost, 1.0, False),
    ]
    await Chain(entries, Metrics()).finish(request())
    await audit.aclose()
    (body,) = records(tmp_path)
    assert body["cost_usd"] == pytest.approx((10 * 2.5 + 5 * 10) / 1e6)
    assert body["tags"] == {"team": "blue"}
    assert body["usage"]["estimated"] is False


async def test_reloads_share_one_writer_per_directory(tmp_path: Path) -> None:
    first = make(tmp_path, retention_days=30)
    second = make(tmp_path, retention_days=7)  # a reload with changed settings
    assert second.writer is first.writer
    assert first.writer._retention == 7
    await first.aclose()
    await second.on_finish(request())  # the writer outlives the replaced policy
    await second.aclose()
    with pytest.raises(RuntimeError):
        second.writer.submit(audit_logger.build_record(request()))
    assert len(records(tmp_path)) == 1
    assert verify_path(tmp_path / "audit", [KEY]).ok


async def slots_through(chain: Chain) -> str | None:
    ctx = RequestContext("r", "/v1/chat/completions")
    blocked = await chain.run_request(ctx, [TextSlot({"t": "hi"}, "t", "user", "t")])
    return blocked.reason if blocked is not None else None


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_full_queue_fails_requests_closed_unless_fail_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_open: bool
) -> None:
    policy = make(tmp_path, fail_open=fail_open)
    metrics = Metrics()
    chain = Chain([Entry("audit-logger", policy, 1.0, fail_open)], metrics)
    assert await slots_through(chain) is None
    monkeypatch.setattr(AuditWriter, "accepting", property(lambda self: False))
    reason = await slots_through(chain)
    opened = metrics.registry.get_sample_value(
        "packgate_policy_fail_open_total", {"kind": "audit-logger", "phase": "request"}
    )
    if fail_open:
        assert reason is None and opened == 1
    else:
        assert reason == "policy error, failed closed" and not opened
    await policy.aclose()


async def test_a_stopped_writer_refuses_requests(tmp_path: Path) -> None:
    policy = make(tmp_path)
    await policy.writer.aclose()
    assert not policy.writer.accepting
    chain = Chain([Entry("audit-logger", policy, 1.0, False)], Metrics())
    assert await slots_through(chain) == "policy error, failed closed"
    await policy.aclose()


async def test_without_a_data_dir_records_go_to_a_temporary_directory() -> None:
    policy = AuditLoggerPolicy(AuditLogger(stdout=False), PolicyRuntime())
    assert policy.directory == audit_logger._fallback_dir().resolve()
    assert policy.directory.is_dir()
    await policy.aclose()


async def test_stdout_echo_carries_the_sealed_lines(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    policy = make(tmp_path, stdout=True)
    await policy.on_finish(request())
    await policy.aclose()
    echoed = [json.loads(line) for line in capfdbinary.readouterr().out.splitlines()]
    assert [e["body"]["request_id"] for e in echoed if e["type"] == "access"] == ["0123abcd"]
