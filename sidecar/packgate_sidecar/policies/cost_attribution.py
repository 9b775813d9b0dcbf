"""The cost-attribution policy: tokens and cost of each request, attributed to tags.

Why it exists: the platform team pays the provider bill and must split it by team, project and
workload. After each response this policy takes the token usage, prices it, attaches the tags
and counts both in Prometheus; the audit-logger records the same figures (`attribute` is the one
place they are computed, cached on the request, and cost-attribution's `on_finish` runs before
audit-logger's whatever the chain order, see `Policy.finish_first`).

Usage: the provider's `usage` (streamed responses carry it when the client asks for
`stream_options.include_usage`); without it, for a request the provider answered, an estimate of
one token per four characters of request and response text, marked `estimated`. Prices: USD per
million tokens from `PRICES` (OpenAI list prices; cached-input discounts and batch pricing are
not modelled), overridden per model by the config's `prices`; a dated snapshot such as
`gpt-4o-2024-08-06` takes its family's price. A model without a price has tokens but no cost.

Tags, later sources winning: the config's `tags`, then the pod labels named in `pod_labels`,
then `x-packgate-tag-<name>` request headers for the names in `header_tags` (only those: a
client cannot invent tags). Values are cleaned to short tokens; client values that are not
tokens are replaced by a digest.

Metrics, with fixed label sets because Prometheus requires them while tag keys change with the
config: `packgate_cost_tokens_total{model,kind=input|output,source=reported|estimated,tags}` and
`packgate_cost_usd_total{model,tags}`, where `tags` is the canonical `k=v,k=v` string (sorted by
key); select on it with a regex matcher (`tags=~".*team=blue.*"`). Client-chosen values could
grow the series without bound, so each process keeps at most `MAX_SERIES` distinct
(model, tags) pairs and counts the rest under `model="other",tags="other"`.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packgate_policy import CostAttribution, PolicyBlock

from ..audit.record import client_token
from ..metrics import Metrics
from ..policy import Policy, PolicyRuntime, RequestContext
from .common import settings_as

# USD per 1M tokens (input, output): OpenAI's published list prices for standard processing,
# as of June 2025 (o3 after its June 2025 reduction). Check openai.com/api/pricing before
# relying on them; the config's `prices` override any entry.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
}
CHARS_PER_TOKEN = 4
HEADER_PREFIX = "x-packgate-tag-"
MAX_SERIES = 500
STATE_KEY = "cost-attribution"
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_.:/@+%\-]")


@dataclass(frozen=True)
class Attribution:
    """What one request consumed and cost; no text, only counts, ids and tags."""

    model: str | None
    input_tokens: int
    output_tokens: int
    estimated: bool
    measured: bool  # false: nothing was consumed (blocked, or the provider did not answer)
    cost_usd: float | None
    tags: Mapping[str, str] = field(default_factory=dict)


def price_for(
    model: str | None, overrides: Mapping[str, tuple[float, float]] | None = None
) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens, or None when the model has no known price."""
    if not model:
        return None
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    base = _SNAPSHOT.sub("", model)
    return table.get(base) if base != model else None


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def measure_usage(ctx: RequestContext) -> tuple[int, int, bool] | None:
    """(input tokens, output tokens, estimated) of a finished request, or None when nothing was
    consumed: the request never got a successful answer from a provider."""
    usage = ctx.usage
    if usage:
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens", 0)))
        if prompt is not None and completion is not None:
            return prompt, completion, False
    if not any(status.startswith("2") for _, status in ctx.attempts):
        return None
    return (
        math.ceil(ctx.input_chars / CHARS_PER_TOKEN),
        math.ceil(ctx.output_chars / CHARS_PER_TOKEN),
        True,
    )


def clean(value: str, limit: int = 64) -> str:
    """A trusted value (config, pod label) as a short token: other characters become _."""
    return _NOT_TOKEN.sub("_", value)[:limit] or "_"


def tags_for(ctx: RequestContext, config: CostAttribution) -> dict[str, str]:
    tags = {key: clean(value) for key, value in config.tags.items()}
    for label in config.pod_labels:
        if label in ctx.pod.labels:
            tags[clean(label)] = clean(ctx.pod.labels[label])
    for name in config.header_tags:
        value = ctx.headers.get(HEADER_PREFIX + name.lower())
        if value:
            token = client_token(value[:64]) or "_"
            tags[name] = _NOT_TOKEN.sub("_", token)
    return tags


def attribute(ctx: RequestContext, config: CostAttribution) -> Attribution:
    """The request's attribution, computed once and kept in `ctx.state` for audit-logger."""
    done = ctx.state.get(STATE_KEY)
    if isinstance(done, Attribution):
        return done
    model = ctx.upstream_model or ctx.model
    measured = measure_usage(ctx)
    tags = tags_for(ctx, config)
    if measured is None:
        result = Attribution(model, 0, 0, False, False, 0.0, tags)
    else:
        tokens_in, tokens_out, estimated = measured
        overrides = {m: (p.input_per_1m, p.output_per_1m) for m, p in config.prices.items()}
        price = price_for(model, overrides)
        cost = None
        if price is not None:
            cost = round((tokens_in * price[0] + tokens_out * price[1]) / 1_000_000, 10)
        result = Attribution(model, tokens_in, tokens_out, estimated, True, cost, tags)
    ctx.state[STATE_KEY] = result
    return result


def canonical_tags(tags: Mapping[str, str]) -> str:
    return ",".join(f"{key}={tags[key]}" for key in sorted(tags))


# Distinct (model, tags) label pairs per metrics registry, to bound the series count.
_series: weakref.WeakKeyDictionary[Metrics, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


class CostAttributionPolicy(Policy):
    kind = "cost-attribution"
    finish_first = True

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        super().__init__(settings, runtime)
        self.config = settings_as(settings, CostAttribution)
        metrics = runtime.metrics
        self.metrics = metrics
        if metrics is not None:
            self.tokens = metrics.counter(
                "packgate_cost_tokens_total",
                "Tokens consumed, by model, kind (input, output), source (reported by the "
                "provider or estimated) and tags (canonical k=v,k=v).",
                ("model", "kind", "source", "tags"),
            )
            self.usd = metrics.counter(
                "packgate_cost_usd_total",
                "Cost in USD at the configured prices, by model and tags (canonical k=v,k=v).",
                ("model", "tags"),
            )

    def _labels(self, model: str | None, tags: Mapping[str, str]) -> tuple[str, str]:
        assert self.metrics is not None
        pair = (clean(client_token(model) or "unknown", 128), canonical_tags(tags))
        seen = _series.setdefault(self.metrics, set())
        if pair not in seen:
            if len(seen) >= MAX_SERIES:
                return ("other", "other")
            seen.add(pair)
        return pair

    async def on_finish(self, ctx: RequestContext) -> None:
        result = attribute(ctx, self.config)
        if self.metrics is None or not result.measured:
            return
        model, tags = self._labels(result.model, result.tags)
        source = "estimated" if result.estimated else "reported"
        self.tokens.labels(model, "input", source, tags).inc(result.input_tokens)
        self.tokens.labels(model, "output", source, tags).inc(result.output_tokens)
        if result.cost_usd is not None:
            self.usd.labels(model, tags).inc(result.cost_usd)
