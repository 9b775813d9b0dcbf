"""Where the text is in streamed responses: chat, completions and Responses API events.

Why it exists: a streamed answer spreads each text over many events, in per-endpoint layouts,
and the Responses API repeats whole texts in `.done` events and in its final snapshot. The
stream rewriter (sse.py) needs, for each event, which text deltas it carries and on which
channel, which channels it ends, and which snapshot texts must match what was streamed; and it
needs to make a new event of the right kind to flush text a policy held back. This module answers
exactly that per endpoint, and nothing else.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from .shapes import CHAT, COMPLETIONS, RESPONSES, Channel, Json, TextSlot, choices_of


@dataclass(frozen=True)
class StreamEvent:
    """What one parsed stream event means for the chain."""

    deltas: list[tuple[Channel, TextSlot]]
    # Channels that end with this event (by prefix): their held-back text must go out first.
    closes: list[Channel]
    # Texts that repeat a whole channel (the Responses API's `.done` events and final snapshot).
    snapshots: list[tuple[Channel, TextSlot]]
    usage: Json | None = None


class StreamShape:
    """How one endpoint's stream carries text. Subclasses override `parse` and `synthesize`."""

    has_snapshots = False
    # The `event:` lines (each with its LF) a plain delta event may open with (`plain_delta`);
    # empty when the shape's plain events are one `data:` line.
    plain_events: tuple[bytes, ...] = ()
    # A member before the text of a plain delta event whose value, an integer in JSON's
    # spelling (`sse_frames.PLAIN_INTEGER`), may differ from event to event without changing
    # what `plain_delta` answers (sse.py then reads the next events in the frame around it).
    plain_counter: bytes | None = None
    # Whether the shape numbers its events (the Responses API's `sequence_number`): an event
    # the rewriter adds must then take a number, and the events after it move up (sse_numbers).
    numbered = False

    def parse(self, event: str | None, data: Json) -> StreamEvent:
        raise NotImplementedError

    def plain_delta(self, block: bytes, at: int) -> tuple[Channel, int, int] | None:
        """For the common event that carries one text delta and nothing else the chain needs
        (no other text, no end of a channel, no usage, no error), its channel and the byte span
        of that text inside `block` (whose JSON starts at `at`, after a `data: ` that may follow
        one of `plain_events`), read without parsing the JSON; None when the event must be
        parsed. Must agree exactly with `parse` where it answers, and re-encoding the event with
        a changed text must be the same as putting the text between its bytes."""
        return None

    def drop_logprobs(self, data: Json, channel: Channel) -> None:
        """A channel's text in `data` was changed: remove what spells out the original tokens."""

    def synthesize(self, channel: Channel, template: Json, text: str) -> Json:
        """A new event carrying `text` for `channel`, modelled on the channel's last event."""
        raise NotImplementedError


def _usage(data: Json) -> Json | None:
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None


# The chat fast path (see ChatStream.plain_delta): the usual chunk layout, one choice whose
# delta holds `content` (and maybe the first chunk's role) and nothing else.
_PLAIN_CHAT = re.compile(
    rb'"choices":\[\{"index":(\d{1,9}),"delta":\{(?:"role":"assistant",)?"content":"([^"]*)"\}'
)
# Keys that need the full parse: other text fields, the end of a channel, usage, errors,
# logprobs (dropped when a text changes); and raw control characters (invalid JSON).
# (One literal first character lets `re` skip between quotes in C.)
# (The first letter is a class so `re` rejects most quotes at once; it over-matches harmless
# look-alikes such as "tudio", which only send an event down the full parse.)
_NEEDS_PARSE = re.compile(
    rb'"[rtfaeul](?:efusal"|easoning|ool_calls"|unction_call"|udio"|rror"'
    rb'|inish_reason":(?!null)|sage":(?!null)|ogprobs":(?!null))'
)
# A backslash (an escape: keys and quotes may hide behind it) or a raw control character.
_ESCAPE_OR_CONTROL = bytes(range(0x20)) + b"\\"


