"""Fixtures shared by the security tests.

Why it exists: several threats (obfuscated PII, logprobs, SSE layout, stream fields) are checked
against the same setup, the shipped pii-detector redacting prompts and answers, behind a real
gateway and a scripted upstream; one fixture keeps that setup identical for all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from packgate_sidecar.chain import builtin_registry

from tests.support.gateway import RunningGateway, make_config, running_gateway
from tests.support.upstream import FakeUpstream


@pytest.fixture
async def redacting_gateway() -> AsyncIterator[tuple[RunningGateway, FakeUpstream]]:
    """A gateway whose chain is the shipped pii-detector, redacting requests and responses."""
    async with FakeUpstream() as upstream:
        config = make_config(
            upstream.base_url,
            chain=["pii-detector"],
            policy={"pii-detector": {"action": "redact", "scan_responses": True}},
        )
        async with running_gateway(config, builtin_registry()) as gateway:
            yield gateway, upstream
