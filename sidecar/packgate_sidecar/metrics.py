"""Prometheus metrics of the sidecar, on a registry of its own.

Why it exists: operators need to see, per pod, what the gateway forwards, what it blocks, how slow
the providers are, whether a policy is failing open, and which config is in force (the operator's
convergence check compares `packgate_config_info{hash}` with the pack's hash). A registry per
sidecar instance (not prometheus_client's global one) keeps tests and several gateways in one
process independent, and `counter`/`histogram`/`gauge` give policies get-or-create access so a
policy rebuilt on reload does not register its metrics twice.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_M = TypeVar("_M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
POLICY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._own: dict[str, MetricWrapperBase] = {}
        self._verdicts: _VerdictLookups | None = None
        self.requests = self._loop_family(
            "packgate_requests_total",
            "Requests answered by the gateway, by route, HTTP status and provider target.",
            ("route", "status", "target"),
        )
        self.request_duration = self._loop_family(
            "packgate_request_duration_seconds",
            "Time from receiving a request to its last response byte, by route.",
            ("route",),
            LATENCY_BUCKETS,
        )
        self.upstream_latency = self._loop_family(
            "packgate_upstream_latency_seconds",
            "Time from sending a request to a provider target until its response headers.",
            ("target", "route"),
            LATENCY_BUCKETS,
        )
        self.upstream_failures = self.counter(
            "packgate_upstream_failures_total",
            "Failed attempts at a provider target (status_429, status_5xx, connect, timeout); "
            "each one falls back to the next target when there is one.",
            ("target", "reason"),
        )
        self.stream_aborts = self.counter(
            "packgate_stream_aborts_total",
            "Streams that did not end normally: upstream_error, blocked or client_disconnected.",
            ("route", "reason"),
        )
        self.inflight = self.gauge("packgate_inflight_requests", "Requests being handled now.")
        # The hot path bumps a plain int; the gauge reads it only when scraped.
        self.inflight_count = 0
        self.inflight.set_function(lambda: self.inflight_count)
        # Labelled children by label values: `labels()` costs more than the increment itself.
        self._children: dict[tuple[Any, ...], Any] = {}
        self.policy_decisions = self._loop_family(
            "packgate_policy_decisions_total",
            "Policy decisions by policy kind, phase (request, response, stream) and decision.",
            ("kind", "phase", "decision"),
        )
        self.policy_duration = self._loop_family(
            "packgate_policy_duration_seconds",
            "Time a policy took per request phase.",
            ("kind", "phase"),
            POLICY_BUCKETS,
        )
        self.policy_failures = self.counter(
            "packgate_policy_failures_total",
            "Policies that raised (error) or overran timeout_ms (timeout).",
            ("kind", "phase", "reason"),
        )
        self.policy_fail_open = self.counter(
            "packgate_policy_fail_open_total",
            "Policy failures let through because the policy is configured with fail_open.",
            ("kind", "phase"),
        )
        self.config_info = self.gauge(
            "packgate_config_info",
            "The policy config in force (value 1), labelled with its hash, pack and version.",
            ("hash", "pack", "version"),
        )
        self.config_ready = self.gauge(
            "packgate_config_ready", "1 when a valid policy config is loaded, else 0."
        )
        self.reloads = self.counter(
            "packgate_config_reloads_total",
            "Config loads by source (file, push) and result (success, failure, unchanged).",
            ("source", "result"),
        )
        self.signature_refusals = self.counter(
            "packgate_config_signature_refusals_total",
            "Configs refused because the operator's signature is missing, wrong or older than "
            "the config in force, by source (file, push) and reason.",
            ("source", "reason"),
        )
        self.last_reload = self.gauge(
            "packgate_config_last_reload_timestamp_seconds",
            "Unix time of the last config load attempt, by result.",
            ("result",),
        )

    def _loop_family(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float] | None = None,
    ) -> LoopFamily:
        family = LoopFamily(name, documentation, labels, buckets)
        self.registry.register(family)
        return family

    def child(self, metric: MetricWrapperBase | LoopFamily, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: hot paths count without the label lookup."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def request_done(self, route: str, status: int, target: str, seconds: float | None) -> None:
        self.child(self.requests, route, str(status), target).inc()
        if seconds is not None:
            self.child(self.request_duration, route).observe(seconds)

    def watch_verdicts(self, lookups: Callable[[], Mapping[tuple[str, bool], int]]) -> None:
        """Export a verdict cache's lookup counts, read when scraped: a Prometheus increment per
        lookup (a lock and a label lookup) would cost more than the lookup itself."""
        if self._verdicts is None:
            self._verdicts = _VerdictLookups(lookups)
            self.registry.register(self._verdicts)
        self._verdicts.lookups = lookups  # the runtime built last is the one in use

    def upstream_answered(self, target: str, route: str, seconds: float) -> None:
        self.child(self.upstream_latency, target, route).observe(seconds)

    def _get(self, cls: type[_M], name: str) -> _M | None:
        existing = self._own.get(name)
        if existing is None:
            return None
        if not isinstance(existing, cls):
            raise ValueError(f"metric {name} already exists as {type(existing).__name__}")
        return existing

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        found = self._get(Counter, name)
        if found is None:
            found = Counter(name, documentation, labels, registry=self.registry)
            self._own[name] = found
        return found

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        found = self._get(Gauge, name)
        if found is None:
            found = Gauge(name, documentation, labels, registry=self.registry)
            self._own[name] = found
        return found

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        found = self._get(Histogram, name)
        if found is None:
            found = Histogram(name, documentation, labels, registry=self.registry, buckets=buckets)
            self._own[name] = found
        return found

    def set_config(self, config_hash: str | None, pack: str = "", version: str = "") -> None:
        self.config_info.clear()
        if config_hash is None:
            self.config_ready.set(0)
            return
        self.config_info.labels(config_hash, pack, version).set(1)
        self.config_ready.set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _VerdictLookups(Collector):
    def __init__(self, lookups: Callable[[], Mapping[tuple[str, bool], int]]) -> None:
        self.lookups = lookups

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "packgate_verdict_cache_lookups",
            "Per-message verdict cache lookups by policy kind and result (hit, miss): a hit is a "
            "message judged earlier under the same policy config and not judged again.",
            labels=("kind", "result"),
        )
        for (kind, hit), count in sorted(self.lookups().items()):
            family.add_metric([kind, "hit" if hit else "miss"], count)
        yield family


def _go_float(bound: float) -> str:
    """A bucket's `le` label as prometheus_client writes it (`1.0`, `0.001`)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _LoopCount:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _LoopSpread:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # buckets count values <= bound
        self.sum += amount


