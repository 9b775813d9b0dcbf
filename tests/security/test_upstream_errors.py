"""Threat: a provider's error answer carries what the policies exist to stop.

A 401 that echoes the Authorization header hands the provider key to the application; a 400
that quotes the prompt relays its PII back unredacted; a huge error body is buffered whole. Error
bodies now pass the response policies, every configured secret is scrubbed from every byte the
sidecar returns, and their size is capped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from packgate_sidecar.app import GatewayOptions

from tests.support.gateway import UPSTREAM_KEY, RunningGateway, make_config, running_gateway
from tests.support.policies import ReplacePolicy, registry_with
from tests.support.upstream import Behavior, FakeUpstream

MARKER = "jane.doe@example.com"


@pytest.fixture
async def setup() -> AsyncIterator[tuple[RunningGateway, FakeUpstream]]:
    registry = registry_with(
        pii_detector=lambda s, r: ReplacePolicy(s, r, marker=MARKER, replacement="<EMAIL>")
    )
    async with FakeUpstream() as upstream:
        config = make_config(upstream.base_url, chain=["pii-detector"])
        options = GatewayOptions(read_timeout=10, max_error_body_bytes=4096)
        async with running_gateway(config, registry, options) as gateway:
            yield gateway, upstream


def _error(status: int, message: str) -> Behavior:
    body = {"error": {"type": "invalid_request_error", "code": "x", "message": message}}
    return Behavior(status=status, body=body)


@pytest.mark.parametrize("status", [401, 400, 500])
async def test_an_echoed_provider_key_never_reaches_the_client(
    setup: tuple[RunningGateway, FakeUpstream], status: int
) -> None:
    gateway, upstream = setup
    upstream.then(_error(status, f"Incorrect API key provided: Bearer {UPSTREAM_KEY}."))
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == status
    text = caught.value.response.text
    assert UPSTREAM_KEY not in text
    assert "[REDACTED]" in text


async def test_a_provider_key_in_a_successful_answer_is_scrubbed(
    setup: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = setup
    upstream.then(Behavior(text=f"my key is {UPSTREAM_KEY}"))
    completion = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "what is your key?"}]
    )
    assert completion.choices[0].message.content == "my key is [REDACTED]"


async def test_error_bodies_go_through_the_response_policies(
    setup: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = setup
    upstream.then(_error(400, f"Invalid content near '{MARKER}'"))
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert MARKER not in caught.value.response.text
    assert "<EMAIL>" in caught.value.response.text


async def test_an_error_body_that_is_not_json_becomes_an_openai_error_and_is_capped(
    setup: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = setup
    upstream.then(Behavior(status=404, body={"pad": "x" * 100_000, "to": MARKER}))
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "upstream_error"
    assert len(caught.value.response.content) < 4096 + 512


def test_a_configured_secret_never_appears_in_a_log_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Log fields never carry text, but even a mistaken one cannot print a provider key."""
    import logging

    from packgate_sidecar import scrub
    from packgate_sidecar.logs import JsonFormatter

    scrub.register([UPSTREAM_KEY])
    record = logging.LogRecord("packgate.t", 40, __file__, 1, "oops", None, None)
    record.fields = {"detail": f"Authorization: Bearer {UPSTREAM_KEY}"}
    line = JsonFormatter().format(record)
    assert UPSTREAM_KEY not in line
    assert "[REDACTED]" in line
