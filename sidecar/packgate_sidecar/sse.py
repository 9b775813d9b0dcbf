"""Server-sent events: split an upstream byte stream into events and run the chain over them.

Why it exists: streamed completions must reach the client as they arrive, yet every delta has to
pass the policies' stream filters. `StreamRewriter` does that one event at a time: it feeds each
text delta to its channel's filters, sends what they release, flushes what they held back before
the event that ends a channel (as a synthesized delta event of the same kind), and keeps the
Responses API's repeated whole texts (`.done` events, the final `response.completed`) equal to
what was actually streamed, so no snapshot leaks the unfiltered text. Events it does not change
go out byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from .chain import StreamBlocked, StreamPolicies
from .policy import RequestContext
from .shapes import Channel
from .stream_shapes import StreamShape


class UnreadableEvent(ValueError):
    """An upstream event whose data is not a JSON object: it cannot be checked, so not sent."""


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete event blocks in `buffer` and the incomplete rest. Accepts CRLF line ends."""
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    blocks = buffer.split(b"\n\n")
    rest = blocks.pop()
    return [block for block in blocks if block.strip(b"\n")], rest


def parse_block(block: bytes) -> tuple[str | None, str | None]:
    """The `event` name and joined `data` of one event block (None when absent)."""
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return event, (b"\n".join(data).decode("utf-8") if data else None)


def encode_event(event: str | None, data: Any) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return head + b"data: " + body + b"\n\n"


def _matches(channel: Channel, prefixes: list[Channel]) -> bool:
    return any(channel[: len(prefix)] == prefix for prefix in prefixes)


class StreamRewriter:
    """Rewrites one SSE stream. `policies` None means only observe (usage, output size)."""

    def __init__(
        self, shape: StreamShape, policies: StreamPolicies | None, ctx: RequestContext
    ) -> None:
        self.shape = shape
        self.policies = policies
        self.ctx = ctx
        self.saw_done = False
        self._rest = b""
        self._templates: dict[Channel, tuple[str | None, dict[str, Any]]] = {}
        self._emitted: dict[Channel, str] = {}

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to send for this upstream chunk; raises StreamBlocked or UnreadableEvent."""
        blocks, self._rest = split_events(self._rest + chunk)
        if not blocks:
            return b""
        out: list[bytes] = []
        try:
            for block in blocks:
                out.append(self._event(block))
        except StreamBlocked as blocked:
            blocked.partial = b"".join(out)
            raise
        return b"".join(out)

    def end(self) -> bytes:
        """The upstream finished: process a last unterminated event and flush every channel."""
        out = b""
        if self._rest.strip():
            out += self._event(self._rest)
        self._rest = b""
        if self.policies is not None:
            out += self._flush([()], set())
        return out

    def _event(self, block: bytes) -> bytes:
        name, data = parse_block(block)
        raw = block + b"\n\n"
        if data is None:
            return raw
        if data.strip() == "[DONE]":
            self.saw_done = True
            return (self._flush([()], set()) if self.policies else b"") + raw
        try:
            obj = json.loads(data)
        except ValueError:
            raise UnreadableEvent("upstream sent an event that is not JSON") from None
        if not isinstance(obj, dict):
            raise UnreadableEvent("upstream sent an event that is not a JSON object")
        if obj.get("error"):
            # The provider's own error event; held-back text is dropped, the error goes through.
            return raw
        parsed = self.shape.parse(name, obj)
        if parsed.usage is not None:
            self.ctx.usage = parsed.usage
        policies = self.policies
        if policies is None:
            for _, slot in parsed.deltas:
                self.ctx.output_chars += len(slot.get())
            return raw
        changed = False
        delta_channels = {channel for channel, _ in parsed.deltas}
        out = self._flush(parsed.closes, delta_channels) if parsed.closes else b""
        for channel, slot in parsed.deltas:
            original = slot.get()
            text = policies.feed(channel, original)
            if parsed.closes and _matches(channel, parsed.closes):
                text += policies.finish(channel)
            if text != original:
                slot.set(text)
                changed = True
            self._templates[channel] = (name, obj)
            self._sent(channel, text)
        for channel, slot in parsed.snapshots:
            current = slot.get()
            wanted = self._emitted.get(channel)
            if wanted is None:
                wanted = policies.oneshot(current) if current else current
                self._emitted[channel] = wanted
            if wanted != current:
                slot.set(wanted)
                changed = True
        return out + (encode_event(name, obj) if changed else raw)

    def _flush(self, prefixes: list[Channel], skip: set[Channel]) -> bytes:
        assert self.policies is not None
        out = b""
        for channel in self.policies.open_channels():
            if channel in skip or not _matches(channel, prefixes):
                continue
            rest = self.policies.finish(channel)
            template = self._templates.get(channel)
            if rest and template is not None:
                name, data = template
                out += encode_event(name, self.shape.synthesize(channel, data, rest))
                self._sent(channel, rest)
        return out

    def _sent(self, channel: Channel, text: str) -> None:
        self.ctx.output_chars += len(text)
        if self.shape.has_snapshots:
            self._emitted[channel] = self._emitted.get(channel, "") + text