class LoopFamily(Collector):
    """A labelled counter (`buckets` None) or histogram that only the event loop thread updates.

    Why: prometheus_client takes a lock per value and re-checks the metric on every update, so a
    histogram observation cost about 1 us and a request made a dozen (its own, the upstream's,
    each policy's decision and duration). Children here are plain attributes, bumped in well under
    that, and exported in the same format when scraped (the scrape runs on the loop too). Only
    for metrics updated on the loop thread: a worker thread must use `counter`/`histogram`.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float] | None = None,
    ) -> None:
        self.name = name.removesuffix("_total") if buckets is None else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = None if buckets is None else sorted(float(b) for b in buckets)
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self.children.get(key)
        if child is None:
            child = _LoopCount() if self.bounds is None else _LoopSpread(self.bounds)
            self.children[key] = child
        return child

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are checked by the registry from collect(); nothing to pre-declare

    def collect(self) -> Iterator[Metric]:
        if self.bounds is None:
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, count in list(self.children.items()):
                counter.add_metric(values, count.value, created=count.created)
            yield counter
            return
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for values, spread in list(self.children.items()):
            running, buckets = 0, []
            for edge, count in zip(edges, spread.counts, strict=True):
                running += count
                buckets.append((edge, float(running)))
            family.add_metric(values, buckets, spread.sum)
            family.samples.append(
                Sample(
                    self.name + "_created",
                    dict(zip(self.labelnames, values, strict=True)),
                    spread.created,
                )
            )
        yield family
