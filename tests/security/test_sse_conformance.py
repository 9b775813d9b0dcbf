"""Threat: an upstream stream that is valid SSE but not the exact layout the sidecar expects
(keep-alive comments, empty `data:` lines, `id:`/`retry:` fields, CR or CRLF line ends) is
treated as broken, or its non-data lines reach the client unchecked. The SSE rules (WHATWG):
comments and unknown fields are ignored, a block without data dispatches nothing. The sidecar
relays comments as bare `:` keep-alives (their text dropped), drops events with empty data (the
OpenAI SDK would fail to decode them), and checks every data event as usual.

The SDK test shows the application gets the whole answer; the raw-socket test (aiohttp, no SSE
parser in between) shows exactly which bytes leave the sidecar.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.support.gateway import RunningGateway
from tests.support.upstream import Behavior, FakeUpstream


def chunk(content: str, finish: str | None = None, end: bytes = b"\n") -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    data = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(data).encode() + end + end


STREAM = [
    b": OPENROUTER PROCESSING jane.doe@example.com\n\n",
    chunk("Hello "),
    b"data:\n\n",  # an empty data line
    b"data: \r\n\r\n",  # and one with CRLF
    b"id: 42\nretry: 1000\n\n",  # fields without data
    b"event: ping\n\n",
    chunk("write to ", end=b"\r"),  # CR-only line ends
    b": keep-alive\n\n",
    chunk("jane.doe@example.com", end=b"\r\n"),
    chunk("", "stop"),
    b"data: [DONE]\n\n",
]


async def test_the_sdk_gets_the_whole_checked_answer(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    upstream.then(Behavior(sse=STREAM))
    stream = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello write to <EMAIL>"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_only_checked_events_and_bare_keep_alives_leave_the_sidecar(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    upstream.then(Behavior(sse=STREAM))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.base_url + "/chat/completions", json=body) as answer,
    ):
        assert answer.status == 200
        raw = await answer.read()
    assert b"jane" not in raw and b"OPENROUTER" not in raw and b"id:" not in raw
    assert b"\r" not in raw
    blocks = [b for b in raw.split(b"\n\n") if b]
    data: list[Any] = []
    for block in blocks:
        if block == b":":
            continue  # a keep-alive, without the upstream's comment text
        assert block.startswith(b"data: ") and b"\n" not in block, block
        payload = block[len(b"data: ") :]
        data.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
    assert blocks.count(b":") == 2
    assert data[-1] == "[DONE]"
    assert all(event["choices"] for event in data[:-1])  # no empty event was passed on
