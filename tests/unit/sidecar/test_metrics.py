"""The loop-thread metric families export exactly what prometheus_client's own would."""

from __future__ import annotations

import re

import pytest
from packgate_sidecar.metrics import POLICY_BUCKETS, LoopFamily, Metrics
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

VALUES = [0.00005, 0.0001, 0.0003, 0.0001, 0.7, 2.0, 0.0025]


def _without_created(exposition: bytes) -> str:
    # Creation times differ by construction; everything else must be identical.
    return re.sub(r"(?m)^.*_created.*\n", "", exposition.decode())


def test_histogram_and_counter_match_prometheus_client_sample_for_sample() -> None:
    native, loop = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram(
        "t_seconds", "d", ("kind", "phase"), registry=native, buckets=POLICY_BUCKETS
    )
    counter = Counter("t_total", "d", ("kind",), registry=native)
    fast_histogram = LoopFamily("t_seconds", "d", ("kind", "phase"), POLICY_BUCKETS)
    fast_counter = LoopFamily("t_total", "d", ("kind",))
    loop.register(fast_histogram)
    loop.register(fast_counter)
    for index, value in enumerate(VALUES):
        kind = "a" if index % 2 else "b"
        histogram.labels(kind, "request").observe(value)
        fast_histogram.labels(kind, "request").observe(value)
        counter.labels(kind).inc()
        fast_counter.labels(kind).inc()
    assert _without_created(generate_latest(loop)) == _without_created(generate_latest(native))
    assert "t_seconds_created" in generate_latest(loop).decode()


def test_a_value_on_a_bucket_edge_counts_in_that_bucket() -> None:
    metrics = Metrics()
    metrics.child(metrics.policy_duration, "k", "request").observe(0.001)
    sample = metrics.registry.get_sample_value
    labels = {"kind": "k", "phase": "request"}
    assert sample("packgate_policy_duration_seconds_bucket", {**labels, "le": "0.0005"}) == 0
    assert sample("packgate_policy_duration_seconds_bucket", {**labels, "le": "0.001"}) == 1


def test_wrong_label_count_is_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        Metrics().requests.labels("/v1/chat/completions", "200")
