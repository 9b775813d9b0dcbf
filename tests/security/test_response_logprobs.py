"""Threat: a whole (non-streamed) answer whose text a response policy redacted still carries the
logprobs of the original tokens, so `choices[].logprobs` (chat, completions) or an `output_text`
part's `logprobs` (Responses API) spell out the PII the policy removed. When a policy changes a
text, the logprobs belonging to that text go (`null`, or `[]` for the Responses API, as in
streams); logprobs of a text no policy changed are kept. The upstream answers with scripted
bodies; the client is the real OpenAI SDK.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.gateway import RunningGateway
from tests.support.upstream import Behavior, FakeUpstream

EMAIL = "jane.doe@example.com"
LEAKY = f"Mail {EMAIL} now."
CLEAN = "All is well."


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def words(text: str) -> list[str]:
    """The text as tokens: each word and the space before it."""
    return [(" " if i else "") + word for i, word in enumerate(text.split(" "))]


def chat_logprobs(text: str) -> dict[str, Any]:
    tokens = [
        {"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []}
        for t in words(text)
    ]
    return {"content": tokens, "refusal": None}


async def test_chat_logprobs_of_a_redacted_choice_are_dropped(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    choices = [
        {"index": i, "finish_reason": "stop", "logprobs": chat_logprobs(text),
         "message": {"role": "assistant", "content": text}}
        for i, text in enumerate([LEAKY, CLEAN])
    ]  # fmt: skip
    upstream.then(Behavior(body={"id": "c1", "object": "chat.completion", "created": 1,
                                 "model": "m", "choices": choices}))  # fmt: skip
    answer = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], n=2, logprobs=True
    )
    redacted, untouched = answer.choices
    assert redacted.message.content == "Mail <EMAIL> now."
    assert redacted.logprobs is None
    assert "jane" not in answer.model_dump_json()
    assert untouched.message.content == CLEAN
    assert untouched.logprobs is not None
    assert "".join(t.token for t in untouched.logprobs.content or []) == CLEAN


async def test_completions_logprobs_of_a_redacted_choice_are_dropped(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    tokens = words(LEAKY)
    logprobs = {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens),
                "top_logprobs": [{t: -0.1} for t in tokens],
                "text_offset": [LEAKY.index(t.strip()) for t in tokens]}  # fmt: skip
    upstream.then(Behavior(body={"id": "c1", "object": "text_completion", "created": 1,
                                 "model": "m", "choices": [{"index": 0, "text": LEAKY,
                                 "finish_reason": "stop", "logprobs": logprobs}]}))  # fmt: skip
    answer = await gateway.client().completions.create(model="m", prompt="hi", logprobs=1)
    assert answer.choices[0].text == "Mail <EMAIL> now."
    assert answer.choices[0].logprobs is None
    assert "jane" not in answer.model_dump_json()


async def test_responses_output_text_logprobs_of_a_redacted_part_are_emptied(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway

    def part(text: str) -> dict[str, Any]:
        logprobs = [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []}
                    for t in words(text)]  # fmt: skip
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}

    message = {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
               "content": [part(LEAKY), part(CLEAN)]}  # fmt: skip
    upstream.then(Behavior(body={"id": "r1", "object": "response", "created_at": 1,
                                 "model": "m", "status": "completed", "output": [message],
                                 "parallel_tool_calls": True, "tool_choice": "auto",
                                 "tools": []}))  # fmt: skip
    answer = await gateway.client().responses.create(
        model="m", input="hi", include=["message.output_text.logprobs"]
    )
    redacted, untouched = answer.model_dump()["output"][0]["content"]
    assert redacted["text"] == "Mail <EMAIL> now."
    assert redacted["logprobs"] == []
    assert "jane" not in answer.model_dump_json()
    assert "".join(t["token"] for t in untouched["logprobs"]) == CLEAN


async def test_responses_stream_snapshots_drop_logprobs_of_a_redacted_text(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    """The `.done`, `content_part.done` and `response.completed` events repeat the whole text
    with its logprobs; once the streamed text was redacted, those logprobs go too."""
    gateway, upstream = redacting_gateway

    def logprobs(text: str) -> list[dict[str, Any]]:
        return [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []}
                for t in words(text)]  # fmt: skip

    part = {"type": "output_text", "text": LEAKY, "annotations": [], "logprobs": logprobs(LEAKY)}
    item = {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
            "content": [part]}  # fmt: skip
    response = {"id": "r1", "object": "response", "created_at": 1, "model": "m",
                "status": "completed", "output": [item], "parallel_tool_calls": True,
                "tool_choice": "auto", "tools": []}  # fmt: skip
    where = {"output_index": 0, "content_index": 0, "item_id": "m1"}
    events = [{"type": "response.output_text.delta", **where, "delta": token,
               "logprobs": logprobs(token)} for token in words(LEAKY)]  # fmt: skip
    events += [
        {"type": "response.output_text.done", **where, "text": LEAKY, "logprobs": logprobs(LEAKY)},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response},
    ]
    upstream.then(Behavior(sse=[sse({**e, "sequence_number": n}) for n, e in enumerate(events)]))
    stream = await gateway.client().responses.create(model="m", input="hi", stream=True)
    seen = [event async for event in stream]
    assert {e.type for e in seen} == {e["type"] for e in events}
    for event in seen:
        assert "jane" not in event.model_dump_json(), event.type
    assert seen[-1].model_dump()["response"]["output"][0]["content"][0]["text"] == (
        "Mail <EMAIL> now."
    )
