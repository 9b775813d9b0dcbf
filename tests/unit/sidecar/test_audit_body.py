"""audit-logger's direct encoder writes exactly the bytes of the typed record, and refuses what
it refuses: ``encode_record(ctx)`` against ``build_record(ctx).encode()``, the reference."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit.chain import canonical
from packgate_sidecar.audit.record import EncodedBody
from packgate_sidecar.policies.audit_body import build_record, encode_record
from packgate_sidecar.policies.cost_attribution import STATE_KEY, Attribution
from packgate_sidecar.policy import DecisionRecord, PodIdentity, RequestContext


def mostly(valid: st.SearchStrategy[object], odd: st.SearchStrategy[object]) -> st.SearchStrategy:
    """``valid`` about nine times in ten: a record refused for one field tests little else."""
    return st.sampled_from(range(10)).flatmap(lambda i: odd if i == 0 else valid)


TOKEN = st.text("AZaz09_.:/@+=,%-", min_size=1, max_size=12)
# Tokens or anything at all: the direct encoder may only take the tokens as they are.
TEXT = (
    TOKEN | st.sampled_from(["", "free text", "x" * 130, "naïve", '"quoted"', "a\nb"]) | st.text()
)
OPT_TEXT = st.none() | TEXT
NUMBER = mostly(
    st.integers(0, 10**12) | st.floats(0, 1e300) | st.sampled_from([0, 0.0, -0.0, 12.5]),
    st.floats() | st.sampled_from([-1, True, math.inf]),
)
DETAIL = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(-1, 1e6) | TEXT


def decisions(kinds: st.SearchStrategy[str], actions: st.SearchStrategy[str]) -> st.SearchStrategy:
    return st.builds(
        DecisionRecord,
        kind=kinds,
        phase=st.sampled_from(["request", "response", "stream", "finish"]),
        action=actions,
        reason=st.sampled_from(["", "pii:EMAIL", "injection", "content:hate;x y"]) | TEXT,
        details=st.dictionaries(TOKEN | TEXT, DETAIL, max_size=4),
        failure=st.none() | st.sampled_from(["error", "timeout"]),
        fail_open=st.booleans(),
    )


DECISIONS = mostly(
    st.lists(
        decisions(
            st.sampled_from(["prompt-injection", "pii-detector", "audit-logger"]),
            st.sampled_from(["allow", "flag", "rewrite", "block"]),
        ),
        max_size=4,
    ),
    st.lists(decisions(TEXT, TEXT), max_size=3)
    | st.lists(decisions(TOKEN, TOKEN), min_size=30, max_size=40),
)
attributions = st.builds(
    Attribution,
    model=OPT_TEXT,
    input_tokens=st.integers(-2, 10**7),
    output_tokens=st.integers(-2, 10**7),
    estimated=mostly(st.booleans(), st.just(1)),
    measured=st.booleans(),
    cost_usd=st.none() | NUMBER,
    tags=mostly(
        st.dictionaries(TOKEN, TOKEN, max_size=3),
        st.dictionaries(TEXT, TEXT, max_size=3)
        | st.dictionaries(TOKEN, TOKEN, min_size=30, max_size=40),
    ),
)


@st.composite
def contexts(draw: st.DrawFn) -> RequestContext:
    ctx = RequestContext(
        draw(mostly(st.sampled_from(["0123abcd", "b5e25683426c5d1d821dd6aeb723562d"]), TEXT)),
        draw(st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/x"])),
        pack=draw(st.sampled_from(["chatgpt-enterprise-gateway"]) | TEXT),
        pack_version=draw(st.sampled_from(["1.0.0"]) | TEXT),
        config_hash=draw(st.sampled_from(["", "sha256:f9f83de5"]) | TEXT),
        pod=PodIdentity(draw(OPT_TEXT), draw(OPT_TEXT)),
        model=draw(OPT_TEXT),
        stream=draw(mostly(st.booleans(), st.sampled_from([0, 1, None]))),
        started_at=draw(st.floats(0, 4102444800) | st.integers(0, 2**32)),
    )
    ctx.target, ctx.upstream_model = draw(OPT_TEXT), draw(OPT_TEXT)
    ctx.status = draw(
        mostly(
            st.none() | st.integers(0, 1000) | st.sampled_from([99, 100, 599, 600]),
            st.sampled_from([200.0, True]),
        )
    )
    ctx.latency_ms = draw(st.none() | NUMBER)
    ctx.outcome = draw(st.sampled_from(["ok", "blocked", "upstream_error"]) | TEXT)
    ctx.decisions.extend(draw(DECISIONS))
    ctx.attempts.extend(draw(st.lists(st.tuples(TOKEN, st.sampled_from(["200", "429"])))))
    ctx.usage = draw(
        st.none()
        | st.fixed_dictionaries(
            {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(-1, 99)}
        )
        | st.fixed_dictionaries({"input_tokens": st.integers(0, 9), "output_tokens": NUMBER})
    )
    ctx.input_chars, ctx.output_chars = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
    attribution = draw(st.none() | attributions | st.just("not an attribution"))
    if attribution is not None:
        ctx.state[STATE_KEY] = attribution
    return ctx


def outcome(fn: object, ctx: RequestContext, started: bool) -> bytes | tuple[type, str]:
    try:
        return fn(ctx, started)  # type: ignore[operator,no-any-return]
    except Exception as exc:
        return type(exc), str(exc)


@settings(max_examples=300, deadline=None)
@given(contexts(), st.booleans())
def test_the_direct_encoding_is_the_typed_records_byte_for_byte(
    ctx: RequestContext, started: bool
) -> None:
    reference = outcome(lambda c, s: build_record(c, s).encode(), ctx, started)
    for _ in range(2):  # the second time from what the first one remembered
        fast = outcome(encode_record, ctx, started)
        assert fast == reference
    if isinstance(fast, bytes):
        assert type(fast) is EncodedBody
        assert fast == canonical(json.loads(fast))  # canonical JSON, as the chain seals it


def test_a_request_id_that_is_not_a_token_is_refused_and_named() -> None:
    ctx = RequestContext("a prompt pasted here", "/v1/chat/completions", stream=True)
    with pytest.raises(ValueError, match="audit field request_id"):
        encode_record(ctx)
    ctx.request_id, ctx.latency_ms = "r1", math.nan
    with pytest.raises(ValueError, match="audit field latency_ms"):
        encode_record(ctx, started=True)
