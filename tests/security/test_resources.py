"""Threat: a client (or a provider) exhausts the sidecar's connections or memory.

Idle sockets and slowloris clients used to stay open indefinitely, a trickled body held its
handler forever, and a 50 MB provider answer was buffered whole. Each limit here is set low so
the test is quick; docs/security.md lists the defaults and the flags. Raw sockets, because the
SDK cannot misbehave like this.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from aiohttp import web
from packgate_sidecar.app import GatewayOptions

from tests.support.gateway import RunningGateway, make_config, running_gateway
from tests.support.upstream import Behavior, FakeUpstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPTIONS = GatewayOptions(
    read_timeout=10,
    header_timeout=0.4,
    idle_timeout=0.6,
    body_timeout=0.5,
    max_connections=20,
    max_response_bytes=256 * 1024,
)
REQUEST = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[RunningGateway, FakeUpstream]]:
    async with (
        FakeUpstream() as upstream,
        running_gateway(make_config(upstream.base_url), options=OPTIONS) as running,
    ):
        yield running, upstream


def _address(gateway: RunningGateway) -> tuple[str, int]:
    host, port = gateway.base_url.removeprefix("http://").split("/")[0].split(":")
    return host, int(port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it stays open). A
    reset counts as closed: the kernel answers a client still sending to a closed socket so
    (ECONNRESET, or EPIPE when a write is the first to see it)."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def test_idle_connections_are_closed(gateway: tuple[RunningGateway, FakeUpstream]) -> None:
    running, _ = gateway
    conns = [await asyncio.open_connection(*_address(running)) for _ in range(15)]
    for reader, _writer in conns:
        assert await _closed_within(reader, 3.0) == b""
    assert running.gateway.guard.open == set()


async def test_slowloris_headers_are_cut_off(gateway: tuple[RunningGateway, FakeUpstream]) -> None:
    """A client sending a header byte every 50 ms is cut off once the header timeout has passed,
    without an answer: an EOF, or a reset when a dribbled byte meets the closed socket. The
    bound is generous because the sidecar shares this test's event loop on a loaded machine;
    without the guard the connection stays open for as long as the client dribbles."""
    running, upstream = gateway
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection(*_address(running))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def dribble() -> None:
        while not writer.is_closing():
            writer.write(b"X")
            await asyncio.sleep(0.05)

    trickle = asyncio.create_task(dribble())
    try:
        assert await _closed_within(reader, 10.0) == b""
    finally:
        trickle.cancel()
        writer.close()
    assert loop.time() - started >= OPTIONS.header_timeout
    assert running.gateway.guard.timed_out["header"] >= 1
    assert upstream.received == []


async def test_a_busy_keep_alive_connection_is_not_idle(
    gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    """The negative control: requests back to back on one connection for longer than the idle
    timeout all succeed on that one connection."""
    running, _ = gateway
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while loop.time() < deadline:
            async with session.post(running.base_url + "/chat/completions", data=REQUEST) as r:
                assert r.status == 200
            await asyncio.sleep(0.1)
    assert running.gateway.guard.timed_out["idle"] == 0


async def test_connections_over_the_cap_get_a_503(
    gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    running, _ = gateway
    held = [await asyncio.open_connection(*_address(running)) for _ in range(20)]
    await asyncio.sleep(0.05)
    reader, _writer = await asyncio.open_connection(*_address(running))
    answer = await _closed_within(reader, 2.0)
    assert answer.startswith(b"HTTP/1.1 503")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
    assert running.gateway.guard.refused == 1
    for _reader, writer in held:
        writer.close()


async def test_a_trickled_body_times_out_with_408(
    gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    running, upstream = gateway
    reader, writer = await asyncio.open_connection(*_address(running))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(REQUEST)).encode() + b"\r\n\r\n" + REQUEST[:10]
    )
    answer = await _closed_within(reader, 3.0)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer
    assert upstream.received == []


async def test_an_oversized_provider_answer_is_refused_not_buffered(
    gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    running, upstream = gateway
    upstream.then(Behavior(text="x" * (1024 * 1024)))
    with pytest.raises(openai.APIStatusError) as caught:
        await running.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 502
    assert "upstream_response_too_large" in caught.value.response.text


@contextlib.asynccontextmanager
async def _gateway_before(handler: Handler) -> AsyncIterator[RunningGateway]:
    """A gateway (with the tight limits) before a provider whose chat completions `handler`
    answers, on loopback."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        config = make_config(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
        async with running_gateway(config, options=OPTIONS) as running:
            yield running
    finally:
        await runner.cleanup()


async def test_a_chunked_answer_is_cut_off_at_the_limit_while_reading() -> None:
    """No Content-Length to refuse up front: the sidecar counts while reading, and stops reading
    (the provider cannot push the rest) as soon as the limit is passed."""
    sent = {"bytes": 0, "finished": False}

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * 65536
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            for _ in range(320):  # 20 MiB of whitespace, then a JSON object
                await response.write(chunk)
                sent["bytes"] += len(chunk)
            await response.write(b"{}")
            sent["finished"] = True
        return response

    async with _gateway_before(endless) as running:
        with pytest.raises(openai.APIStatusError) as caught:
            await running.client().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 502
        assert "upstream_response_too_large" in caught.value.response.text
        await asyncio.sleep(0.2)
    assert not sent["finished"]
    assert sent["bytes"] < 20 * 1024 * 1024


async def test_a_compressed_answer_is_limited_by_its_decompressed_size() -> None:
    """A gzip answer's Content-Length is its compressed size: 1 KiB on the wire can inflate to
    megabytes, so it is counted as it decompresses, never read in one go on its header."""
    inflated = b" " * (4 * 1024 * 1024) + b"{}"

    async def bomb(request: web.Request) -> web.Response:
        await request.read()
        body = gzip.compress(inflated)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return web.Response(body=body, headers=headers)

    async with _gateway_before(bomb) as running:
        with pytest.raises(openai.APIStatusError) as caught:
            await running.client().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 502
    assert "upstream_response_too_large" in caught.value.response.text
