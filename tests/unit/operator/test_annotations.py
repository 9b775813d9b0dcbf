"""Annotation parsing: an opted-in pod with a malformed annotation gets a message that says what to
write instead, and quantities are read the way Kubernetes reads them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from packgate_operator.annotations import (
    AnnotationError,
    check_resources,
    merge_resources,
    parse_pod_request,
    parse_quantity,
)

OPT_IN = {"packgate.dev/inject": "true", "packgate.dev/policy-pack": "gateway"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("0.5", Decimal("0.5")),
        ("2", Decimal(2)),
        ("128Mi", Decimal(128 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("1e3", Decimal(1000)),
        ("1.5k", Decimal(1500)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_read_like_kubernetes(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.2.3", "10 Mi", "12MB", "1mi", " 1"])
def test_malformed_quantities_are_refused(text: str) -> None:
    with pytest.raises(AnnotationError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_pods_that_did_not_opt_in_are_not_requests() -> None:
    assert parse_pod_request(None, "ns") is None
    assert parse_pod_request({"other": "x"}, "ns") is None
    assert parse_pod_request({"packgate.dev/inject": "false"}, "ns") is None


def test_opt_in_names_the_pack_and_keeps_overrides() -> None:
    request = parse_pod_request(
        {
            **OPT_IN,
            "packgate.dev/sidecar-cpu-request": "200m",
            "packgate.dev/sidecar-memory-limit": "1Gi",
        },
        "ns",
    )
    assert request is not None
    assert request.pack == "gateway"
    assert request.resource_overrides == {"requests": {"cpu": "200m"}, "limits": {"memory": "1Gi"}}


def test_inject_value_other_than_true_or_false_is_a_mistake_to_fix() -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_pod_request({**OPT_IN, "packgate.dev/inject": "yes"}, "ns")
    assert caught.value.problems == [
        'packgate.dev/inject is "yes": set it to "true" to inject the packgate sidecar '
        'or "false" to opt out'
    ]


def test_missing_pack_names_the_annotation_and_the_namespace() -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_pod_request({"packgate.dev/inject": "true"}, "team-a")
    (problem,) = caught.value.problems
    assert "packgate.dev/policy-pack is missing" in problem
    assert 'namespace "team-a"' in problem


def test_invalid_pack_name_is_refused() -> None:
    with pytest.raises(AnnotationError, match="not a valid PolicyPack name"):
        parse_pod_request({**OPT_IN, "packgate.dev/policy-pack": "My_Pack"}, "ns")


def test_malformed_resource_override_says_what_to_write() -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_pod_request({**OPT_IN, "packgate.dev/sidecar-cpu-limit": "lots"}, "ns")
    assert caught.value.problems == [
        'packgate.dev/sidecar-cpu-limit is "lots", which is not a Kubernetes quantity; '
        "write e.g. 100m or 0.5"
    ]


def test_memory_in_millibytes_is_caught_with_a_hint() -> None:
    with pytest.raises(AnnotationError, match='did you mean "256Mi"'):
        parse_pod_request({**OPT_IN, "packgate.dev/sidecar-memory-request": "256m"}, "ns")


def test_zero_limit_is_refused() -> None:
    with pytest.raises(AnnotationError, match="must be greater than 0"):
        parse_pod_request({**OPT_IN, "packgate.dev/sidecar-memory-limit": "0"}, "ns")


def test_misspelt_sidecar_annotation_is_not_ignored() -> None:
    with pytest.raises(
        AnnotationError, match=r"unknown annotation packgate\.dev/sidecar-cpu-requests"
    ):
        parse_pod_request({**OPT_IN, "packgate.dev/sidecar-cpu-requests": "1"}, "ns")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_pod_request(
            {"packgate.dev/inject": "on", "packgate.dev/sidecar-cpu-limit": "x"}, "ns"
        )
    assert len(caught.value.problems) == 3


def test_overrides_merge_over_defaults_and_request_above_limit_is_refused() -> None:
    defaults = {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}}
    merged = merge_resources(defaults, {"requests": {"memory": "1Gi"}})
    assert merged == {"requests": {"cpu": "50m", "memory": "1Gi"}, "limits": {"memory": "384Mi"}}
    with pytest.raises(AnnotationError, match="memory request 1Gi is above its limit 384Mi"):
        check_resources(merged, "pod annotations")
