"""The policy chain: the configured policies, in order, around every request and response.

Why it exists: DESIGN.md fixes the semantics every policy relies on, and they live here once
rather than in each policy: the chain is the explicit ordered list of `policies.chain`; a block
short-circuits it; each decision is recorded on the request context and counted; a policy that
raises or overruns its `timeout_ms` blocks (fail closed) unless its block says `fail_open`, and
every fail-open is counted. A kind in the chain without a registered implementation is a config
error (never silently skipped), so an unimplemented policy can never mean an unenforced one.

Budgets: async waits are cut by a timeout (`budget.within`: armed only once a hook waits);
CPU-bound work cannot be interrupted on the event loop, so an overrun is also detected after the
fact, and judged by the CPU time the loop thread spent: a hook overran when both its wall time
and the loop thread's CPU time over it (read only then) exceed the budget. Wall time alone would
count time the sidecar spent descheduled on a busy node or waiting for the GIL, and turn overload
into spurious fail-closed blocks that no policy caused.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packgate_policy import ConfigError, ConfigIssue, PolicyConfig

from .budget import finish_within, within
from .logs import describe_exception, get_logger, log
from .metrics import Metrics
from .policy import (
    SEVERITY,
    Blocked,
    Decision,
    DecisionRecord,
    Policy,
    PolicyRuntime,
    Registry,
    RequestContext,
    StreamFilter,
    TextItem,
)
from .shapes import Channel, TextSlot

_log = get_logger("chain")


@dataclass(frozen=True)
class Entry:
    kind: str
    policy: Policy
    budget: float  # seconds
    fail_open: bool


class StreamBlocked(Exception):
    """A stream filter blocked (or failed closed) mid-stream."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        # Output of the events before the blocking one in the same upstream chunk: it was
        # allowed, so it is still sent before the error event.
        self.partial = b""


def _overrides(policy: Policy, name: str) -> bool:
    return getattr(type(policy), name) is not getattr(Policy, name)


def builtin_registry() -> Registry:
    """The registry of the shipped policies: `packgate_sidecar.policies.FACTORIES`.

    A broken or missing policies package leaves the registry empty, which makes every config
    that names a policy not ready: fail closed, with the reason in the log.
    """
    registry = Registry()
    try:
        module = importlib.import_module("packgate_sidecar.policies")
    except Exception as exc:
        log(_log, 40, "policies unavailable", error=describe_exception(exc))
        return registry
    factories = getattr(module, "FACTORIES", {})
    for kind, factory in dict(factories).items():
        registry.register(kind, factory)
    return registry


