"""Threat: a provider key reaches the application through a streamed answer.

Each relayed chunk used to be scrubbed on its own, so a key the upstream's chunking cut in two
went out as two harmless-looking halves; and when a response policy blocked a stream, the events
released before the block went out unscrubbed. The stream is now scrubbed as one text
(`scrub.StreamScrubber`), on every path that writes to the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.gateway import UPSTREAM_KEY, RunningGateway, make_config, running_gateway
from tests.support.policies import BlockWordPolicy, registry_with
from tests.support.upstream import Behavior, FakeUpstream


def _event(content: str) -> bytes:
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@pytest.fixture
async def bare() -> AsyncIterator[tuple[RunningGateway, FakeUpstream]]:
    """No policies: the stream is relayed byte for byte, as the upstream chunked it."""
    async with (
        FakeUpstream() as upstream,
        running_gateway(make_config(upstream.base_url)) as gateway,
    ):
        yield gateway, upstream


@pytest.fixture
async def filtered() -> AsyncIterator[tuple[RunningGateway, FakeUpstream]]:
    registry = registry_with(content_filter=lambda s, r: BlockWordPolicy(s, r))
    async with FakeUpstream() as upstream:
        config = make_config(upstream.base_url, chain=["content-filter"])
        async with running_gateway(config, registry) as gateway:
            yield gateway, upstream


@pytest.mark.parametrize("split", [1, 7, len(UPSTREAM_KEY) // 2, len(UPSTREAM_KEY) - 1])
async def test_a_key_split_across_upstream_chunks_is_still_scrubbed(
    bare: tuple[RunningGateway, FakeUpstream], split: int
) -> None:
    gateway, upstream = bare
    event = _event(f"my key is {UPSTREAM_KEY}, keep it")
    cut = event.index(UPSTREAM_KEY.encode()) + split
    upstream.then(Behavior(sse=[event[:cut], event[cut:], b"data: [DONE]\n\n"], chunk_delay=0.05))
    stream = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert received == "my key is [REDACTED], keep it"


async def test_a_stream_cut_off_inside_a_key_does_not_hand_out_its_start(
    bare: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = bare
    event = _event(f"my key is {UPSTREAM_KEY}")
    head = event[: event.index(UPSTREAM_KEY.encode()) + len(UPSTREAM_KEY) - 2]
    upstream.then(Behavior(sse=[head, b"never sent"], chunk_delay=0.05, reset_after=1))
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.base_url}/chat/completions", json=request) as response,
    ):
        body = await response.read()
    assert UPSTREAM_KEY[:8].encode() not in body
    assert b"my key is [REDACTED]" in body


async def test_events_released_before_a_block_are_scrubbed_too(
    filtered: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = filtered
    # The first event goes out alone; the next chunk's events are released until the block.
    events = _event(f"my key is {UPSTREAM_KEY}. ") + _event("now something forbidden")
    upstream.then(Behavior(sse=[_event("Hello. "), events, b"data: [DONE]\n\n"], chunk_delay=0.05))
    received, error = await gateway.stream_until_error()
    assert received == "Hello. my key is [REDACTED]. "
    assert "blocked" in error.message.lower()
