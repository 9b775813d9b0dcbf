"""Threat: personal data written so the detector's ASCII patterns miss it, while every reader
(and every model) still sees it: fullwidth forms, zero-width characters or NUL bytes inside the
value, an SSN without separators. Detection runs on normalised text (NFKC, invisible characters
removed) and redaction replaces the whole original span, invisible characters included.

Each test goes through the real OpenAI SDK and the shipped pii-detector (redact), in both
directions: the prompt the provider receives and the answer the client receives, whole and
streamed.
"""

from __future__ import annotations

import pytest

from tests.support.gateway import RunningGateway
from tests.support.upstream import Behavior, FakeUpstream

OBFUSCATED = {
    "zero-width space in an e-mail": ("john.doe\u200b@example.com", "<EMAIL>"),
    "zero-width joiners and BOM": ("j\u200do\u2060hn@exa\ufeffmple.com", "<EMAIL>"),
    "fullwidth at sign": ("jane\uff20example.com", "<EMAIL>"),
    "fullwidth digits in a card": ("\uff14\uff11\uff11\uff11 1111 1111 1111", "<CREDIT_CARD>"),
    "NUL inside an SSN": ("078-05\x00-1120", "<SSN>"),
    "soft hyphen in a phone number": ("+1 650-253\u00ad-0000", "<PHONE>"),
    "SSN without separators after its word": ("SSN 078051120", "SSN <SSN>"),
    "social security number spelled out": (
        "social security number is 219099999",
        "social security number is <SSN>",
    ),
}
CASES = list(OBFUSCATED.values())
IDS = list(OBFUSCATED)


@pytest.mark.parametrize(("value", "redacted"), CASES, ids=IDS)
async def test_prompt_reaches_the_provider_redacted_whole(
    redacting_gateway: tuple[RunningGateway, FakeUpstream], value: str, redacted: str
) -> None:
    gateway, upstream = redacting_gateway
    await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"Note: {value}, thanks"}]
    )
    sent = upstream.received[-1].body["messages"][0]["content"]
    assert sent == f"Note: {redacted}, thanks"  # no leftover invisible character either


@pytest.mark.parametrize(("value", "redacted"), CASES, ids=IDS)
async def test_answer_reaches_the_client_redacted_whole_and_streamed(
    redacting_gateway: tuple[RunningGateway, FakeUpstream], value: str, redacted: str
) -> None:
    gateway, upstream = redacting_gateway
    text = f"Sure: {value} is on file."
    upstream.then(Behavior(text=text))
    whole = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert whole.choices[0].message.content == f"Sure: {redacted} is on file."
    # Streamed in three-character pieces, so the value is cut between deltas.
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    upstream.then(Behavior(chunks=pieces))
    stream = await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert got == f"Sure: {redacted} is on file."


async def test_unseparated_digits_without_a_context_word_are_left_alone(
    redacting_gateway: tuple[RunningGateway, FakeUpstream],
) -> None:
    gateway, upstream = redacting_gateway
    await gateway.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "order 078051120 shipped"}]
    )
    assert upstream.received[-1].body["messages"][0]["content"] == "order 078051120 shipped"
