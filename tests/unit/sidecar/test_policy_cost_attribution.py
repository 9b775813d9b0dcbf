"""The cost-attribution policy: tokens, prices, tags and the Prometheus counters."""

from __future__ import annotations

from typing import Any

import pytest
from packgate_policy import CostAttribution
from packgate_sidecar.metrics import Metrics
from packgate_sidecar.policies import cost_attribution
from packgate_sidecar.policies.cost_attribution import (
    Attribution,
    CostAttributionPolicy,
    attribute,
    price_for,
)
from packgate_sidecar.policy import PodIdentity, PolicyRuntime, RequestContext


def settings(**values: Any) -> CostAttribution:
    return CostAttribution.model_validate(values)


def finished(
    usage: dict[str, Any] | None = None,
    status: str = "200",
    model: str = "gpt-4o",
    headers: dict[str, str] | None = None,
    input_chars: int = 0,
    output_chars: int = 0,
) -> RequestContext:
    ctx = RequestContext(
        "req",
        "/v1/chat/completions",
        pod=PodIdentity("pod-a", "ns-a", {"team": "blue", "app": "chat", "secret-ish": "x"}),
        headers=headers or {},
        model=model,
    )
    ctx.upstream_model = model
    ctx.target = "t0"
    ctx.attempts.append(("t0", status))
    ctx.usage = usage
    ctx.input_chars, ctx.output_chars = input_chars, output_chars
    return ctx


def test_prices_exact_dated_snapshot_override_and_unknown() -> None:
    assert price_for("gpt-4o") == (2.50, 10.00)
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_for("gpt-3.5-turbo-0125") == (0.50, 1.50)
    assert price_for("gpt-4o-audio-preview") is None  # a different product, not a snapshot
    assert price_for("my-local-llama") is None
    assert price_for("gpt-4o", {"gpt-4o": (1.0, 2.0)}) == (1.0, 2.0)


def test_reported_chat_usage_is_priced() -> None:
    ctx = finished({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500})
    result = attribute(ctx, settings())
    assert (result.input_tokens, result.output_tokens, result.estimated) == (1000, 500, False)
    assert result.cost_usd == pytest.approx((1000 * 2.50 + 500 * 10.00) / 1e6)
    assert ctx.state["cost-attribution"] is result  # what audit-logger reads


def test_responses_api_usage_and_config_prices() -> None:
    ctx = finished({"input_tokens": 2_000_000, "output_tokens": 0}, model="house-model")
    prices = {"house-model": {"input_per_1m": 0.5, "output_per_1m": 1.0}}
    assert attribute(ctx, settings(prices=prices)).cost_usd == pytest.approx(1.0)


def test_missing_usage_is_estimated_from_characters_and_marked() -> None:
    ctx = finished(None, input_chars=4000, output_chars=401)
    result = attribute(ctx, settings())
    assert (result.input_tokens, result.output_tokens, result.estimated) == (1000, 101, True)


def test_nothing_is_consumed_without_a_successful_answer() -> None:
    result = attribute(finished(None, status="503", input_chars=4000), settings())
    assert (result.measured, result.input_tokens, result.cost_usd) == (False, 0, 0.0)


def test_tags_from_config_then_allowed_pod_labels_then_allowed_headers() -> None:
    ctx = finished(
        {"prompt_tokens": 1, "completion_tokens": 1},
        headers={
            "x-packgate-tag-project": "apollo",
            "x-packgate-tag-team": "red",
            "x-packgate-tag-costcenter": "free text with spaces",
            "x-packgate-tag-invented": "nope",
        },
    )
    config = settings(
        tags={"team": "platform", "env": "prod"},
        pod_labels=["team", "app", "missing"],
        header_tags=["project", "costcenter"],
    )
    tags = dict(attribute(ctx, config).tags)
    assert tags.pop("costcenter").startswith("sha256:")  # not a token: a digest, not the text
    assert tags == {"team": "blue", "env": "prod", "app": "chat", "project": "apollo"}


async def test_counters_by_model_and_canonical_tags() -> None:
    metrics = Metrics()
    policy = CostAttributionPolicy(
        settings(tags={"team": "blue", "env": "prod"}), PolicyRuntime(metrics=metrics)
    )
    for _ in range(2):
        await policy.on_finish(finished({"prompt_tokens": 100, "completion_tokens": 50}))
    await policy.on_finish(finished(None, input_chars=40, output_chars=0))
    sample = metrics.registry.get_sample_value
    labels = {"model": "gpt-4o", "tags": "env=prod,team=blue"}
    assert (
        sample("packgate_cost_tokens_total", {**labels, "kind": "input", "source": "reported"})
        == 200
    )
    assert (
        sample("packgate_cost_tokens_total", {**labels, "kind": "output", "source": "reported"})
        == 100
    )
    assert (
        sample("packgate_cost_tokens_total", {**labels, "kind": "input", "source": "estimated"})
        == 10
    )
    assert sample("packgate_cost_usd_total", labels) == pytest.approx(
        (200 * 2.5 + 100 * 10 + 10 * 2.5) / 1e6
    )


async def test_client_chosen_labels_cannot_grow_series_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cost_attribution, "MAX_SERIES", 3)
    metrics = Metrics()
    policy = CostAttributionPolicy(settings(header_tags=["user"]), PolicyRuntime(metrics=metrics))
    for index in range(10):
        ctx = finished(
            {"prompt_tokens": 1, "completion_tokens": 0},
            headers={"x-packgate-tag-user": f"u{index}"},
        )
        await policy.on_finish(ctx)
    series = next(s for s in metrics.registry.collect() if s.name == "packgate_cost_tokens").samples
    users = {s.labels["tags"] for s in series if s.name.endswith("_total")}
    assert users == {"user=u0", "user=u1", "user=u2", "other"}


def test_attribution_is_computed_once_per_request() -> None:
    ctx = finished({"prompt_tokens": 1, "completion_tokens": 1})
    first = attribute(ctx, settings())
    ctx.usage = {"prompt_tokens": 999, "completion_tokens": 999}
    assert attribute(ctx, settings()) is first
    assert isinstance(first, Attribution)
