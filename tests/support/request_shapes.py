"""Hypothesis strategies for every request shape that carries text, and a live gateway for them.

Why it exists: "no request shape lets text past the chain" is proven by fuzz tests that send
generated requests through the real gateway: one with a stand-in policy (the chain mechanism)
and one with the real pii-detector. Both need the same shapes (chat messages of every role with
string and content-part content, tool-call arguments, tool results, refusals, tool descriptions,
/v1/responses instructions and input items, /v1/completions prompts, embeddings input; streamed
and not) and the same way to drive a gateway from a synchronous hypothesis test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from packgate_sidecar.policy import Registry

from tests.support.gateway import make_config, running_gateway
from tests.support.upstream import FakeUpstream

ident = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=8)
image_part = st.builds(
    lambda url: {"type": "image_url", "image_url": {"url": f"https://example.com/{url}.png"}},
    ident,
)


def arguments(value: str) -> str:
    return json.dumps({"value": value})


def parts(text_part: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """Content-part arrays with at least one text part, anywhere among images and more text."""
    return st.builds(
        lambda first, rest, at: [*rest[:at], first, *rest[at:]],
        text_part,
        st.lists(st.one_of(text_part, other), max_size=2),
        st.integers(0, 2),
    )


def chat_body(messages: list[Any], tools: list[Any], stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": messages, "stream": stream}
    if tools:
        body["tools"] = tools
    return body


def request_shapes(text: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, Any]]:
    """(path, body) of every governed endpoint, with `text` in every text position."""
    chat_text_part = st.builds(lambda t: {"type": "text", "text": t}, text)
    chat_content = st.one_of(text, parts(chat_text_part, image_part))
    tool_call = st.builds(
        lambda name, value: {
            "id": f"call_{name}",
            "type": "function",
            "function": {"name": name, "arguments": arguments(value)},
        },
        ident,
        text,
    )

    chat_message = st.one_of(
        st.builds(lambda c: {"role": "system", "content": c}, chat_content),
        st.builds(lambda c: {"role": "developer", "content": c}, chat_content),
        st.builds(lambda c: {"role": "user", "content": c}, chat_content),
        st.builds(lambda c: {"role": "assistant", "content": c}, chat_content),
        st.builds(
            lambda calls: {"role": "assistant", "content": None, "tool_calls": calls},
            st.lists(tool_call, min_size=1, max_size=2),
        ),
        st.builds(lambda r: {"role": "assistant", "content": None, "refusal": r}, text),
        st.builds(
            lambda c, i: {"role": "tool", "tool_call_id": f"call_{i}", "content": c},
            chat_content,
            ident,
        ),
        st.builds(lambda c, n: {"role": "function", "name": n, "content": c}, text, ident),
    )

    chat_request = st.builds(
        chat_body,
        st.lists(chat_message, min_size=1, max_size=5),
        st.lists(
            st.builds(
                lambda n, d: {"type": "function", "function": {"name": n, "description": d}},
                ident,
                text,
            ),
            max_size=2,
        ),
        st.booleans(),
    )

    completions_request = st.builds(
        lambda prompt, suffix, stream: {
            "model": "m",
            "prompt": prompt,
            "stream": stream,
            **({"suffix": suffix} if suffix else {}),
        },
        st.one_of(text, st.lists(text, min_size=1, max_size=3)),
        st.one_of(st.none(), text),
        st.booleans(),
    )

    embeddings_request = st.builds(
        lambda value: {"model": "m", "input": value},
        st.one_of(text, st.lists(text, min_size=1, max_size=3)),
    )

    responses_parts = parts(
        st.builds(lambda t: {"type": "input_text", "text": t}, text),
        st.builds(
            lambda u: {"type": "input_image", "image_url": f"https://example.com/{u}.png"}, ident
        ),
    )
    responses_item = st.one_of(
        st.builds(
            lambda role, c: {"role": role, "content": c},
            st.sampled_from(["user", "system", "developer"]),
            st.one_of(text, responses_parts),
        ),
        st.builds(
            lambda c: {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": c}],
            },
            text,
        ),
        st.builds(
            lambda n, v: {
                "type": "function_call",
                "call_id": f"c_{n}",
                "name": n,
                "arguments": arguments(v),
            },
            ident,
            text,
        ),
        st.builds(
            lambda n, out: {"type": "function_call_output", "call_id": f"c_{n}", "output": out},
            ident,
            st.one_of(text, responses_parts),
        ),
        st.builds(
            lambda s: {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": s}],
            },
            text,
        ),
    )
    responses_request = st.builds(
        lambda instructions, value, stream: {
            "model": "m",
            "input": value,
            "stream": stream,
            **({"instructions": instructions} if instructions else {}),
        },
        st.one_of(st.none(), text),
        st.one_of(text, st.lists(responses_item, min_size=1, max_size=4)),
        st.booleans(),
    )

    return st.one_of(
        st.tuples(st.just("/v1/chat/completions"), chat_request),
        st.tuples(st.just("/v1/completions"), completions_request),
        st.tuples(st.just("/v1/embeddings"), embeddings_request),
        st.tuples(st.just("/v1/responses"), responses_request),
    )


@dataclass
class Live:
    url: str
    upstream: FakeUpstream


@contextmanager
def live_gateway(
    registry: Callable[[], Registry], chain: list[str], policy: Mapping[str, Any] | None = None
) -> Iterator[Live]:
    """A gateway and an upstream on an event loop of their own, so a synchronous hypothesis
    test can drive them over real HTTP.

    Each chained policy gets a generous `timeout_ms` unless `policy` sets one: the gateway
    shares this process (and the GIL) with hypothesis on a machine that may be busy, so the
    default 200 ms wall-clock budget measures scheduling, and an overrun blocks the request
    (fail closed). These tests are about what is checked and forwarded; budgets are tested with
    their own policies (tests/support/policies.py FailingPolicy)."""
    settings = {kind: dict(block) for kind, block in (policy or {}).items()}
    for kind in chain:
        settings.setdefault(kind, {}).setdefault("timeout_ms", 10_000)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        async with FakeUpstream() as upstream:
            config = make_config(upstream.base_url, chain=chain, policy=settings)
            async with running_gateway(config, registry()) as gateway:
                state["live"] = Live(gateway.base_url.removesuffix("/v1"), upstream)
                started.set()
                await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10), "the gateway did not start"
    try:
        yield state["live"]
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()


def post(url: str, body: dict[str, Any]) -> bytes:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{error.code}: {error.read().decode()}") from None
