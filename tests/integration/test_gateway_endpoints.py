"""Every governed endpoint through the gateway with the real OpenAI SDK, JSON and streamed."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.support.gateway import UPSTREAM_KEY, RunningGateway, make_config, running_gateway
from tests.support.policies import allow_all
from tests.support.upstream import Behavior, FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as running:
        yield running


@pytest.fixture
async def gateway(upstream: FakeUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_config(upstream.base_url)) as running:
        yield running


async def test_chat_completion_uses_the_sidecar_key_and_never_the_clients(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: Hello there"
    assert len(raw.headers["x-packgate-request-id"]) == 32
    received = upstream.received[-1]
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "client-key-never-forwarded" not in str(received.headers)
    assert received.body["model"] == "gpt-4o"


async def test_chat_completion_streamed(gateway: RunningGateway) -> None:
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"] == "text/event-stream"
    assert raw.headers["x-packgate-request-id"]
    stream = raw.parse()
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == "echo: stream this please"
    assert len(pieces) > 1
    assert usage is not None and usage.total_tokens > 0


async def test_completions_json_and_streamed(gateway: RunningGateway) -> None:
    client = gateway.client()
    completion = await client.completions.create(model="m", prompt="Once upon")
    assert completion.choices[0].text == "echo: Once upon"
    stream = await client.completions.create(model="m", prompt="a time", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "echo: a time"


async def test_embeddings_float_and_base64(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    client = gateway.client()
    result = await client.embeddings.create(model="e", input=["one", "three"])
    assert [item.index for item in result.data] == [0, 1]
    assert result.data[1].embedding == [5.0, 0.5, -0.25]
    raw = await client.embeddings.with_raw_response.create(
        model="e", input="seven", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (5.0, 0.5, -0.25)
    assert upstream.received[-1].body["input"] == "seven"


async def test_responses_json_and_streamed(gateway: RunningGateway) -> None:
    client = gateway.client()
    response = await client.responses.create(model="gpt-4o", input="Summarise Q3")
    assert response.output_text == "echo: Summarise Q3"
    stream = await client.responses.create(
        model="gpt-4o", input=[{"role": "user", "content": "streamed input"}], stream=True
    )
    events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "echo: streamed input"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo: streamed input"


async def test_responses_stream_helper_accumulates(gateway: RunningGateway) -> None:
    async with gateway.client().responses.stream(model="gpt-4o", input="helper") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "echo: helper"


async def test_the_target_model_replaces_the_clients_and_models_are_listed(
    upstream: FakeUpstream,
) -> None:
    config = make_config(upstream.base_url, upstream.base_url, models=["gpt-4o", "gpt-4o-mini"])
    async with running_gateway(config) as gateway:
        client = gateway.client()
        completion = await client.chat.completions.create(
            model="whatever-the-app-says", messages=[{"role": "user", "content": "hi"}]
        )
        assert upstream.received[-1].body["model"] == "gpt-4o"
        assert completion.model == "gpt-4o"
        models = await client.models.list()
        assert [m.id for m in models.data] == ["gpt-4o", "gpt-4o-mini"]
        assert (await client.models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-5")
    assert all(r.path != "/v1/models" for r in upstream.received)


async def test_the_first_streamed_chunk_arrives_before_the_upstream_finished(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    upstream.then(Behavior(text="one two three four five", chunk_delay=0.2))
    stream = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    finished_when_first_text_arrived = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            finished_when_first_text_arrived = upstream.completed
            break
    await stream.close()
    assert finished_when_first_text_arrived == 0


async def test_request_and_upstream_ids_reach_the_client(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    upstream.then(Behavior(headers={"x-request-id": "req_upstream_1", "set-cookie": "a=b"}))
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-request-id"] == "req_upstream_1"
    assert "set-cookie" not in raw.headers


# --- the seed document ----------------------------------------------------------------------

# Verbatim from ../shared/seed/000_6ddc642ba337691b.txt (only the port differs: tests pick a free
# one). The first config of the seed, with a base_url added to reach the local upstream.
SEED_SNIPPET = """
from openai import OpenAI

client = OpenAI(
base_url="http://localhost:41002/v1",
api_key="unused",
)

response = client.chat.completions.create(
model="gpt-4o",
messages=[
{"role": "system", "content": "You are a helpful enterprise assistant."},
{"role": "user", "content": "Summarise our Q3 revenue trends."},
],
)
print(response.choices[0].message.content)
"""

SEED_CURL = """curl http://localhost:41002/v1/chat/completions \\
-H "Content-Type: application/json" \\
-d '{
"model": "gpt-4o",
"messages": [
{"role": "user", "content": "Hello from the governed gateway."}
]
}'"""

SEED_CONFIG = """
pack:
  name: chatgpt-enterprise-gateway
  version: 1.0.0
  enabled: true
providers:
  targets:
    - id: chatgpt-enterprise
      provider: openai:chat:gpt-4o
      base_url: {base_url}
      secret_key_ref:
        env: OPENAI_API_KEY
policies:
  chain:
    - prompt-injection
    - pii-detector
    - audit-logger
policy:
  prompt-injection:
    threshold: 0.8
    action: block
  pii-detector:
    action: redact
    entities:
      - EMAIL
      - PHONE
      - SSN
      - CREDIT_CARD
  audit-logger:
    immutable: true
    retention_days: 365
    log_all_access: true
"""


async def _run(*command: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_seed_snippet_and_curl_work_unchanged(upstream: FakeUpstream) -> None:
    config = SEED_CONFIG.replace("{base_url}", upstream.base_url)
    # The seed's policies are stood in for by allow-all policies: this tests the gateway.
    registry = allow_all(["prompt-injection", "pii-detector", "audit-logger"])
    async with running_gateway(
        config, registry=registry, environ={"OPENAI_API_KEY": "sk-seed-key"}
    ) as gateway:
        port = gateway.base_url.rsplit(":", 1)[1].split("/")[0]
        snippet = SEED_SNIPPET.replace("41002", port)
        printed = await _run(sys.executable, "-c", snippet)
        assert printed.strip() == "echo: Summarise our Q3 revenue trends."
        sent = upstream.received[-1]
        assert sent.headers["Authorization"] == "Bearer sk-seed-key"
        assert sent.body["messages"][0]["role"] == "system"

        body = await _run("bash", "-c", SEED_CURL.replace("41002", port))
        assert '"content": "echo: Hello from the governed gateway."' in body.replace('":"', '": "')
        assert upstream.received[-1].headers["Authorization"] == "Bearer sk-seed-key"


def test_the_seed_snippet_here_is_the_seeds() -> None:
    seed = Path(__file__).parents[3] / "shared" / "seed" / "000_6ddc642ba337691b.txt"
    if not seed.exists():
        pytest.skip("the seed document is not next to this checkout")
    text = seed.read_text()
    assert SEED_SNIPPET.strip() in text
    assert SEED_CURL in text