class ChatStream(StreamShape):
    _FIELDS = ("content", "refusal", "reasoning_content", "reasoning")

    def plain_delta(self, block: bytes, at: int) -> tuple[Channel, int, int] | None:
        # Without a backslash there are no escapes: every quote delimits a string and every key
        # is spelled literally, so finding and counting literal keys is exact.
        if (
            len(block.translate(None, _ESCAPE_OR_CONTROL)) != len(block)
            or block.count(b'"delta"') != 1
            or block.count(b'"content"') != 1
            or block.count(b'"index"') != 1  # a second "index" moves the text for the client
            or _NEEDS_PARSE.search(block, at)
        ):
            return None
        match = _PLAIN_CHAT.search(block, at)
        if match is None:
            return None
        return ((int(match.group(1)), "content"), match.start(2), match.end(2))

    def drop_logprobs(self, data: Json, channel: Channel) -> None:
        for position, choice in choices_of(data):
            if choice.get("index", position) == channel[0] and choice.get("logprobs"):
                choice["logprobs"] = None

    def parse(self, event: str | None, data: Json) -> StreamEvent:
        deltas: list[tuple[Channel, TextSlot]] = []
        closes: list[Channel] = []
        for position, choice in choices_of(data):
            index = choice.get("index", position)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in self._FIELDS:
                    if isinstance(delta.get(key), str):
                        deltas.append(((index, key), TextSlot(delta, key, "assistant", key)))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for number, call in enumerate(calls):
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict) and isinstance(
                            function.get("arguments"), str
                        ):
                            channel = (index, "tool", call.get("index", number))
                            slot = TextSlot(function, "arguments", "assistant", "arguments")
                            deltas.append((channel, slot))
                audio = delta.get("audio")
                if isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
                    slot = TextSlot(audio, "transcript", "assistant", "audio.transcript")
                    deltas.append(((index, "audio"), slot))
                function_call = delta.get("function_call")
                if isinstance(function_call, dict) and isinstance(
                    function_call.get("arguments"), str
                ):
                    slot = TextSlot(function_call, "arguments", "assistant", "arguments")
                    deltas.append(((index, "function_call"), slot))
            if choice.get("finish_reason") is not None:
                closes.append((index,))
        return StreamEvent(deltas, closes, [], _usage(data))

    def synthesize(self, channel: Channel, template: Json, text: str) -> Json:
        index, kind = channel[0], channel[1]
        delta: Json
        if kind == "tool":
            delta = {"tool_calls": [{"index": channel[2], "function": {"arguments": text}}]}
        elif kind == "function_call":
            delta = {"function_call": {"arguments": text}}
        elif kind == "audio":
            delta = {"audio": {"transcript": text}}
        else:
            delta = {kind: text}
        event = {k: v for k, v in template.items() if k not in ("choices", "usage")}
        event["choices"] = [
            {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}
        ]
        return event


class CompletionsStream(StreamShape):
    drop_logprobs = ChatStream.drop_logprobs  # the same `choices[].logprobs`

    def parse(self, event: str | None, data: Json) -> StreamEvent:
        deltas: list[tuple[Channel, TextSlot]] = []
        closes: list[Channel] = []
        for position, choice in choices_of(data):
            index = choice.get("index", position)
            if isinstance(choice.get("text"), str):
                deltas.append(((index, "text"), TextSlot(choice, "text", "assistant", "text")))
            if choice.get("finish_reason") is not None:
                closes.append((index,))
        return StreamEvent(deltas, closes, [], _usage(data))

    def synthesize(self, channel: Channel, template: Json, text: str) -> Json:
        event = {k: v for k, v in template.items() if k not in ("choices", "usage")}
        event["choices"] = [
            {"index": channel[0], "text": text, "finish_reason": None, "logprobs": None}
        ]
        return event


def _int(data: Json, key: str) -> int:
    value = data.get(key, 0)
    return value if isinstance(value, int) else 0


