"""Threat: the response policies check one reading of a provider's answer, the app reads another.

A whole answer that no policy rewrote is relayed as the provider's own bytes. With the key
`content` twice, Python's json (and so the policies) keeps the last copy while another client
parser may keep the first: a compromised or buggy provider, or anything on its path, could put
the e-mail address pii-detector exists to hide in the copy the policies never see. Answers are
read as strictly as requests (strict_json.py): such an answer is refused with a 502 that names
the problem, the refusal is audited, and its bytes never reach the application. A streamed
answer's events are read the same way: the ambiguous event ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from packgate_sidecar.chain import builtin_registry

from tests.support.gateway import RunningGateway, make_config, running_gateway
from tests.support.policies import RecordingPolicy, registry_with
from tests.support.upstream import Behavior, FakeUpstream

SECRET = "jane.doe@example.com"


def _answer(message: bytes) -> bytes:
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":'
        b'[{"index":0,"finish_reason":"stop","message":' + message + b'}],"usage":'
        b'{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    )


@pytest.fixture
async def setup() -> AsyncIterator[tuple[RunningGateway, FakeUpstream, list[RecordingPolicy]]]:
    audited: list[RecordingPolicy] = []

    def recorder(settings: Any, runtime: Any) -> RecordingPolicy:
        audited.append(RecordingPolicy(settings, runtime))
        return audited[-1]

    registry = registry_with(
        pii_detector=builtin_registry().get("pii-detector"), audit_logger=recorder
    )
    async with FakeUpstream() as upstream:
        config = make_config(
            upstream.base_url,
            chain=["pii-detector", "audit-logger"],
            policy={"pii-detector": {"action": "redact", "scan_responses": True}},
        )
        async with running_gateway(config, registry) as gateway:
            yield gateway, upstream, audited


async def _finished(audited: list[RecordingPolicy]) -> Any:
    for _ in range(200):
        if audited and audited[0].finished:
            return audited[0].finished[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("the request was never handed to audit-logger")


@pytest.mark.parametrize(
    ("message", "named"),
    [
        (
            b'{"role":"assistant","content":"write to ' + SECRET.encode() + b'",'
            b'"content":"no personal data here"}',
            "'content'",
        ),
        (b'{"role":"assistant","content":"hi","role":"assistant"}', "'role'"),
        (b'{"role":"assistant","content":"NaN","refusal":NaN}', "NaN"),
    ],
)
async def test_an_ambiguous_answer_is_refused_with_a_502_and_audited(
    setup: tuple[RunningGateway, FakeUpstream, list[RecordingPolicy]],
    message: bytes,
    named: str,
) -> None:
    gateway, upstream, audited = setup
    upstream.then(Behavior(raw=_answer(message)))
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 502
    error = json.loads(caught.value.response.text)["error"]
    assert error["code"] == "bad_upstream_response"
    assert "provider's response" in error["message"] and named in error["message"]
    assert SECRET not in caught.value.response.text
    ctx = await _finished(audited)
    assert (ctx.status, ctx.error_code) == (502, "bad_upstream_response")


async def test_an_unambiguous_answer_is_still_relayed_and_checked(
    setup: tuple[RunningGateway, FakeUpstream, list[RecordingPolicy]],
) -> None:
    gateway, upstream, _ = setup
    upstream.then(Behavior(raw=_answer(b'{"role":"assistant","content":"hello there"}')))
    completion = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "hello there"
    upstream.then(
        Behavior(raw=_answer(b'{"role":"assistant","content":"mail ' + SECRET.encode() + b'"}'))
    )
    completion = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "mail <EMAIL>"


def _event(delta: bytes) -> bytes:
    return (
        b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
        b'"choices":[{"index":0,"finish_reason":null,"delta":' + delta + b"}]}\n\n"
    )


async def test_an_ambiguous_stream_event_ends_the_stream_with_an_error(
    setup: tuple[RunningGateway, FakeUpstream, list[RecordingPolicy]],
) -> None:
    gateway, upstream, audited = setup
    hidden = b'{"content":"write to ' + SECRET.encode() + b'","content":" no data here"}'
    events = [_event(b'{"role":"assistant","content":"Hello,"}'), _event(hidden)]
    upstream.then(Behavior(sse=[*events, b"data: [DONE]\n\n"]))
    received, error = await gateway.stream_until_error()
    assert received == "Hello,"
    assert "'content' more than once" in error.message
    assert SECRET not in error.message
    ctx = await _finished(audited)
    assert ctx.error_code == "bad_upstream_response"


async def test_a_duplicate_index_cannot_move_a_streamed_text_to_another_choice(
    setup: tuple[RunningGateway, FakeUpstream, list[RecordingPolicy]],
) -> None:
    """Choice 1 streams an e-mail address in two pieces; the first piece's event also says
    index 0 first. Read first-wins (as the relay's fast path did) the pieces are on two choices
    and neither holds an address; the SDK reads last-wins and puts both on choice 1. (Here the
    PII filter's hold-back reorders the pieces so the address is not rebuilt; the relay must
    still not read an event differently from the application, so the event is refused.)"""
    gateway, upstream, _ = setup
    user, domain = SECRET.split("@")

    def event(choice: str) -> bytes:
        return _event(b"").replace(b'{"index":0,"finish_reason":null,"delta":}', choice.encode())

    events = [
        event('{"index":1,"delta":{"role":"assistant","content":"Write to "}}'),
        event('{"index":0,"delta":{"content":"' + user + '@"},"index":1}'),
        event('{"index":1,"delta":{"content":"' + domain + ' today."}}'),
    ]
    upstream.then(Behavior(sse=[*events, b"data: [DONE]\n\n"]))
    stream = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, n=2
    )
    received: dict[int, str] = {}
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            for choice in chunk.choices:
                received[choice.index] = received.get(choice.index, "") + (
                    choice.delta.content or ""
                )
    assert not any(SECRET in text for text in received.values()), received
    assert "'index' more than once" in caught.value.message
