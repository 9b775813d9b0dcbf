"""Failure paths a user of the gateway can hit: fallback, timeouts, bad requests, policy blocks,
broken streams and disconnects. Every error is OpenAI-shaped and carries a request id."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from packgate_sidecar.app import GatewayOptions

from tests.support.gateway import RunningGateway, make_config, running_gateway
from tests.support.policies import BlockWordPolicy, RecordingPolicy, ReplacePolicy, registry_with
from tests.support.upstream import Behavior, FakeUpstream

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream() as first, FakeUpstream() as second:
        yield first, second


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    return body


async def _eventually(predicate: Any, seconds: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


# --- fallback -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_falls_back_to_the_next_target(
    upstreams: tuple[FakeUpstream, FakeUpstream], status: int
) -> None:
    first, second = upstreams
    first.then(Behavior(status=status))
    async with running_gateway(make_config(first.base_url, second.base_url)) as gateway:
        completion = await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert completion.choices[0].message.content == "echo: hello"
        assert (len(first.received), len(second.received)) == (1, 1)
        reason = "status_429" if status == 429 else "status_5xx"
        assert gateway.metric("packgate_upstream_failures_total", target="t0", reason=reason) == 1
        assert (
            gateway.metric(
                "packgate_requests_total", route="/v1/chat/completions", status="200", target="t1"
            )
            == 1
        )


async def test_falls_back_when_the_primary_refuses_connections(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    _, second = upstreams
    async with running_gateway(make_config(closed_port_url(), second.base_url)) as gateway:
        stream = await gateway.client().chat.completions.create(
            model="m", messages=CHAT, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: hello"
        assert (
            gateway.metric("packgate_upstream_failures_total", target="t0", reason="connect") == 1
        )


async def test_a_streamed_request_falls_back_before_the_first_byte(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, second = upstreams
    first.then(Behavior(status=500))
    async with running_gateway(make_config(first.base_url, second.base_url)) as gateway:
        stream = await gateway.client().responses.create(model="m", input="hi", stream=True)
        events = [event.type async for event in stream]
        assert events[-1] == "response.completed"
        assert len(second.received) == 1


async def test_other_client_errors_pass_through_without_fallback(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, second = upstreams
    first.then(Behavior(status=400))
    async with running_gateway(make_config(first.base_url, second.base_url)) as gateway:
        with pytest.raises(openai.BadRequestError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert error_of(raised.value)["message"] == "The fake upstream refused the request"
        assert raised.value.response.headers["x-packgate-request-id"]
        assert second.received == []


async def test_when_every_target_fails_the_last_answer_is_passed_on(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, _ = upstreams
    first.then(Behavior(status=429, headers={"retry-after": "7"}))
    async with running_gateway(make_config(first.base_url)) as gateway:
        with pytest.raises(openai.RateLimitError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert raised.value.response.headers["retry-after"] == "7"
        assert error_of(raised.value)["code"] == "rate_limit_exceeded"


async def test_unreachable_targets_give_502() -> None:
    async with running_gateway(make_config(closed_port_url(), closed_port_url())) as gateway:
        with pytest.raises(openai.InternalServerError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert raised.value.status_code == 502
        error = error_of(raised.value)
        assert error["code"] == "upstream_unreachable"
        assert error["message"].startswith("All 2 provider targets failed")
        assert raised.value.response.headers["x-packgate-request-id"]


async def test_a_slow_target_times_out_with_504_or_falls_back(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, second = upstreams
    first.default = Behavior(delay=2.0)
    options = GatewayOptions(read_timeout=0.3)
    async with running_gateway(make_config(first.base_url), options=options) as gateway:
        with pytest.raises(openai.APIStatusError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert raised.value.status_code == 504
        assert error_of(raised.value)["code"] == "upstream_timeout"
    config = make_config(first.base_url, second.base_url)
    async with running_gateway(config, options=options) as gateway:
        completion = await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert completion.choices[0].message.content == "echo: hello"


# --- broken streams and disconnects ---------------------------------------------------------


async def test_an_upstream_breaking_mid_stream_ends_with_an_error_event(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, second = upstreams
    first.then(Behavior(text="a b c d e f", reset_after=3))
    async with running_gateway(make_config(first.base_url, second.base_url)) as gateway:
        stream = await gateway.client().chat.completions.create(
            model="m", messages=CHAT, stream=True
        )
        received = []
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)
        assert received  # the start of the answer got through
        assert raised.value.body["code"] == "upstream_stream_broken"  # type: ignore[index]
        assert second.received == []  # never retried once the client had bytes
        assert (
            gateway.metric(
                "packgate_stream_aborts_total",
                route="/v1/chat/completions",
                reason="upstream_error",
            )
            == 1
        )


async def test_an_upstream_going_silent_mid_stream_times_out_with_an_error_event(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, _ = upstreams
    first.then(Behavior(text="a b c", chunk_delay=2.0))
    options = GatewayOptions(read_timeout=0.3)
    async with running_gateway(make_config(first.base_url), options=options) as gateway:
        stream = await gateway.client().responses.create(model="m", input="x", stream=True)
        with pytest.raises(openai.APIError) as raised:
            async for _event in stream:
                pass
        assert raised.value.body["code"] == "upstream_timeout"  # type: ignore[index]


async def test_a_client_disconnect_cancels_the_upstream_request(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    first, _ = upstreams
    first.then(Behavior(text="x " * 50, chunk_delay=0.1), Behavior(delay=5))
    async with running_gateway(make_config(first.base_url)) as gateway:
        stream = await gateway.client().chat.completions.create(
            model="m", messages=CHAT, stream=True
        )
        async for _chunk in stream:
            break
        await stream.close()
        await _eventually(lambda: first.disconnects == 1)

        with pytest.raises(openai.APITimeoutError):
            await gateway.client(timeout=0.3).chat.completions.create(model="m", messages=CHAT)
        await _eventually(lambda: first.disconnects == 2)
        assert first.completed == 0


# --- requests the gateway refuses itself ----------------------------------------------------


@pytest.fixture
async def gateway(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> AsyncIterator[RunningGateway]:
    options = GatewayOptions(max_body_bytes=4096)
    async with running_gateway(make_config(upstreams[0].base_url), options=options) as running:
        yield running


async def raw_post(
    gateway: RunningGateway, path: str, data: Any, method: str = "POST", **kwargs: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    url = gateway.base_url.removesuffix("/v1") + path
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, **kwargs) as response,
    ):
        return response.status, dict(response.headers), await response.json()


async def test_a_body_over_the_limit_gets_413(
    gateway: RunningGateway, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        await gateway.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert raised.value.status_code == 413
    assert error_of(raised.value)["code"] == "request_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(10):
            yield b" " * 1000

    status, _, body = await raw_post(gateway, "/v1/chat/completions", chunked())
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert upstreams[0].received == []


@pytest.mark.parametrize(
    ("data", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_request", None),
        (b'{"messages": []}', "invalid_request", "model"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "invalid_request", "stream"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "x"}]}]}',
            "invalid_request",
            "messages[0].content[0]",
        ),
    ],
)
async def test_malformed_requests_get_400(
    gateway: RunningGateway, data: bytes, code: str, param: str | None
) -> None:
    status, headers, body = await raw_post(gateway, "/v1/chat/completions", data)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert headers["x-packgate-request-id"]


async def test_unknown_paths_get_404_and_are_never_forwarded(
    gateway: RunningGateway, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await gateway.client().files.list()
    assert error_of(raised.value)["code"] == "unknown_url"
    for path in ("/v1/chat/completions/x", "/v1/audio/speech", "/v2/chat/completions", "/"):
        status, headers, body = await raw_post(gateway, path, b"{}")
        assert status == 404 and body["error"]["code"] == "unknown_url"
        assert headers["x-packgate-request-id"]
    assert upstreams[0].received == []


async def test_a_wrong_method_gets_405(gateway: RunningGateway) -> None:
    status, headers, body = await raw_post(gateway, "/v1/chat/completions", None, "GET")
    assert status == 405 and headers["Allow"] == "POST"
    assert body["error"]["code"] == "method_not_allowed"
    status, headers, body = await raw_post(gateway, "/v1/models", b"{}", "POST")
    assert status == 405 and headers["Allow"] == "GET"


async def test_a_disabled_pack_refuses_everything_with_503(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    async with running_gateway(make_config(upstreams[0].base_url, enabled=False)) as gateway:
        for call in (
            gateway.client().chat.completions.create(model="m", messages=CHAT),
            gateway.client().models.list(),
        ):
            with pytest.raises(openai.InternalServerError) as raised:
                await call
            assert raised.value.status_code == 503
            assert error_of(raised.value)["code"] == "pack_disabled"
            assert raised.value.response.headers["x-should-retry"] == "false"
    assert upstreams[0].received == []


async def test_without_a_valid_config_requests_get_503_not_ready() -> None:
    async with running_gateway(None) as gateway:
        with pytest.raises(openai.InternalServerError) as raised:
            await gateway.client().chat.completions.create(model="m", messages=CHAT)
        assert raised.value.status_code == 503
        assert error_of(raised.value)["code"] == "not_ready"
        async with aiohttp.ClientSession() as session:
            async with session.get(gateway.admin_url + "/readyz") as ready:
                assert ready.status == 503
            async with session.get(gateway.admin_url + "/healthz") as healthy:
                assert healthy.status == 200


# --- policy blocks and rewrites through the gateway ------------------------------------------


async def test_a_blocked_request_gets_403_and_never_leaves(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    config = make_config(upstreams[0].base_url, chain=["content-filter"])
    async with running_gateway(config, registry_with(content_filter=BlockWordPolicy)) as gateway:
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await gateway.client().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "a forbidden thing"}]
            )
        error = error_of(raised.value)
        assert error["type"] == "policy_violation"
        assert error["code"] == "input_blocked"
        assert error["policy"] == "content-filter"
        assert raised.value.response.headers["x-packgate-request-id"]
        assert upstreams[0].received == []


async def test_a_blocked_response_gets_403(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    upstreams[0].then(Behavior(text="something forbidden"))
    config = make_config(upstreams[0].base_url, chain=["content-filter"])
    async with running_gateway(config, registry_with(content_filter=BlockWordPolicy)) as gateway:
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await gateway.client().responses.create(model="m", input="hi")
        assert error_of(raised.value)["code"] == "output_blocked"


async def test_a_stream_blocked_mid_way_ends_with_an_error_event(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    upstreams[0].then(Behavior(chunks=["it is ", "all fine ", "until forb", "idden ", "stuff"]))
    config = make_config(upstreams[0].base_url, chain=["content-filter"])
    async with running_gateway(config, registry_with(content_filter=BlockWordPolicy)) as gateway:
        stream = await gateway.client().chat.completions.create(
            model="m", messages=CHAT, stream=True
        )
        seen = []
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        assert "".join(seen) == "it is all fine until forb"
        assert raised.value.body["code"] == "output_blocked"  # type: ignore[index]
        assert raised.value.body["policy"] == "content-filter"  # type: ignore[index]


async def test_redaction_holds_across_chunks_in_both_directions(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    upstream = upstreams[0]
    upstream.then(Behavior(chunks=["token: SE", "CR", "ET and ", "SECRET"]))
    config = make_config(upstream.base_url, chain=["pii-detector"])
    async with running_gateway(config, registry_with(pii_detector=ReplacePolicy)) as gateway:
        stream = await gateway.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "my SECRET"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "token: [gone] and [gone]"
        assert upstream.received[-1].body["messages"][0]["content"] == "my [gone]"

        upstream.then(Behavior(text="the SECRET is out"))
        response = await gateway.client().responses.create(model="m", input="x")
        assert response.output_text == "the [gone] is out"

        # Responses streams repeat the text in `.done` events and the final response.
        upstream.then(Behavior(text="the SECRET again", chunks=["the SEC", "RET again"]))
        async with gateway.client().responses.stream(model="m", input="x") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(deltas) == "the [gone] again"
        assert final.output_text == "the [gone] again"


async def test_finish_hooks_get_status_usage_and_decisions(
    upstreams: tuple[FakeUpstream, FakeUpstream],
) -> None:
    recorders: list[RecordingPolicy] = []

    def recording(settings: Any, runtime: Any) -> RecordingPolicy:
        recorders.append(RecordingPolicy(settings, runtime))
        return recorders[-1]

    config = make_config(upstreams[0].base_url, chain=["content-filter", "audit-logger"])
    registry = registry_with(content_filter=BlockWordPolicy, audit_logger=recording)
    async with running_gateway(config, registry) as gateway:
        client = gateway.client(default_headers={"x-packgate-tag-team": "blue"})
        await client.chat.completions.create(model="m", messages=CHAT)
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "forbidden"}]
            )
        await _eventually(lambda: len(recorders[0].finished) == 2)
    ok, blocked = recorders[0].finished
    assert (ok.status, ok.target, ok.outcome) == (200, "t0", "ok")
    assert ok.usage is not None and ok.usage["total_tokens"] > 0
    assert ok.latency_ms is not None and ok.latency_ms > 0
    assert ok.headers == {"x-packgate-tag-team": "blue"}
    assert (ok.pack, ok.pod.name, ok.pod.namespace) == ("test-pack", "pod-a", "ns-a")
    assert (blocked.status, blocked.outcome, blocked.error_code) == (
        403,
        "blocked",
        "input_blocked",
    )
    assert [(d.kind, d.action) for d in blocked.decisions] == [("content-filter", "block")]
    assert recorders[0].closed  # the gateway shut down and closed its policies
