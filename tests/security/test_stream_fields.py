"""Threat: a streamed answer carries text where the chain does not look: a second choice
(`n` > 1), the audio transcript of a voice answer, the Responses API's transcript events, or the
logprobs that spell out every token. Each is scanned by the stream policies (or, for logprobs,
dropped once the text they spell out was changed), so the shipped pii-detector's redaction holds
for all of them. Upstream streams are scripted byte for byte; the client is the real OpenAI SDK.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.gateway import RunningGateway
from tests.support.upstream import Behavior, FakeUpstream

EMAIL = "jane.doe@example.com"


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def chunk(*choices: dict[str, Any]) -> bytes:
    return sse(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": list(choices),
        }
    )


def pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _chat(gateway: RunningGateway) -> list[Any]:
    stream = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, n=2
    )
    return [c async for c in stream]


async def test_every_choice_of_a_stream_is_redacted(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    text = f"Mail {EMAIL} now."
    events = []
    for piece in pieces(text):  # both choices interleaved, as a provider streams n=2
        events.append(chunk({"index": 0, "delta": {"content": piece}, "finish_reason": None}))
        events.append(chunk({"index": 1, "delta": {"content": piece}, "finish_reason": None}))
    events.append(chunk({"index": 0, "delta": {}, "finish_reason": "stop"}))
    events.append(chunk({"index": 1, "delta": {}, "finish_reason": "stop"}))
    upstream.then(Behavior(sse=[*events, b"data: [DONE]\n\n"]))
    got = {0: "", 1: ""}
    for c in await _chat(gateway):
        for choice in c.choices:
            got[choice.index] += choice.delta.content or ""
    assert got == {0: "Mail <EMAIL> now.", 1: "Mail <EMAIL> now."}


async def test_a_streamed_audio_transcript_is_redacted(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    events = [chunk({"index": 0, "delta": {"role": "assistant", "audio": {"id": "a1"}}})]
    for piece in pieces(f"You can write to {EMAIL} today."):
        audio = {"transcript": piece, "data": "AAAA"}
        events.append(chunk({"index": 0, "delta": {"audio": audio}, "finish_reason": None}))
    events.append(chunk({"index": 0, "delta": {}, "finish_reason": "stop"}))
    upstream.then(Behavior(sse=[*events, b"data: [DONE]\n\n"]))
    transcript = ""
    for c in await _chat(gateway):
        for choice in c.choices:
            audio = choice.delta.model_dump().get("audio") or {}
            transcript += audio.get("transcript") or ""
    assert transcript == "You can write to <EMAIL> today."


async def test_logprobs_do_not_spell_out_redacted_text(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    events = []
    for piece in pieces(f"Mail {EMAIL} now."):
        logprobs = {"content": [{"token": piece, "logprob": -0.1, "bytes": list(piece.encode()),
                                 "top_logprobs": []}]}  # fmt: skip
        events.append(chunk({"index": 0, "delta": {"content": piece}, "logprobs": logprobs}))
    upstream.then(Behavior(sse=[*events, b"data: [DONE]\n\n"]))
    chunks = await _chat(gateway)
    tokens = "".join(
        item.token
        for c in chunks
        for choice in c.choices
        if choice.logprobs is not None
        for item in choice.logprobs.content or []
    )
    assert "jane" not in tokens and "example" not in tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Mail <EMAIL> now."
    )


async def test_responses_stream_text_and_transcript_events_are_redacted(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    events = [sse({"type": "response.created", "sequence_number": 0,
                   "response": {"id": "r1", "object": "response", "created_at": 1, "model": "m",
                                "status": "in_progress", "output": []}})]  # fmt: skip
    number = 1
    for piece in pieces(f"Write {EMAIL} please."):
        events.append(sse({"type": "response.output_text.delta", "output_index": 0,
                           "content_index": 0, "item_id": "m1", "delta": piece,
                           "logprobs": [], "sequence_number": number}))  # fmt: skip
        events.append(sse({"type": "response.audio.transcript.delta", "delta": piece,
                           "sequence_number": number + 1}))  # fmt: skip
        number += 2
    events.append(sse({"type": "response.output_text.done", "output_index": 0,
                       "content_index": 0, "item_id": "m1", "logprobs": [],
                       "text": f"Write {EMAIL} please.", "sequence_number": number}))  # fmt: skip
    events.append(sse({"type": "response.audio.transcript.done", "sequence_number": number + 1}))
    upstream.then(Behavior(sse=events))
    stream = await gateway.client().responses.create(model="m", input="hi", stream=True)
    text = transcript = done = ""
    async for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.audio.transcript.delta":
            transcript += event.delta
        elif event.type == "response.output_text.done":
            done = event.text
    assert text == transcript == done == "Write <EMAIL> please."
