"""Which provider response headers reach the client: the per-name memo of forward.py against
the rule it remembers (request ids, `openai-*`, rate limits, retry hints, by lower-cased prefix)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from packgate_sidecar import forward
from packgate_sidecar.errors import REQUEST_ID_HEADER

_KNOWN = [
    "x-request-id",
    "X-Request-ID",
    "openai-processing-ms",
    "OpenAI-Version",
    "x-ratelimit-remaining-tokens",
    "X-RateLimit-Reset-Requests",
    "retry-after",
    "Retry-After-Ms",
    "Content-Type",
    "Set-Cookie",
    "Server",
    "x-requestid",
    "openai",
    "x-ratelimit",
]
_names = st.one_of(
    st.sampled_from(_KNOWN),
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzRXO-"), min_size=1, max_size=24),
)


def _reference(headers: list[tuple[str, str]], request_id: str) -> dict[str, str]:
    passed = {REQUEST_ID_HEADER: request_id}
    for name, value in headers:
        if name.lower().startswith(forward._PASS_PREFIXES):
            passed[name] = value
    return passed


@given(st.lists(st.tuples(_names, st.text(max_size=8)), max_size=12), st.data())
def test_the_passed_headers_follow_the_prefix_rule_whatever_the_memo_holds(
    headers: list[tuple[str, str]], data: Any
) -> None:
    # Some names already decided (and remembered) by earlier answers, some new.
    for name in data.draw(st.lists(_names, max_size=4)):
        forward._passes(name)
    answer: Any = SimpleNamespace(headers=CIMultiDictProxy(CIMultiDict(headers)))
    assert forward._passed_headers(answer, "req-1") == _reference(headers, "req-1")
    assert forward._passed_headers(answer, "req-2") == _reference(headers, "req-2")
