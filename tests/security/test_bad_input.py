"""Threat: malformed input crashes the handler, and the crash hides what happened.

A 1000-deep JSON, a lone surrogate or a body that does not match its Content-Encoding used to
end in a plain-text 500 audited as 499. Every one is now a 4xx with an OpenAI-shaped body, and
the audit hooks see the status the client really got. Sent over raw HTTP (the SDK cannot send
these bodies).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest
from packgate_sidecar.app import GatewayOptions

from tests.support.gateway import make_config, running_gateway
from tests.support.policies import RecordingPolicy, registry_with
from tests.support.upstream import FakeUpstream

CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize(
    ("raw", "headers", "code"),
    [
        (b'{"model":"m","messages":' + b"[" * 1000 + b"]" * 1000 + b"}", {}, "json_too_deep"),
        (b'{"model":"m","messages":[{"role":"user","content":"\\udc00"}]}', {}, "lone_surrogate"),
        (CHAT, {"Content-Encoding": "gzip"}, "bad_content_encoding"),
        (CHAT, {"Content-Encoding": "deflate"}, "bad_content_encoding"),
        (gzip.compress(CHAT)[:25], {"Content-Encoding": "gzip"}, None),
        (b"\xff\xfe{}", {}, "invalid_encoding"),
        (b'{"model":"m",', {}, "invalid_json"),
    ],
    ids=[
        "deep",
        "surrogate",
        "gzip-mismatch",
        "deflate-mismatch",
        "gzip-truncated",
        "utf16",
        "eof",
    ],
)
async def test_bad_input_is_a_4xx_openai_error_audited_with_its_status(
    raw: bytes, headers: dict[str, str], code: str | None
) -> None:
    finished: list[RecordingPolicy] = []

    def recorder(settings: Any, runtime: Any) -> RecordingPolicy:
        finished.append(RecordingPolicy(settings, runtime))
        return finished[-1]

    async with FakeUpstream() as upstream:
        config = make_config(upstream.base_url, chain=["audit-logger"])
        async with (
            running_gateway(config, registry_with(audit_logger=recorder)) as gateway,
            aiohttp.ClientSession(auto_decompress=False) as session,
        ):
            async with session.post(
                gateway.base_url + "/chat/completions",
                data=raw,
                headers={"Content-Type": "application/json", **headers},
            ) as answer:
                assert 400 <= answer.status < 500, await answer.text()
                assert answer.content_type == "application/json"
                error = (await answer.json())["error"]
                assert answer.headers["x-packgate-request-id"]
            if code is not None:
                assert error["code"] == code
            assert error["message"]
            for _ in range(100):
                if finished and finished[0].finished:
                    break
                await asyncio.sleep(0.01)
            assert [ctx.status for ctx in finished[0].finished] == [answer.status]
        assert upstream.received == []


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["request-line", "huge-header", "bad-chunk"],
)
async def test_unparseable_http_gets_an_openai_shaped_400(raw: bytes) -> None:
    """Errors aiohttp answers itself, before any handler, are OpenAI-shaped too."""
    async with FakeUpstream() as upstream, running_gateway(make_config(upstream.base_url)) as gw:
        host, port = gw.base_url.removeprefix("http://").split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1].startswith(b"4"), head  # HTTP/1.0 when the line is garbage
        assert b"application/json" in head
        assert json.loads(body)["error"]["code"] == "bad_http_request"
        assert upstream.received == []


@pytest.mark.parametrize("arrival", ["whole", "trickled"])
async def test_a_compressed_body_is_read_decompressed_and_limited_by_its_inflated_size(
    arrival: str,
) -> None:
    """A gzip body is forwarded as the JSON it inflates to; one that inflates past
    --max-body-bytes is refused with 413 whatever its compressed size, whether it arrived with
    its headers or in pieces (the two ways the gateway reads a body)."""
    small = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
    bomb = b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * 50_000 + b'"}]}'

    async def body(raw: bytes) -> Any:
        packed = gzip.compress(raw)
        if arrival == "whole":
            return packed

        async def pieces() -> Any:  # chunked, with pauses: not all there with the headers
            for at in range(0, len(packed), 40):
                yield packed[at : at + 40]
                await asyncio.sleep(0.001)

        return pieces()

    async with FakeUpstream() as upstream:
        options = GatewayOptions(max_body_bytes=10_000, read_timeout=10)
        async with (
            running_gateway(make_config(upstream.base_url), options=options) as gateway,
            aiohttp.ClientSession() as session,
        ):
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            url = gateway.base_url + "/chat/completions"
            async with session.post(url, data=await body(small), headers=headers) as answer:
                assert answer.status == 200, await answer.text()
            assert upstream.received[-1].body["messages"] == [
                {"role": "user", "content": "hello there"}
            ]
            async with session.post(url, data=await body(bomb), headers=headers) as answer:
                assert answer.status == 413
                assert (await answer.json())["error"]["code"] == "request_too_large"
        assert len(upstream.received) == 1