def _item_channels(output_index: int, item: Any) -> list[tuple[Channel, TextSlot]]:
    """The channels a whole Responses output item repeats, so snapshots match what streamed."""
    out: list[tuple[Channel, TextSlot]] = []
    if not isinstance(item, dict):
        return out
    kind = item.get("type")
    if kind == "message" and isinstance(item.get("content"), list):
        for index, part in enumerate(item["content"]):
            if isinstance(part, dict):
                for field, name in (("text", "text"), ("refusal", "refusal")):
                    if isinstance(part.get(field), str):
                        slot = TextSlot(part, field, "assistant", "")
                        slot.tokens = (part, [])  # an output_text part's logprobs
                        out.append(((output_index, index, name), slot))
    elif kind in ("function_call", "mcp_call", "mcp_approval_request"):
        if isinstance(item.get("arguments"), str):
            out.append(((output_index, "args"), TextSlot(item, "arguments", "assistant", "")))
        if isinstance(item.get("output"), str):
            out.append(((output_index, "output"), TextSlot(item, "output", "assistant", "")))
    elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
        out.append(((output_index, "input"), TextSlot(item, "input", "assistant", "")))
    elif kind == "code_interpreter_call" and isinstance(item.get("code"), str):
        out.append(((output_index, "code"), TextSlot(item, "code", "assistant", "")))
    elif kind == "reasoning":
        for field, name in (("summary", "summary"), ("content", "reasoning")):
            parts = item.get(field)
            if isinstance(parts, list):
                for index, part in enumerate(parts):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        out.append(
                            ((output_index, name, index), TextSlot(part, "text", "assistant", ""))
                        )
    return out


# The Responses fast path (see ResponsesStream.plain_delta): OpenAI's text delta events
# (`output_text`, `refusal`, `reasoning_summary_text`, `reasoning_text`), member for member.
# Every byte is spelled out, so the event has no escape, duplicate key or other member, and
# its compact JSON is what `json.dumps` writes back: putting a new text between its bytes is
# re-encoding it. Integers are JSON's (no leading zero) and short; the id and the
# `obfuscation` padding are printable ASCII without a quote or backslash.
_PLAIN_RESPONSES = re.compile(
    rb'\{"type":"response\.([a-z_]+)\.delta","sequence_number":(?:0|[1-9][0-9]{0,15}),'
    rb'"item_id":"[\x20\x21\x23-\x5b\x5d-\x7f]*","output_index":(0|[1-9][0-9]{0,8}),'
    rb'"(content|summary)_index":(0|[1-9][0-9]{0,8}),'
    rb'"delta":"([^"\\\x00-\x1f]*)"(?:,"logprobs":\[\])?'
    rb'(?:,"obfuscation":"[\x20\x21\x23-\x5b\x5d-\x7f]*")?\}'
)
# Such an event's kind and index member -> how its channel is named (as `parse` names it).
_PLAIN_KINDS: dict[tuple[bytes, bytes], str] = {
    (b"output_text", b"content"): "text",
    (b"refusal", b"content"): "refusal",
    (b"reasoning_summary_text", b"summary"): "summary",
    (b"reasoning_text", b"content"): "reasoning",
}


