"""With the real pii-detector (redact), no request shape carries raw PII to the provider.

The same generator as the chain's own fuzz test (`tests/support/request_shapes.py`: every
endpoint, every role, content parts, tool calls and results, responses items, prompt and input
lists, streamed and not), but with real personal data of each built-in entity embedded in the
text instead of a marker, and the shipped pii-detector instead of a stand-in. Each request must
be forwarded (not refused), and neither the bytes the upstream received nor the answer the client
got may contain any of the values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packgate_sidecar.chain import builtin_registry

from tests.support.request_shapes import Live, live_gateway, post, request_shapes

VALUES = {
    "EMAIL": "jane.doe@example.com",
    "PHONE": "+1 650-253-0000",
    "SSN": "078-05-1120",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "IP_ADDRESS": "192.168.10.23",
}
MARKER = re.compile(rb"<(?:%s)>" % "|".join(VALUES).encode())
# Words around the value: letters (some non-ASCII), punctuation, quotes, backslashes and
# newlines; no digits, so the noise cannot extend a number into a different one.
noise = st.text(
    st.characters(categories=("L", "P", "Zs"), exclude_characters="@+-0123456789") | st.just("\n"),
    max_size=12,
)
value = st.sampled_from(sorted(VALUES.values()))
text = st.builds(lambda before, pii, after: f"{before} {pii} {after}", noise, value, noise)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    # A generous budget: this test is about coverage, and the gateway shares its process (and
    # the GIL) with hypothesis on a machine that may be busy; a timeout would block the request.
    policy = {"pii-detector": {"action": "redact", "timeout_ms": 10000}}
    with live_gateway(builtin_registry, ["pii-detector"], policy) as running:
        yield running


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_shapes(text))
def test_no_raw_pii_reaches_the_upstream_or_the_client(
    live: Live, case: tuple[str, dict[str, Any]]
) -> None:
    path, body = case
    before = len(live.upstream.received)
    answer = post(live.url + path, body)
    assert len(live.upstream.received) == before + 1, "the request was not forwarded"
    forwarded = live.upstream.received[-1].raw
    for entity, raw in VALUES.items():
        assert raw.encode() not in forwarded, f"{entity} reached the upstream"
        assert raw.encode() not in answer, f"{entity} reached the client"
    assert MARKER.search(forwarded), "the values were replaced by markers, not dropped"