class Chain:
    def __init__(self, entries: Sequence[Entry], metrics: Metrics) -> None:
        self.entries = list(entries)
        self.metrics = metrics
        # (kind, phase, action) -> the decision counter and duration histogram it updates: one
        # lookup per decision instead of two label lookups.
        self._meters: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.request_entries = [e for e in self.entries if _overrides(e.policy, "on_request")]
        self.response_entries = [e for e in self.entries if _overrides(e.policy, "on_response")]
        self.stream_entries = [e for e in self.entries if _overrides(e.policy, "stream_filter")]
        finishing = [e for e in self.entries if _overrides(e.policy, "on_finish")]
        # Stable sort: producers of facts (finish_first) ahead of their consumers.
        self.finish_entries = sorted(finishing, key=lambda e: not e.policy.finish_first)

    @classmethod
    def build(
        cls,
        config: PolicyConfig,
        registry: Registry,
        runtime: PolicyRuntime,
        metrics: Metrics,
        previous: Chain | None = None,
        discard: Callable[[list[Policy]], None] | None = None,
    ) -> Chain:
        """Instantiate `config.policies.chain`; raise ConfigError naming every unusable kind.

        A policy whose settings did not change is reused from `previous`, so reloads keep its
        state (an audit writer, compiled patterns) and do not rebuild it for nothing. When the
        chain cannot be built, the policies made for it so far are handed to `discard` to close.
        """
        reusable: dict[str, Policy] = {}
        if previous is not None:
            reusable = {entry.kind: entry.policy for entry in previous.entries}
        entries: list[Entry] = []
        created: list[Policy] = []
        issues: list[ConfigIssue] = []
        for index, kind in enumerate(config.policies.chain):
            where = f"policies.chain[{index}]"
            settings = config.block(kind)
            policy = reusable.get(kind)
            if policy is None or policy.settings != settings:
                factory = registry.get(kind)
                if factory is None:
                    issues.append(
                        ConfigIssue(
                            where,
                            f'no implementation of policy "{kind}" is available in this sidecar; '
                            "refusing to run the chain without it",
                        )
                    )
                    continue
                try:
                    policy = factory(settings, runtime)
                    created.append(policy)
                except Exception as exc:
                    issues.append(
                        ConfigIssue(where, f'policy "{kind}" could not start: {type(exc).__name__}')
                    )
                    log(
                        _log, 40, "policy failed to start", kind=kind, error=describe_exception(exc)
                    )
                    continue
            if _overrides(policy, "on_response") and not _overrides(policy, "stream_filter"):
                issues.append(
                    ConfigIssue(
                        where,
                        f'policy "{kind}" checks whole responses but not streamed ones; '
                        "streamed responses would bypass it",
                    )
                )
                continue
            entries.append(Entry(kind, policy, settings.timeout_ms / 1000, settings.fail_open))
        if issues:
            if created and discard is not None:
                discard(created)
            raise ConfigError(issues)
        return cls(entries, metrics)

    # --- request and whole-response phases ---------------------------------------------------

    # The phases are plain functions handing back `_run`'s coroutine for the caller to await:
    # one coroutine per phase, not a second one around it.

    def run_request(
        self, ctx: RequestContext, slots: list[TextSlot]
    ) -> Coroutine[Any, Any, DecisionRecord | None]:
        """Run the request phase, rewriting `slots` in place; return the block, if any."""
        return self._run(ctx, "request", self.request_entries, slots)

    def run_response(
        self, ctx: RequestContext, slots: list[TextSlot]
    ) -> Coroutine[Any, Any, DecisionRecord | None]:
        return self._run(ctx, "response", self.response_entries, slots)

    async def _run(
        self, ctx: RequestContext, phase: str, entries: list[Entry], slots: list[TextSlot]
    ) -> DecisionRecord | None:
        if not entries:
            return None
        items = [TextItem(slot.get(), slot.role, slot.path) for slot in slots]
        request = phase == "request"
        for entry in entries:
            # One hook's call, inline (a coroutine layer per hook cost more than the rest of
            # the bookkeeping): its first step runs here, as `budget.within` runs it; only a
            # hook that waits gets a timer, for what is left of its budget.
            started, cpu_started = time.perf_counter(), time.thread_time()
            failure: str | None = None
            try:
                policy = entry.policy
                call = policy.on_request(ctx, items) if request else policy.on_response(ctx, items)
                try:
                    step = call.send(None)
                except StopIteration as done:
                    decision = done.value
                else:
                    decision = await finish_within(entry.budget - _since(started), call, step)
                if not isinstance(decision, Decision):
                    raise TypeError(
                        f"{entry.kind} returned {type(decision).__name__}, not Decision"
                    )
            except Blocked as blocked:
                decision = Decision.block(blocked.reason, **blocked.details)
                elapsed = _since(started)
            except TimeoutError:
                decision, failure, elapsed = None, "timeout", _since(started)
            except Exception as exc:
                log(_log, 40, "policy raised", kind=entry.kind, error=describe_exception(exc))
                decision, failure, elapsed = None, "error", _since(started)
            else:
                elapsed = time.perf_counter() - started
                # An overrun in CPU-bound code is only visible afterwards; it is still an
                # overrun. When failing open, the (late) decision is still applied: it is the
                # safer text.
                if elapsed > entry.budget and time.thread_time() - cpu_started > entry.budget:
                    failure = "timeout"
            if failure is not None:
                record = self._failed(ctx, entry, phase, failure, elapsed)
                if record.action == "block":
                    return record
            if decision is None:
                continue
            if decision.rewrites:
                try:
                    _apply(decision.rewrites, items, slots)
                except (IndexError, TypeError, KeyError) as exc:
                    record = self._failed(ctx, entry, phase, "error", elapsed, exc)
                    if record.action == "block":
                        return record
                    continue
            record = self._record(ctx, entry, phase, decision, elapsed)
            if decision.action == "block":
                return record
        return None

    def _record(
        self, ctx: RequestContext, entry: Entry, phase: str, decision: Decision, elapsed: float
    ) -> DecisionRecord:
        record = DecisionRecord(
            entry.kind,
            phase,
            decision.action,
            decision.reason,
            decision.details,
            round(elapsed * 1000, 3),
        )
        ctx.decisions.append(record)
        meters = self._meters.get((entry.kind, phase, decision.action))
        if meters is None:
            metrics = self.metrics
            meters = self._meters[(entry.kind, phase, decision.action)] = (
                metrics.child(metrics.policy_decisions, entry.kind, phase, decision.action),
                metrics.child(metrics.policy_duration, entry.kind, phase),
            )
        meters[0].inc()
        meters[1].observe(elapsed)
        return record

    def _failed(
        self,
        ctx: RequestContext,
        entry: Entry,
        phase: str,
        failure: str,
        elapsed: float,
        exc: BaseException | None = None,
    ) -> DecisionRecord:
        """Record a policy failure; the returned record blocks unless the policy fails open."""
        if exc is not None:
            log(_log, 40, "policy raised", kind=entry.kind, error=describe_exception(exc))
        self.metrics.policy_failures.labels(entry.kind, phase, failure).inc()
        if entry.fail_open:
            self.metrics.policy_fail_open.labels(entry.kind, phase).inc()
            log(
                _log,
                30,
                "policy failed open",
                kind=entry.kind,
                phase=phase,
                failure=failure,
                request_id=ctx.request_id,
            )
            action = "allow"
        else:
            action = "block"
        record = DecisionRecord(
            entry.kind,
            phase,
            action,  # type: ignore[arg-type]
            f"policy {failure}" + (", failed open" if entry.fail_open else ", failed closed"),
            {},
            round(elapsed * 1000, 3),
            failure,
            entry.fail_open,
        )
        ctx.decisions.append(record)
        self.metrics.child(self.metrics.policy_decisions, entry.kind, phase, action).inc()
        return record

    # --- streams -----------------------------------------------------------------------------

    def open_stream(self, ctx: RequestContext) -> StreamPolicies | None:
        if not self.stream_entries:
            return None
        return StreamPolicies(self, ctx)

    # --- after the response ------------------------------------------------------------------

    async def finish(self, ctx: RequestContext) -> None:
        """Run every `on_finish` hook; failures are logged and counted, never raised."""
        for entry in self.finish_entries:
            started = time.perf_counter()
            try:
                await within(entry.budget, entry.policy.on_finish(ctx))
            except Exception as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else "error"
                self.metrics.policy_failures.labels(entry.kind, "finish", reason).inc()
                log(
                    _log,
                    40,
                    "finish hook failed",
                    kind=entry.kind,
                    reason=reason,
                    request_id=ctx.request_id,
                    error=describe_exception(exc),
                )
            else:
                duration = self.metrics.child(self.metrics.policy_duration, entry.kind, "finish")
                duration.observe(_since(started))

    async def aclose(self, keep: Chain | None = None) -> None:
        """Close the policies that `keep` (the chain replacing this one) does not reuse."""
        kept = {id(entry.policy) for entry in keep.entries} if keep is not None else set()
        for entry in self.entries:
            if id(entry.policy) not in kept:
                try:
                    await entry.policy.aclose()
                except Exception as exc:
                    log(
                        _log,
                        40,
                        "policy close failed",
                        kind=entry.kind,
                        error=describe_exception(exc),
                    )


