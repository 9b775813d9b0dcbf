"""The audit-logger's record body, made from a request's context: typed, and encoded directly.

Why it exists: every request writes one audit record (a stream two), on the event loop.
:func:`build_record` says what a record holds, as the typed, checked ``AuditRecord``; building
that (a frozen dataclass of 18 fields, each checked) and then encoding it was most of what a
record cost there. :func:`encode_record` writes the same canonical bytes directly: most values
repeat from request to request (pod, pack, config hash, the policies' decisions) and become
JSON fragments made and checked once, or are tokens by construction (:func:`token` replaces
what a token may not hold); the rest is checked here as ``AuditRecord`` checks it, in the same
order, so a value it refuses is refused with the same ``ValueError``. A property test holds
``encode_record(ctx)`` equal to ``build_record(ctx).encode()``, byte for byte and in what they
refuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..audit.record import (
    AuditRecord,
    EncodedBody,
    PolicyDecision,
    TokenUsage,
    check_number,
    check_tags,
    check_token,
    client_token,
    json_num,
    json_str,
    tags_json,
    usage_json,
    utc_time,
)
from ..policy import DecisionRecord, RequestContext
from .cost_attribution import STATE_KEY, Attribution, measure_usage

ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_.:/@+=,%\-]")
_NUMBERS = (int, float)
_MAX_DECISIONS = 32
_MAX_TAGS = 32
_MAX_REMEMBERED = 4096
# Remembered, bounded (emptied when full): the same pod, pack, target and reasons, the same
# few decisions and the same identity come with every request.
_TOKENS: dict[str, str] = {}
_DECISIONS: dict[tuple[str, str, str], tuple[PolicyDecision, str]] = {}  # and its JSON
# (config_hash, namespace, pack, pack_version, pod) -> the JSON around the per-request fields
# that sort between them.
_IDENTITIES: dict[tuple[object, ...], tuple[str, str, str]] = {}


def decision_reason(record: DecisionRecord) -> str:
    """`phase:reason` plus numeric details, as one audit token (`request:pii:EMAIL/EMAIL=2`)."""
    if record.failure is not None:
        text = f"{record.phase}:{record.failure}," + (
            "fail_open" if record.fail_open else "fail_closed"
        )
    else:
        reason, details = record.reason, record.details
        text = f"{record.phase}:{reason}" if reason else record.phase
        if details:
            numbers = [
                f"{key}={value}"
                for key, value in details.items()
                if isinstance(value, _NUMBERS) and type(value) is not bool
            ]
            if numbers:
                text += "/" + ",".join(numbers)
    return as_token(text)


def build_record(ctx: RequestContext, started: bool = False) -> AuditRecord:
    """The audit record of a finished request: identities, decisions, usage, cost, timing."""
    decisions = [
        _decision(record.kind, record.action, decision_reason(record)) for record in ctx.decisions
    ]
    found = ctx.state.get(STATE_KEY)
    attribution = found if isinstance(found, Attribution) else None
    measured = None if attribution is not None else measure_usage(ctx)
    usage = None
    if attribution is not None and attribution.measured:
        usage = TokenUsage(
            attribution.input_tokens,
            attribution.output_tokens,
            attribution.input_tokens + attribution.output_tokens,
            attribution.estimated,
        )
    elif measured is not None:
        usage = TokenUsage(measured[0], measured[1], measured[0] + measured[1], measured[2])
    tags: Mapping[str, str] = attribution.tags if attribution is not None else {}
    return AuditRecord(
        time=utc_time(ctx.started_at),
        request_id=ctx.request_id,
        endpoint=ENDPOINTS.get(ctx.route, "other"),
        status=None
        if started
        else ctx.status
        if ctx.status is not None and 100 <= ctx.status <= 599
        else 499,
        latency_ms=ctx.latency_ms or 0.0,
        pod=token(ctx.pod.name),
        namespace=token(ctx.pod.namespace),
        pack=token(ctx.pack),
        pack_version=token(ctx.pack_version),
        config_hash=token(ctx.config_hash),
        model=client_token(ctx.upstream_model or ctx.model),
        target=token(ctx.target),
        streamed=ctx.stream,
        decisions=tuple(decisions[:_MAX_DECISIONS]),
        usage=usage,
        cost_usd=attribution.cost_usd if attribution is not None else None,
        tags=dict(list(tags.items())[:_MAX_TAGS]),
        outcome="started" if started else token(ctx.outcome),
    )


def encode_record(ctx: RequestContext, started: bool = False) -> EncodedBody:
    """``build_record(ctx, started).encode()``, without the record (see the module doc)."""
    decisions = [
        _decision_json(record.kind, record.action, decision_reason(record))
        for record in ctx.decisions
    ][:_MAX_DECISIONS]
    found = ctx.state.get(STATE_KEY)
    attribution = found if isinstance(found, Attribution) else None
    usage = "null"
    if attribution is not None:
        if attribution.measured:
            inp, out = attribution.input_tokens, attribution.output_tokens
            usage = usage_json(inp, out, inp + out, attribution.estimated)
        cost = attribution.cost_usd
        tags: Mapping[str, str] = dict(list(attribution.tags.items())[:_MAX_TAGS])
    else:
        measured = measure_usage(ctx)
        if measured is not None:
            inp, out, estimated = measured
            usage = usage_json(inp, out, inp + out, estimated)
        cost, tags = None, {}
    # The values in the order build_record computes them (what may raise raises first there).
    time = utc_time(ctx.started_at)
    code = None
    if not started:
        code = ctx.status if ctx.status is not None and 100 <= ctx.status <= 599 else 499
    latency = ctx.latency_ms or 0.0
    pod = ctx.pod
    identity = (ctx.config_hash, pod.namespace, ctx.pack, ctx.pack_version, pod.name)
    fragments = _IDENTITIES.get(identity)
    if fragments is None:
        fragments = _identity(*identity)
    model = client_token(ctx.upstream_model or ctx.model)
    target = token(ctx.target)
    outcome = "started" if started else token(ctx.outcome)
    # Then AuditRecord's checks of what is not a checked token already, in its order.
    check_token("request_id", ctx.request_id, remember=False)
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise ValueError("audit field status: must be an HTTP status code")
    check_number("latency_ms", latency, optional=False)
    check_number("cost_usd", cost)
    streamed = ctx.stream
    if not isinstance(streamed, bool):
        raise ValueError("audit field streamed: must be a boolean")
    if tags:
        check_tags(tags)
    head, middle, tail = fragments
    return EncodedBody(
        f'{head}{json_num(cost)},"decisions":[{",".join(decisions)}],'
        f'"endpoint":"{ENDPOINTS.get(ctx.route, "other")}","latency_ms":{json_num(latency)},'
        f'"model":{json_str(model)}{middle}{json_str(outcome)}{tail}{ctx.request_id}",'
        f'"status":{json_num(code)},"streamed":{"true" if streamed else "false"},'
        f'"tags":{tags_json(tags)},"target":{json_str(target)},"time":"{time}",'
        f'"usage":{usage}}}'.encode("ascii")
    )


def _decision(kind: str, action: str, reason: str) -> PolicyDecision:
    """``PolicyDecision(kind, action, reason)``, checked once: the same few decisions come
    with every request, and a frozen one can be shared by every record that holds it."""
    return _remembered(kind, action, reason)[0]


def _decision_json(kind: str, action: str, reason: str) -> str:
    """``_decision(kind, action, reason).encode()``, encoded once."""
    return _remembered(kind, action, reason)[1]


def _remembered(kind: str, action: str, reason: str) -> tuple[PolicyDecision, str]:
    key = (kind, action, reason)
    found = _DECISIONS.get(key)
    if found is None:
        decision = PolicyDecision(kind, action, reason)  # raises before anything is remembered
        found = (decision, decision.encode())
        if len(_DECISIONS) >= _MAX_REMEMBERED:
            _DECISIONS.clear()
        _DECISIONS[key] = found
    return found


def _identity(
    config_hash: str, namespace: str | None, pack: str, pack_version: str, pod: str | None
) -> tuple[str, str, str]:
    """The JSON before ``cost_usd``'s value, between ``model``'s and ``outcome``'s, and between
    ``outcome``'s and the request id's; tokens by construction, so nothing to check."""
    fragments = (
        f'{{"config_hash":{json_str(token(config_hash))},"cost_usd":',
        f',"namespace":{json_str(token(namespace))},"outcome":',
        f',"pack":{json_str(token(pack))},"pack_version":{json_str(token(pack_version))},'
        f'"pod":{json_str(token(pod))},"request_id":"',
    )
    if len(_IDENTITIES) >= _MAX_REMEMBERED:
        _IDENTITIES.clear()
    _IDENTITIES[(config_hash, namespace, pack, pack_version, pod)] = fragments
    return fragments


def token(value: str | None) -> str | None:
    """A trusted value (config, pod, target, outcome) as a token, or None if it is empty."""
    return as_token(value) or None if value else None


def as_token(text: str) -> str:
    """`text` with every character a token may not hold replaced, cut to 128 characters;
    remembered, since the same pod, pack, target and reasons come with every request."""
    found = _TOKENS.get(text)
    if found is None:
        if len(_TOKENS) >= _MAX_REMEMBERED:
            _TOKENS.clear()
        found = _TOKENS[text] = _NOT_TOKEN.sub("_", text)[:128]
    return found
