"""`Expect: 100-continue`, as curl sends it before a body over 1 KB: the gateway answers
`100 Continue`, then reads the body and handles the request as any other. The API server calls
`dispatch` directly (`Gateway.direct`); a request with an Expect header goes through the app's
own handler, whose expect handling this holds (without it the client would wait for the
interim answer, and an unknown expectation would not get its 417)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from packgate_sidecar.app import Handler
from packgate_sidecar.run import start_site

from tests.support.gateway import RunningGateway, make_config, running_gateway
from tests.support.upstream import FakeUpstream

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()


async def _exchange(gateway: RunningGateway, expect: str) -> tuple[bytes, bytes]:
    """Send the headers with `Expect: <expect>`; return the head of what came back before the
    body was sent (within 2 s) and, after a 100, everything after the body."""
    host, port = gateway.base_url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(BODY)}\r\nExpect: {expect}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    except (TimeoutError, asyncio.IncompleteReadError):
        interim = b""
    rest = b""
    if interim.startswith(b"HTTP/1.1 100"):
        writer.write(BODY)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return interim, rest


async def test_expect_100_continue_gets_the_interim_answer_then_the_completion() -> None:
    async with FakeUpstream() as upstream, running_gateway(make_config(upstream.base_url)) as gw:
        interim, rest = await _exchange(gw, "100-continue")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        head, _, body = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"x-packgate-request-id" in head.lower()
        assert json.loads(body)["object"] == "chat.completion"
        assert upstream.received[-1].body["messages"][0]["content"] == "x" * 2000


async def test_an_unknown_expectation_gets_417_and_is_never_forwarded() -> None:
    async with FakeUpstream() as upstream, running_gateway(make_config(upstream.base_url)) as gw:
        interim, _ = await _exchange(gw, "something-else")
        assert interim.startswith(b"HTTP/1.1 417"), interim
        assert upstream.received == []


async def test_an_app_with_middlewares_is_not_served_around_them() -> None:
    """The direct handler skips aiohttp's middleware pass, so an app that has middlewares (or
    response-prepare signals) is refused rather than served without them."""

    @web.middleware
    async def tag(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    app = web.Application(middlewares=[tag])

    def direct(routed: Handler) -> Handler:
        return routed

    with pytest.raises(ValueError, match="middlewares"):
        await start_site(app, ("127.0.0.1", 0), 1.0, True, None, direct)
