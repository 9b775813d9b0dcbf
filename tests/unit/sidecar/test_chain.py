"""The chain mechanism: order, short-circuit, records, budgets, fail-closed and fail-open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from packgate_policy import ConfigError, PolicyBlock, load_mapping
from packgate_sidecar.chain import Chain, StreamBlocked
from packgate_sidecar.metrics import Metrics
from packgate_sidecar.policy import (
    Decision,
    Policy,
    PolicyRuntime,
    Registry,
    RequestContext,
    StreamFilter,
    TextItem,
)
from packgate_sidecar.reload import ConfigHolder
from packgate_sidecar.shapes import CHAT, request_texts

from tests.support.policies import (
    BlockWordPolicy,
    FailingPolicy,
    RecordingPolicy,
    ReplacePolicy,
    registry_with,
)


def config(chain: Sequence[str], **blocks: dict[str, Any]) -> Any:
    return load_mapping(
        {
            "pack": {"name": "p", "version": "1.0.0"},
            "providers": {"targets": [{"id": "t", "provider": "openai"}]},
            "policies": {"chain": list(chain)},
            "policy": {kind.replace("_", "-"): block for kind, block in blocks.items()},
        }
    ).config


def build(chain: Sequence[str], registry: Registry, **blocks: dict[str, Any]) -> Chain:
    return Chain.build(config(chain, **blocks), registry, PolicyRuntime(), Metrics())


def chat(*texts: str) -> tuple[dict[str, Any], list[Any]]:
    body = {"messages": [{"role": "user", "content": text} for text in texts]}
    return body, request_texts(CHAT, body)


def sample(chain: Chain, name: str, **labels: str) -> float:
    return chain.metrics.registry.get_sample_value(name, labels) or 0.0


class Spy(Policy):
    """Records the order it ran in and what text it saw."""

    log: list[tuple[str, str]] = []

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        Spy.log.append((self.settings.__class__.__name__, texts[0].text))
        return Decision.allow()


async def test_runs_in_chain_order_and_later_policies_see_rewrites() -> None:
    Spy.log = []
    registry = registry_with(
        pii_detector=lambda s, r: ReplacePolicy(s, r, marker="alice@example.com"),
        prompt_injection=Spy,
        content_filter=Spy,
    )
    chain = build(["content-filter", "pii-detector", "prompt-injection"], registry)
    body, slots = chat("mail alice@example.com now")
    ctx = RequestContext("r", CHAT)
    assert await chain.run_request(ctx, slots) is None
    assert Spy.log == [
        ("ContentFilter", "mail alice@example.com now"),
        ("PromptInjection", "mail [gone] now"),
    ]
    assert body["messages"][0]["content"] == "mail [gone] now"
    assert [(d.kind, d.action) for d in ctx.decisions] == [
        ("content-filter", "allow"),
        ("pii-detector", "rewrite"),
        ("prompt-injection", "allow"),
    ]
    assert (
        sample(
            chain,
            "packgate_policy_decisions_total",
            kind="pii-detector",
            phase="request",
            decision="rewrite",
        )
        == 1
    )


async def test_a_block_short_circuits_the_rest_of_the_chain() -> None:
    recorder: list[FailingPolicy] = []

    def failing(settings: PolicyBlock, runtime: PolicyRuntime) -> FailingPolicy:
        recorder.append(FailingPolicy(settings, runtime, mode="flag"))
        return recorder[-1]

    registry = registry_with(content_filter=BlockWordPolicy, prompt_injection=failing)
    chain = build(["content-filter", "prompt-injection"], registry)
    ctx = RequestContext("r", CHAT)
    blocked = await chain.run_request(ctx, chat("this is forbidden")[1])
    assert blocked is not None and (blocked.kind, blocked.action) == ("content-filter", "block")
    assert recorder[0].calls == 0
    assert ctx.blocked_by is blocked


@pytest.mark.parametrize("mode", ["raise", "sleep", "spin"])
async def test_a_failing_policy_blocks_unless_it_fails_open(mode: str) -> None:
    registry = registry_with(prompt_injection=lambda s, r: FailingPolicy(s, r, mode=mode))
    closed = build(["prompt-injection"], registry, prompt_injection={"timeout_ms": 30})
    ctx = RequestContext("r", CHAT)
    blocked = await closed.run_request(ctx, chat("hello")[1])
    failure = "error" if mode == "raise" else "timeout"
    assert blocked is not None and blocked.failure == failure and not blocked.fail_open
    assert (
        sample(
            closed,
            "packgate_policy_failures_total",
            kind="prompt-injection",
            phase="request",
            reason=failure,
        )
        == 1
    )

    opened = build(
        ["prompt-injection"], registry, prompt_injection={"timeout_ms": 30, "fail_open": True}
    )
    ctx = RequestContext("r", CHAT)
    assert await opened.run_request(ctx, chat("hello")[1]) is None
    assert ctx.decisions[0].fail_open and ctx.decisions[0].failure == failure
    assert (
        sample(opened, "packgate_policy_fail_open_total", kind="prompt-injection", phase="request")
        == 1
    )


async def test_the_time_budget_cuts_an_async_wait_short() -> None:
    registry = registry_with(prompt_injection=lambda s, r: FailingPolicy(s, r, mode="sleep"))
    chain = build(["prompt-injection"], registry, prompt_injection={"timeout_ms": 20})
    started = asyncio.get_running_loop().time()
    await chain.run_request(RequestContext("r", CHAT), chat("x")[1])
    assert asyncio.get_running_loop().time() - started < 2  # the policy sleeps for 5 s


class Waits(Policy):
    """Suspends twice (as a classifier call would) before it decides."""

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return Decision.flag("waited", score=0.5)


async def test_a_hook_that_waits_within_its_budget_has_its_decision_recorded() -> None:
    chain = build(["prompt-injection"], registry_with(prompt_injection=Waits))
    ctx = RequestContext("r", CHAT)
    assert await chain.run_request(ctx, chat("x")[1]) is None
    [record] = ctx.decisions
    assert record.action == "flag" and record.reason == "waited" and record.failure is None


class Descheduled(Policy):
    """Finishes quickly in CPU terms but late by the clock: its thread is held up without running,
    as on a busy node where the sidecar waits for a core (a blocking sleep stands in for that)."""

    def _held_up(self) -> None:
        time.sleep(self.settings.timeout_ms / 1000 * 3)

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        self._held_up()
        return Decision.allow()

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        policy = self

        class Late(StreamFilter):
            def feed(self, text: str) -> str:
                policy._held_up()
                return text

        return Late()


async def test_time_the_sidecar_spends_descheduled_is_not_a_policy_timeout() -> None:
    chain = build(
        ["pii-detector"], registry_with(pii_detector=Descheduled), pii_detector={"timeout_ms": 20}
    )
    ctx = RequestContext("r", CHAT)
    assert await chain.run_request(ctx, chat("hello")[1]) is None
    assert ctx.decisions[0].failure is None and ctx.decisions[0].duration_ms >= 60
    stream = chain.open_stream(ctx)
    assert stream is not None
    assert stream.feed((0, "content"), "text") == "text"
    for phase in ("request", "stream"):
        failures = sample(
            chain,
            "packgate_policy_failures_total",
            kind="pii-detector",
            phase=phase,
            reason="timeout",
        )
        assert failures == 0


async def test_bad_rewrites_count_as_a_policy_error() -> None:
    class Bad(Policy):
        async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
            return Decision.rewrite({7: "no such text"})

    chain = build(["pii-detector"], registry_with(pii_detector=Bad))
    blocked = await chain.run_request(RequestContext("r", CHAT), chat("x")[1])
    assert blocked is not None and blocked.failure == "error"


def test_unknown_kinds_are_config_errors_never_skipped() -> None:
    with pytest.raises(ConfigError) as raised:
        build(["pii-detector", "audit-logger"], registry_with(pii_detector=ReplacePolicy))
    assert [issue.path for issue in raised.value.issues] == ["policies.chain[1]"]
    assert "audit-logger" in str(raised.value)


def test_a_policy_checking_whole_responses_must_also_check_streams() -> None:
    class WholeOnly(Policy):
        async def on_response(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
            return Decision.allow()

    with pytest.raises(ConfigError, match="streamed responses would bypass it"):
        build(["content-filter"], registry_with(content_filter=WholeOnly))


def test_a_factory_that_raises_is_a_config_error() -> None:
    def broken(settings: PolicyBlock, runtime: PolicyRuntime) -> Policy:
        raise ValueError("cannot compile")

    with pytest.raises(ConfigError, match="could not start"):
        build(["content-filter"], registry_with(content_filter=broken))


def test_the_holder_is_not_ready_with_an_unimplemented_policy() -> None:
    holder = ConfigHolder(Registry(), PolicyRuntime(), Metrics(), environ={})
    result = holder.apply(
        {
            "pack": {"name": "p", "version": "1.0.0"},
            "providers": {"targets": [{"id": "t", "provider": "openai"}]},
            "policies": {"chain": ["pii-detector"]},
        }
    )
    assert not result.ok
    ready, detail = holder.readiness()
    assert not ready
    assert detail["last_error"]["issues"][0]["path"] == "policies.chain[0]"


async def test_unchanged_policies_are_reused_across_reloads() -> None:
    registry = registry_with(audit_logger=RecordingPolicy, pii_detector=ReplacePolicy)
    metrics = Metrics()
    first = Chain.build(
        config(["audit-logger", "pii-detector"]), registry, PolicyRuntime(), metrics
    )
    second = Chain.build(
        config(["audit-logger", "pii-detector"], pii_detector={"action": "mask"}),
        registry,
        PolicyRuntime(),
        metrics,
        previous=first,
    )
    assert second.entries[0].policy is first.entries[0].policy
    assert second.entries[1].policy is not first.entries[1].policy


async def test_finish_hooks_see_the_whole_request_and_never_raise() -> None:
    class Exploding(Policy):
        async def on_finish(self, ctx: RequestContext) -> None:
            raise RuntimeError("disk full")

    recorder: list[RecordingPolicy] = []

    def recording(settings: PolicyBlock, runtime: PolicyRuntime) -> RecordingPolicy:
        recorder.append(RecordingPolicy(settings, runtime))
        return recorder[-1]

    chain = build(
        ["cost-attribution", "audit-logger"],
        registry_with(cost_attribution=Exploding, audit_logger=recording),
    )
    ctx = RequestContext("r", CHAT, status=200, usage={"total_tokens": 3})
    await chain.finish(ctx)
    assert recorder[0].finished == [ctx]
    assert (
        sample(
            chain,
            "packgate_policy_failures_total",
            kind="cost-attribution",
            phase="finish",
            reason="error",
        )
        == 1
    )


async def test_finish_runs_hooks_in_order_each_cut_by_its_own_budget() -> None:
    """`finish` runs the hooks in chain order, each timed; a hook that waits holds back the
    hooks after it until it is done, and a wait past its budget is cut (a timeout, counted and
    logged, never raised) before the next hook runs."""
    events: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Quick(Policy):
        async def on_finish(self, ctx: RequestContext) -> None:
            events.append(f"quick:{ctx.request_id}")

    class Waits(Policy):
        finish_first = True

        async def on_finish(self, ctx: RequestContext) -> None:
            events.append("waits:start")
            await gate
            events.append("waits:end")

    class Stuck(Policy):
        async def on_finish(self, ctx: RequestContext) -> None:
            events.append("stuck:start")
            await asyncio.sleep(10)

    quick = build(["audit-logger"], registry_with(audit_logger=Quick))
    await quick.finish(RequestContext("a", CHAT))
    assert events == ["quick:a"]
    timed = sample(
        quick, "packgate_policy_duration_seconds_count", kind="audit-logger", phase="finish"
    )
    assert timed == 1

    events.clear()
    both = build(
        ["audit-logger", "cost-attribution"],
        registry_with(audit_logger=Quick, cost_attribution=Waits),
    )
    task = asyncio.get_running_loop().create_task(both.finish(RequestContext("b", CHAT)))
    await asyncio.sleep(0)
    assert events == ["waits:start"]  # the hook after it waits for the gate too
    gate.set_result(None)
    await task
    assert events == ["waits:start", "waits:end", "quick:b"]

    events.clear()
    stuck = build(
        ["cost-attribution", "audit-logger"],
        registry_with(cost_attribution=Stuck, audit_logger=Quick),
        cost_attribution={"timeout_ms": 20},
    )
    await asyncio.wait_for(stuck.finish(RequestContext("c", CHAT)), 5)
    assert events == ["stuck:start", "quick:c"]
    failures = sample(
        stuck,
        "packgate_policy_failures_total",
        kind="cost-attribution",
        phase="finish",
        reason="timeout",
    )
    assert failures == 1


# --- stream filters -------------------------------------------------------------------------


async def test_stream_filters_hold_back_and_release_in_order() -> None:
    registry = registry_with(pii_detector=lambda s, r: ReplacePolicy(s, r, marker="SECRET"))
    chain = build(["pii-detector"], registry)
    ctx = RequestContext("r", CHAT, stream=True)
    stream = chain.open_stream(ctx)
    assert stream is not None
    out = [stream.feed((0, "content"), piece) for piece in ["my SE", "CR", "ET is", " SEC"]]
    out.append(stream.finish((0, "content")))
    assert "".join(out) == "my [gone] is SEC"
    assert out[0] == "my "  # only the possible start of the marker is held back
    stream.close()
    assert [(d.kind, d.phase, d.action) for d in ctx.decisions] == [
        ("pii-detector", "stream", "rewrite")
    ]


class SlowFilter(StreamFilter):
    def feed(self, text: str) -> str:
        time.sleep(0.005)
        return text

    def summary(self) -> Decision | None:
        return Decision.allow("scanned")


class SlowStreams(Policy):
    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        return SlowFilter()


async def test_time_spent_in_stream_filters_is_recorded_with_their_summary() -> None:
    chain = build(["pii-detector"], registry_with(pii_detector=SlowStreams))
    ctx = RequestContext("r", CHAT, stream=True)
    stream = chain.open_stream(ctx)
    assert stream is not None
    for piece in ["a", "b", "c", "d"]:
        stream.feed((0, "content"), piece)
    stream.finish((0, "content"))
    stream.close()
    (record,) = ctx.decisions
    assert record.phase == "stream" and record.duration_ms >= 20
    observed = sample(
        chain, "packgate_policy_duration_seconds_sum", kind="pii-detector", phase="stream"
    )
    assert observed >= 0.02


async def test_a_stream_filter_can_block_mid_stream() -> None:
    chain = build(["content-filter"], registry_with(content_filter=BlockWordPolicy))
    ctx = RequestContext("r", CHAT, stream=True)
    stream = chain.open_stream(ctx)
    assert stream is not None
    assert stream.feed((0, "content"), "all fine, ") == "all fine, "
    with pytest.raises(StreamBlocked) as raised:
        stream.feed((0, "content"), "forbi")
        stream.feed((0, "content"), "dden")
    assert raised.value.kind == "content-filter"
    assert ctx.decisions[-1].action == "block"


class BrokenFilter(StreamFilter):
    def feed(self, text: str) -> str:
        raise RuntimeError("bug")


class BrokenStreams(Policy):
    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        return BrokenFilter()


async def test_a_broken_stream_filter_fails_closed_or_open() -> None:
    closed = build(["pii-detector"], registry_with(pii_detector=BrokenStreams))
    stream = closed.open_stream(RequestContext("r", CHAT))
    assert stream is not None
    with pytest.raises(StreamBlocked):
        stream.feed((0, "content"), "text")

    opened = build(
        ["pii-detector"],
        registry_with(pii_detector=BrokenStreams),
        pii_detector={"fail_open": True},
    )
    stream = opened.open_stream(RequestContext("r", CHAT))
    assert stream is not None
    assert stream.feed((0, "content"), "text") == "text"
    assert stream.feed((0, "content"), "more") == "more"
    assert (
        sample(opened, "packgate_policy_fail_open_total", kind="pii-detector", phase="stream") == 1
    )


def test_policies_are_closed_when_no_config_uses_them_any_more() -> None:
    made: list[RecordingPolicy] = []

    def recording(settings: PolicyBlock, runtime: PolicyRuntime) -> RecordingPolicy:
        made.append(RecordingPolicy(settings, runtime))
        return made[-1]

    def broken(settings: PolicyBlock, runtime: PolicyRuntime) -> Policy:
        raise ValueError("cannot start")

    holder = ConfigHolder(
        registry_with(audit_logger=recording, content_filter=broken, pii_detector=ReplacePolicy),
        PolicyRuntime(),
        Metrics(),
        environ={},
    )

    def pack(chain: list[str], **blocks: Any) -> dict[str, Any]:
        return {
            "pack": {"name": "p", "version": "1.0.0"},
            "providers": {"targets": [{"id": "t", "provider": "openai"}]},
            "policies": {"chain": chain},
            "policy": blocks,
        }

    # A chain that fails half-way closes what it had already built.
    assert not holder.apply(pack(["audit-logger", "content-filter"])).ok
    assert made[0].closed

    assert holder.apply(pack(["audit-logger"])).ok
    active = holder.current
    assert active is not None
    holder.enter(active)  # a request in flight on this config
    assert holder.apply(pack(["audit-logger", "pii-detector"])).ok
    assert holder.apply(pack(["audit-logger"], **{"audit-logger": {"retention_days": 7}})).ok
    assert not made[1].closed  # still in use by the request in flight
    holder.leave(active)
    assert made[1].closed and not made[2].closed