class ResponsesStream(StreamShape):
    has_snapshots = True
    plain_events = tuple(b"event: response.%s.delta\n" % kind for kind, _ in _PLAIN_KINDS)
    plain_counter = b',"sequence_number":'
    numbered = True

    def plain_delta(self, block: bytes, at: int) -> tuple[Channel, int, int] | None:
        # `parse` reads `type` (the event line only names it again), and `drop_logprobs` has
        # nothing to drop from an empty list: the text is the only thing the chain needs.
        match = _PLAIN_RESPONSES.fullmatch(block, at)
        if match is None:
            return None
        kind = _PLAIN_KINDS.get((match.group(1), match.group(3)))
        if kind is None:  # another event, or an index `parse` would not read (it reads 0)
            return None
        output, index = int(match.group(2)), int(match.group(4))
        channel = self._channel(
            kind, {"output_index": output, f"{match.group(3).decode()}_index": index}
        )
        return (channel, match.start(5), match.end(5))

    # delta event -> (channel builder, key of the whole text in the matching `.done` event)
    _DELTAS: dict[str, tuple[str, str]] = {
        "response.output_text": ("text", "text"),
        "response.refusal": ("refusal", "refusal"),
        "response.function_call_arguments": ("args", "arguments"),
        "response.mcp_call_arguments": ("args", "arguments"),
        "response.custom_tool_call_input": ("input", "input"),
        "response.code_interpreter_call_code": ("code", "code"),
        "response.reasoning_summary_text": ("summary", "text"),
        "response.reasoning_text": ("reasoning", "text"),
        "response.audio.transcript": ("transcript", "transcript"),
    }
    _WHOLE = frozenset(
        {
            "response.created",
            "response.in_progress",
            "response.queued",
            "response.completed",
            "response.incomplete",
            "response.failed",
        }
    )

    @staticmethod
    def _channel(name: str, data: Json) -> Channel:
        output = _int(data, "output_index")
        if name in ("text", "refusal"):
            return (output, _int(data, "content_index"), name)
        if name == "summary":
            return (output, "summary", _int(data, "summary_index"))
        if name == "reasoning":
            return (output, "reasoning", _int(data, "content_index"))
        return (output, name)

    def parse(self, event: str | None, data: Json) -> StreamEvent:
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = event or ""
        base, _, suffix = kind.rpartition(".")
        known = self._DELTAS.get(base)
        if known is not None:
            name, whole_key = known
            channel = self._channel(name, data)
            if suffix == "delta" and isinstance(data.get("delta"), str):
                return StreamEvent([(channel, TextSlot(data, "delta", "assistant", ""))], [], [])
            if suffix == "done":
                snapshots = []
                if isinstance(data.get(whole_key), str):
                    slot = TextSlot(data, whole_key, "assistant", "")
                    slot.tokens = (data, [])  # `output_text.done` repeats every token
                    snapshots.append((channel, slot))
                return StreamEvent([], [channel], snapshots)
        if kind in ("response.content_part.added", "response.content_part.done"):
            output, index = _int(data, "output_index"), _int(data, "content_index")
            part = data.get("part")
            snaps: list[tuple[Channel, TextSlot]] = []
            if isinstance(part, dict):
                for field in ("text", "refusal"):
                    if isinstance(part.get(field), str):
                        slot = TextSlot(part, field, "assistant", "")
                        slot.tokens = (part, [])
                        snaps.append(((output, index, field), slot))
            closes: list[Channel] = [(output, index)] if kind.endswith("done") else []
            return StreamEvent([], closes, snaps)
        if kind.startswith("response.reasoning_summary_part."):
            output, index = _int(data, "output_index"), _int(data, "summary_index")
            part = data.get("part")
            snaps = []
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                snaps.append(((output, "summary", index), TextSlot(part, "text", "assistant", "")))
            closes = [(output, "summary", index)] if kind.endswith("done") else []
            return StreamEvent([], closes, snaps)
        if kind in ("response.output_item.added", "response.output_item.done"):
            output = _int(data, "output_index")
            closes = [(output,)] if kind.endswith("done") else []
            return StreamEvent([], closes, _item_channels(output, data.get("item")))
        if kind in self._WHOLE:
            response = data.get("response")
            snaps = []
            usage = None
            if isinstance(response, dict):
                items = response.get("output")
                if isinstance(items, list):
                    for position, item in enumerate(items):
                        snaps.extend(_item_channels(position, item))
                usage = _usage(response)
            # Only a finished response ends every channel; created/in_progress come first.
            final = kind in ("response.completed", "response.incomplete", "response.failed")
            return StreamEvent([], [()] if final else [], snaps, usage)
        return StreamEvent([], [], [])

    def drop_logprobs(self, data: Json, channel: Channel) -> None:
        if data.get("logprobs"):
            data["logprobs"] = []

    def synthesize(self, channel: Channel, template: Json, text: str) -> Json:
        event = copy.copy(template)
        event["delta"] = text
        if "logprobs" in event:
            event["logprobs"] = []
        return event


STREAM_SHAPES: dict[str, StreamShape] = {
    CHAT: ChatStream(),
    COMPLETIONS: CompletionsStream(),
    RESPONSES: ResponsesStream(),
}
