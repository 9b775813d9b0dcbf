"""No request shape lets text past the chain (issue 5's fuzz test, with a stand-in policy).

Hypothesis generates requests for every governed endpoint with a PII-like marker embedded in
every position that can hold text: chat messages of every role with string and content-part
content (image parts beside them), tool-call arguments, tool results, refusals, tool
descriptions, /v1/responses instructions and input as a string or as item lists, /v1/completions
prompts as a string or a list, embeddings input as a string or a list; streamed and not. A
policy that rewrites the marker stands in for PII redaction. Each request goes through the real
gateway to the local upstream, and the test proves the upstream received the request (so it was
not simply refused) and that the marker appears nowhere in the bytes it received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.policies import ReplacePolicy, registry_with
from tests.support.request_shapes import Live, live_gateway, post, request_shapes

MARKER = "jane.doe@example.com"
REDACTED = "<EMAIL>"

# Noise around the marker: any text, including quotes, backslashes, newlines and non-ASCII.
noise = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
text = st.builds(lambda before, after: before + MARKER + after, noise, noise)
requests = request_shapes(text)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """A gateway with the stand-in redaction policy (it rewrites the marker) and an upstream."""

    def registry() -> Any:
        return registry_with(
            pii_detector=lambda s, r: ReplacePolicy(s, r, marker=MARKER, replacement=REDACTED)
        )

    with live_gateway(registry, ["pii-detector"]) as running:
        yield running


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_no_marker_reaches_the_upstream(live: Live, case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    assert MARKER in json.dumps(body)  # the generated request does carry the marker
    before = len(live.upstream.received)
    answer = post(live.url + path, body)
    assert len(live.upstream.received) == before + 1, "the request was not forwarded"
    forwarded = live.upstream.received[-1]
    assert forwarded.path == path
    assert MARKER.encode() not in forwarded.raw
    assert REDACTED in json.dumps(forwarded.body, ensure_ascii=False)
    assert MARKER.encode() not in answer
