"""A stream's write-ahead audit record: written while the request is upstream, durable before the
client gets a byte, and an answer that could not be audited is never relayed (docs/security.md)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from packgate_policy import PolicyBlock
from packgate_sidecar.policy import Policy, PolicyRuntime, RequestContext
from packgate_sidecar.reload import ConfigHolder

from tests.support.gateway import make_config, running_gateway
from tests.support.policies import registry_with
from tests.support.upstream import FakeUpstream

CHAT = [{"role": "user", "content": "hello"}]


class WriteAhead(Policy):
    """A finish-phase policy whose write-ahead record becomes durable when the test says so."""

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        super().__init__(settings, runtime)
        self.durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def write_ahead(self, ctx: RequestContext) -> asyncio.Future[None]:
        return self.durable

    async def on_finish(self, ctx: RequestContext) -> None:
        return None


def _policy(holder: ConfigHolder) -> WriteAhead:
    assert holder.current is not None
    policy = holder.current.chain.finish_entries[0].policy
    assert isinstance(policy, WriteAhead)
    return policy


async def test_the_first_byte_waits_for_the_record_while_the_request_is_already_upstream() -> None:
    registry = registry_with(audit_logger=WriteAhead)
    async with (
        FakeUpstream() as upstream,
        running_gateway(make_config(upstream.base_url, chain=["audit-logger"]), registry) as gw,
    ):
        policy = _policy(gw.holder)
        client = gw.client()
        opened = asyncio.ensure_future(
            client.chat.completions.create(model="m", messages=CHAT, stream=True)
        )
        await upstream.wait_received(1)  # the request went upstream before the record is durable
        await asyncio.sleep(0.2)
        assert not opened.done(), "the stream started before its audit record was durable"
        policy.durable.set_result(None)
        stream = await asyncio.wait_for(opened, 5)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: hello"


async def test_an_answer_whose_record_cannot_be_written_is_not_relayed() -> None:
    registry = registry_with(audit_logger=WriteAhead)
    async with (
        FakeUpstream() as upstream,
        running_gateway(make_config(upstream.base_url, chain=["audit-logger"]), registry) as gw,
    ):
        _policy(gw.holder).durable.set_exception(OSError("disk gone"))
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.client().chat.completions.create(model="m", messages=CHAT, stream=True)
        assert caught.value.status_code == 503
        body = caught.value.body
        assert isinstance(body, dict) and body["code"] == "audit_unavailable"