def _since(started: float) -> float:
    return time.perf_counter() - started


def _apply(rewrites: Mapping[int, str], items: list[TextItem], slots: list[TextSlot]) -> None:
    for index, text in rewrites.items():
        if not isinstance(text, str) or not isinstance(index, int) or index < 0:
            raise TypeError("rewrites must map text indexes to strings")
        items[index] = items[index]._replace(text=text)
    for index, text in rewrites.items():
        slots[index].set(text)


class _Stage:
    """One policy's filter on one channel, with its failure handling."""

    __slots__ = ("bypassed", "entry", "filter", "spent")

    def __init__(self, entry: Entry, stream_filter: StreamFilter) -> None:
        self.entry = entry
        self.filter = stream_filter
        self.bypassed = False
        self.spent = 0.0  # seconds spent in this filter, recorded with its summary


class StreamPolicies:
    """The stream filters of one streamed response: a pipeline of stages per text channel."""

    def __init__(self, chain: Chain, ctx: RequestContext) -> None:
        self.chain = chain
        self.ctx = ctx
        self.channels: dict[Channel, list[_Stage]] = {}
        self.closed: list[list[_Stage]] = []
        self._oneshots = 0

    def _stages(self, channel: Channel) -> list[_Stage]:
        stages = self.channels.get(channel)
        if stages is None:
            stages = []
            for entry in self.chain.stream_entries:
                made = self._guard(entry)
                if made is not None:
                    stages.append(_Stage(entry, made))
            self.channels[channel] = stages
        return stages

    def joinable(self, channel: Channel) -> bool:
        """Whether deltas of `channel` may be fed joined: none of its filters can block."""
        return not any(stage.filter.may_block for stage in self._stages(channel))

    def feed(self, channel: Channel, text: str) -> str:
        """Pass one delta through every filter; may raise StreamBlocked."""
        stages = self.channels.get(channel)  # per delta: the lookup inline, _stages when new
        for stage in self._stages(channel) if stages is None else stages:
            if not stage.bypassed:
                text = self._step(stage, stage.filter.feed, text)
        return text

    def finish(self, channel: Channel) -> str:
        """End a channel: flush each stage, feeding what an earlier stage released to the next."""
        stages = self.channels.pop(channel, None)
        if stages is None:
            return ""
        text = ""
        for stage in stages:
            if stage.bypassed:
                continue
            if text:
                text = self._step(stage, stage.filter.feed, text)
            text += self._step(stage, _finisher(stage.filter), "")
        self.closed.append(stages)
        return text

    def oneshot(self, text: str) -> str:
        """Filter a whole text that never streamed as deltas (a snapshot-only channel)."""
        self._oneshots += 1
        channel: Channel = ("oneshot", self._oneshots)
        out = self.feed(channel, text)
        return out + self.finish(channel)

    def open_channels(self) -> list[Channel]:
        return list(self.channels)

    def _step(self, stage: _Stage, call: Callable[[str], str], text: str) -> str:
        entry = stage.entry
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            out = call(text)
            if not isinstance(out, str):
                raise TypeError(f"{entry.kind} stream filter returned {type(out).__name__}")
        except Blocked as blocked:
            self._block(entry, blocked.reason, blocked.details, _since(started))
            raise StreamBlocked(entry.kind, blocked.reason) from None
        except Exception as exc:
            log(_log, 40, "stream filter raised", kind=entry.kind, error=describe_exception(exc))
            return self._fail(stage, "error", text, _since(started))
        elapsed = time.perf_counter() - started
        stage.spent += elapsed
        # The overrun rule of `Chain._run`: this runs once per delta of a trickling stream.
        if elapsed > entry.budget and time.thread_time() - cpu_started > entry.budget:
            self._fail(stage, "timeout", out, elapsed)
        return out

    def _fail(self, stage: _Stage, failure: str, text: str, elapsed: float) -> str:
        record = self.chain._failed(self.ctx, stage.entry, "stream", failure, elapsed)
        if record.action == "block":
            raise StreamBlocked(stage.entry.kind, record.reason)
        # Failing open on a broken filter: stop using it for this channel, pass text through.
        stage.bypassed = failure == "error"
        return text

    def _guard(self, entry: Entry) -> StreamFilter | None:
        try:
            return entry.policy.stream_filter(self.ctx)
        except Exception as exc:
            log(
                _log,
                40,
                "stream filter failed to start",
                kind=entry.kind,
                error=describe_exception(exc),
            )
            record = self.chain._failed(self.ctx, entry, "stream", "error", 0.0)
            if record.action == "block":
                raise StreamBlocked(entry.kind, record.reason) from None
            return None

    def _block(self, entry: Entry, reason: str, details: Mapping[str, Any], elapsed: float) -> None:
        self.chain._record(self.ctx, entry, "stream", Decision.block(reason, **details), elapsed)

    def close(self) -> None:
        """Record one decision per policy for the whole stream, merged over its channels."""
        merged: dict[str, tuple[Entry, Decision]] = {}
        spent: dict[str, float] = {}
        for stages in [*self.closed, *self.channels.values()]:
            for stage in stages:
                try:
                    summary = stage.filter.summary()
                except Exception as exc:
                    log(
                        _log,
                        40,
                        "stream summary raised",
                        kind=stage.entry.kind,
                        error=describe_exception(exc),
                    )
                    continue
                if summary is None:
                    continue
                spent[stage.entry.kind] = spent.get(stage.entry.kind, 0.0) + stage.spent
                seen = merged.get(stage.entry.kind)
                merged[stage.entry.kind] = (
                    stage.entry,
                    _merge(seen[1], summary) if seen else summary,
                )
        for kind, (entry, decision) in merged.items():
            self.chain._record(self.ctx, entry, "stream", decision, spent[kind])
        self.channels.clear()
        self.closed.clear()


def _finisher(stream_filter: StreamFilter) -> Callable[[str], str]:
    def finish(_ignored: str) -> str:
        return stream_filter.finish()

    return finish


def _merge(first: Decision, second: Decision) -> Decision:
    action = first.action if SEVERITY[first.action] >= SEVERITY[second.action] else second.action
    reasons = [r for r in (first.reason, second.reason) if r]
    reason = first.reason if first.reason == second.reason else ";".join(reasons)
    details: dict[str, Any] = dict(first.details)
    for key, value in second.details.items():
        old = details.get(key)
        both_numbers = isinstance(old, int | float) and isinstance(value, int | float)
        details[key] = old + value if both_numbers else value
    return Decision(action, reason, {}, details)
