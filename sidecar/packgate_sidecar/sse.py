"""Server-sent events: split an upstream byte stream into events and run the chain over them.

Why it exists: streamed completions must reach the client as they arrive, yet every delta has to
pass the policies' stream filters. `StreamRewriter` does that one event at a time: it feeds each
text delta to its channel's filters, sends what they release, flushes what they held back before
the event that ends a channel (as a synthesized delta event of the same kind, numbered in
turn where the stream numbers its events: sse_numbers.py), and keeps the
Responses API's repeated whole texts (`.done` events, the final `response.completed`) equal to
what was actually streamed, so no snapshot leaks the unfiltered text.

Cost: events go out byte for byte unless a policy changed their text. The common chat event (one
choice, one `content` string, nothing else to check) is read without parsing its JSON
(`StreamShape.plain_delta`) and, when its text changed, the new text is spliced into its bytes;
the events after it are compared with its bytes around their text (its frame; a last string
member such as OpenAI's `obfuscation` padding may differ, see sse_frames.py): a chunk that is
one such event (a provider trickling its events) is read with one compiled scan, and
consecutive such events of one channel (an upstream chunk often holds dozens) go through the
filters as one text, one call per filter instead of one per event, unless a filter may block
(`StreamFilter.may_block`: then the events before the blocking one must still go out). An empty
text is not fed to the filters. The Responses API's text delta events as OpenAI sends them
(`output_text`, `refusal`, `reasoning_summary_text`, `reasoning_text`: an `event:` line naming
it, then its data) are read the same way (`ResponsesStream.plain_delta` spells out every byte
of them), so their text reaches the filters and the whole-text bookkeeping
(`_sent`) without a parse, and a changed text is spliced in where the full path would re-encode
the same bytes. Its frame also pauses at the event's `sequence_number`, an integer that changes
from event to event (`StreamShape.plain_counter`); such numbered events are filtered one by one,
not joined, so each carries exactly the text the full parse would give it and the stream is
byte for byte the full parse's. Every other event is parsed in full. When a text changes, the
event's `logprobs` (which spell out the original tokens) are dropped.

SSE conformance (the WHATWG rules): lines end in LF, CRLF or CR; comment lines (`:`) and fields
other than `event` and `data` are ignored; a block without data dispatches nothing. A comment-only
block is passed on as a bare `:` keep-alive (its text never reaches the client), and an event
whose data is empty is dropped: it carries nothing to check, and the OpenAI SDK would fail to
decode it.
"""

from __future__ import annotations

import json
from typing import Any

from . import strict_json
from .chain import StreamBlocked, StreamPolicies
from .policy import RequestContext
from .shapes import Channel
from .sse_frames import PLAIN_INTEGER, PLAIN_VALUE, frame_seek, frame_texts
from .sse_numbers import NUMBER_KEY, number_of, numbered, renumber
from .sse_wire import (
    KEEP_ALIVE,
    UnreadableEvent,
    canonical,
    encode_event,
    json_text,
    lf,
    parse_block,
    reframed,
    splice,
    split_events,
    utf8,
)
from .stream_shapes import StreamShape


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
        # A channel's last event: parsed (event name, JSON) or, for a plain delta event, the
        # bytes around its text (one of the two per channel, whichever came last).
        self._templates: dict[Channel, tuple[str | None, dict[str, Any]]] = {}
        self._frames: dict[Channel, tuple[bytes, bytes]] = {}
        # What each channel streamed, in pieces (joined when a snapshot needs it: appending to
        # one string would copy the whole text again for every delta of a long answer).
        self._emitted: dict[Channel, list[str]] = {}
        # The last plain delta event around its text: (bytes before, up to an integer that may
        # change from event to event when there is one, bytes after that integer or b"" when
        # there is none, bytes after the text up to a last string value that may change from
        # event to event, bytes after that value or b"" when there is none, channel); see
        # sse_frames.py.
        self._frame: tuple[bytes, bytes, bytes, bytes, Channel] | None = None
        # Numbered streams (`StreamShape.numbered`): how many events this rewriter added so far,
        # so how much higher every later event's number goes out (sse_numbers.py), and the
        # number of the last event parsed in full.
        self._shift = 0
        self._parsed_number: int | None = None

    def feed(self, chunk: bytes, first: bool = False) -> bytes:
        """Bytes to send for this upstream chunk; raises StreamBlocked or UnreadableEvent.

        With `first`, return as soon as one event produced bytes and keep the other complete
        events for the next call (`feed(b"")`): the client gets its first bytes without waiting
        for the whole chunk to be checked.
        """
        if self._frame is not None and not self._rest:
            head, mid, tail, suffix, channel = self._frame
            if chunk.startswith(head) and chunk.endswith(b"\n\n"):
                texts, stop = frame_texts(chunk, 0, head, tail, suffix, mid)
                if stop == len(chunk) and len(texts) == 1:
                    # What a provider trickling its events sends: one event, in the last plain
                    # event's frame.
                    start = self._text_at(chunk, 0) if mid else len(head)
                    return self._moved(self._framed(chunk, texts[0], start, channel))
        data = lf(self._rest + chunk)
        out: list[bytes] = []
        at = 0
        try:
            while True:
                texts, stop = ([], at) if first else self._frame_events(data, at)
                if not texts:
                    stop = data.find(b"\n\n", at)
                    if stop < 0:
                        break
                    block = data[at:stop]
                    if first or self._plain_span(block) is None:
                        at = stop + 2
                        if block.strip(b"\n"):
                            out.append(self._event(block, plain_tried=not first))
                            if first and out[-1]:
                                break
                        continue
                    # A plain event: it is the frame now, and starts a run in that frame.
                    texts, stop = self._frame_events(data, at)
                    assert texts, "a plain event reads as its own frame"
                out.append(self._moved(self._frame_run(data, at, texts, stop)))
                at = stop
        except StreamBlocked as blocked:
            blocked.partial = b"".join(out) + self._moved(blocked.partial)
            raise
        self._rest = data[at:]
        return b"".join(out)

    def end(self) -> bytes:
        """The upstream finished: process a last unterminated event and flush every channel."""
        out = b""
        blocks, _ = split_events(self._rest + b"\n\n")
        self._rest = b""
        for block in blocks:
            out += self._event(block)
        if self.policies is not None:
            out += self._flush([()], set())
        return out

    def _event(self, block: bytes, plain_tried: bool = False) -> bytes:
        """One event block's bytes to send. `plain_tried`: the caller found it is no plain
        delta event (`_plain_span`), so that is not asked again."""
        name: str | None
        if block.startswith(b"data: ") and b"\n" not in block:
            if block == b"data: [DONE]":
                self.saw_done = True
                return (self._flush([()], set()) if self.policies else b"") + block + b"\n\n"
            if not plain_tried:
                plain = self._plain_delta(block, 6)
                if plain is not None:
                    return self._moved(self._plain(block, *plain))
            # One `data:` line: what parse_block would read, without splitting lines.
            name, body = None, block[6:]
            data = utf8(body)
            raw = block + b"\n\n"
        else:
            at = -1 if plain_tried else self._data_at(block)
            if at > 0:  # an `event:` line the shape's plain events open with, then `data: `
                plain = self._plain_delta(block, at)
                if plain is not None:
                    return self._moved(self._plain(block, *plain))
            try:
                name, found = parse_block(block)
            except UnicodeDecodeError:
                raise UnreadableEvent("upstream sent an event that is not UTF-8") from None
            if found is None:
                # Comments, ids, retry hints: nothing to dispatch. Keep the connection warm only.
                return KEEP_ALIVE if block.startswith(b":") else b""
            data, body = found, found.encode()
            raw = block + b"\n\n" if canonical(block) else reframed(name, data)
        stripped = data.strip()
        if not stripped:
            return b""
        if stripped == "[DONE]":
            self.saw_done = True
            return (self._flush([()], set()) if self.policies else b"") + raw
        try:
            # Strict for the reason whole answers are (strict_json.py): an event no policy
            # rewrote goes out as the provider's bytes, so the chain must read them the only way.
            obj = strict_json.loads(body, "The provider's stream event")
        except strict_json.JsonRefused as refused:
            raise UnreadableEvent(refused.message) from None
        if not isinstance(obj, dict):
            raise UnreadableEvent("upstream sent an event that is not a JSON object")
        if obj.get("error"):
            # The provider's own error event; held-back text is dropped, the error goes through.
            return self._moved(raw)
        number = None
        if self.shape.numbered:
            number = obj.get(NUMBER_KEY)
            if type(number) is not int:
                number = None
            elif self._parsed_number is None or number > self._parsed_number:
                self._parsed_number = number
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
        out = self._flush(parsed.closes, delta_channels, number) if parsed.closes else b""
        for channel, slot in parsed.deltas:
            original = slot.get()
            text = policies.feed(channel, original)
            if parsed.closes and _matches(channel, parsed.closes):
                text += policies.finish(channel)
            if text != original:
                slot.set(text)
                self.shape.drop_logprobs(obj, channel)
                changed = True
            self._templates[channel] = (name, obj)
            self._frames.pop(channel, None)
            self._sent(channel, text)
        for channel, slot in parsed.snapshots:
            current = slot.get()
            wanted = self._streamed(channel)
            if wanted is None:
                wanted = policies.oneshot(current) if current else current
                self._emitted[channel] = [wanted]
            if wanted != current:
                slot.set(wanted)
                changed = True
        return out + self._moved(encode_event(name, obj) if changed else raw)

    def _plain_span(self, block: bytes) -> tuple[Channel, int, int] | None:
        """The fast path's reading of a chat delta event (`StreamShape.plain_delta`); a plain
        event also becomes the frame that the events after it are compared with."""
        at = self._data_at(block)
        if at < 0:
            return None
        found = self._plain_delta(block, at)
        if found is not None:
            channel, start, end = found
            head, mid = block[:start], b""
            counter = self.shape.plain_counter
            # The shape's counter member (`"sequence_number":N`) may change from event to
            # event: the frame pauses at its integer and resumes after it.
            number = head.find(counter, at) if counter is not None else -1
            if number >= 0 and counter is not None:
                number += len(counter)
                digits = PLAIN_INTEGER.match(head, number)
                if digits is not None and not head[digits.end() : digits.end() + 1].isdigit():
                    head, mid = head[:number], head[digits.end() :]
            after = block[end:]
            # A last member whose value is a plain string (`"obfuscation":"..."}`) may change
            # from event to event: the frame ends before that value and resumes after it.
            value = after.rfind(b'":"') + 3
            if (
                value > 2
                and after.endswith(b'"}')
                and PLAIN_VALUE.fullmatch(after, value, len(after) - 2)
            ):
                self._frame = (head, mid, after[:value], b'"}', channel)
            else:
                self._frame = (head, mid, after, b"", channel)
        return found

    def _data_at(self, block: bytes) -> int:
        """Where the JSON of a block that may be a plain delta event starts: after `data: ` when
        the block is that one line, or one of the shape's `plain_events` lines and that; else -1.
        (parse_block reads the same name and data from such a block, and `canonical` holds.)"""
        if block.startswith(b"data: "):
            return -1 if b"\n" in block else 6
        named = self.shape.plain_events
        if not named or not block.startswith(named):
            return -1
        at = block.index(b"\n") + 1  # each of them is one line with its LF
        if not block.startswith(b"data: ", at) or block.find(b"\n", at) >= 0:
            return -1
        return at + 6

    def _plain_delta(self, block: bytes, at: int) -> tuple[Channel, int, int] | None:
        """`StreamShape.plain_delta` of a block `_data_at` found, when it is UTF-8 throughout:
        such an event goes out as its bytes, so bytes the full parse would refuse must not pass
        outside its text either (the events read in its frame repeat its checked bytes)."""
        found = self.shape.plain_delta(block, at)
        if found is not None and not block.isascii():
            try:
                block.decode()
            except UnicodeDecodeError:
                return None  # the full parse refuses it
        return found

    def _frame_events(self, data: bytes, at: int) -> tuple[list[bytes], int]:
        """The texts of the complete events from `at` on that are the frame around another
        plain text (`sse_frames.frame_texts`): a stream's delta events differ only in their
        text, so an event made of the last plain one's bytes around a text without quotes,
        backslashes or control characters (which could change the JSON around it) is plain on
        the same channel. Also returns where the run ends."""
        if self._frame is None:
            return [], at
        head, mid, tail, suffix, _ = self._frame
        return frame_texts(data, at, head, tail, suffix, mid)

    def _text_at(self, data: bytes, at: int) -> int:
        """Where the text of the frame event at data[at] starts (after its integer, if any)."""
        assert self._frame is not None
        head, mid = self._frame[0], self._frame[1]
        if not mid:
            return at + len(head)
        # The integer is digits only and `mid` does not start with one: its first match.
        return data.index(mid, at + len(head)) + len(mid)

    def _frame_run(self, data: bytes, at: int, texts: list[bytes], stop: int) -> bytes:
        """Consecutive plain delta events of one channel (as one upstream chunk brings them,
        data[at:stop]), filtered as one text: one pass of each filter instead of one per event.
        The events keep their number and order, and what they carry together is what the
        filters released. Returns the bytes to send.
        """
        assert self._frame is not None
        head, mid, tail, suffix, channel = self._frame
        policies = self.policies
        # Numbered events (`mid`: the Responses API's) go through the filters one by one, so
        # each carries exactly what the full parse would put in it, byte for byte.
        if len(texts) == 1 or (policies is not None and (mid or not policies.joinable(channel))):
            return self._plain_each(data, at, texts, channel)
        joined = b"".join(texts)
        ascii_only = joined.isascii()
        if policies is None:
            if ascii_only:
                self.ctx.output_chars += len(joined)
            else:  # counted event by event up to one that is not UTF-8, as the full parse does
                for text in texts:
                    self.ctx.output_chars += len(utf8(text))
            return data[at:stop]
        pieces = None if ascii_only else list(map(utf8, texts))
        whole = joined.decode() if pieces is None else "".join(pieces)
        released = policies.feed(channel, whole)
        self._frames[channel] = (head, tail + suffix)  # a varying value left empty
        self._templates.pop(channel, None)
        self._sent(channel, released)
        if released == whole:
            return data[at:stop]
        # The events go out as they came while the released text starts with their texts; the
        # first that differs (or the last) carries the rest of it, the events after it none.
        shared = len(released) if whole.startswith(released) else _shared(released, whole)
        number, before, event = frame_seek(data, at, len(texts), len(head), shared)
        changed = splice(
            data[event : data.index(b"\n\n", event + len(head) + len(texts[number]))],
            len(head),
            len(head) + len(texts[number]),
            released[before:],
        )
        empty = (head + tail + suffix + b"\n\n") * (len(texts) - number - 1)
        return data[at:event] + changed + empty

    def _plain_each(self, data: bytes, at: int, texts: list[bytes], channel: Channel) -> bytes:
        """A run event by event: a filter that may block sees each delta alone, and the events
        before the one it blocks on still go out."""
        assert self._frame is not None
        head, mid = self._frame[0], self._frame[1]
        policies = self.policies
        start = len(head)
        out: list[bytes] = []
        if policies is None:
            for text in texts:
                if mid:  # as _text_at
                    start = data.index(mid, at + len(head)) + len(mid) - at
                stop = data.index(b"\n\n", at + start + len(text))
                out.append(self._plain(data[at:stop], channel, start, start + len(text)))
                at = stop + 2
            return b"".join(out)
        # `_plain` for each event, inline (a stream's text events mostly arrive in such runs):
        # the same texts fed, counted and spliced in; the channel's frame is the last event's.
        ctx, feed = self.ctx, policies.feed
        pieces = self._emitted.get(channel)
        last = None
        try:
            for text in texts:
                if mid:  # as _text_at
                    start = data.index(mid, at + len(head)) + len(mid) - at
                end = at + start + len(text)
                stop = data.index(b"\n\n", end)
                original = utf8(text)
                released = feed(channel, original) if original else original
                last = (at, start, end, stop)
                ctx.output_chars += len(released)
                if self.shape.has_snapshots:
                    if pieces is None:
                        pieces = self._emitted[channel] = []
                    pieces.append(released)
                if released == original:
                    out.append(data[at : stop + 2])
                else:
                    out.append(data[at : at + start] + json_text(released) + data[end : stop + 2])
                at = stop + 2
        except StreamBlocked as blocked:
            blocked.partial = b"".join(out)
            raise
        finally:
            if last is not None:
                event, start, end, stop = last
                self._frames[channel] = (data[event : event + start], data[end:stop])
                self._templates.pop(channel, None)
        return b"".join(out)

    def _framed(self, event: bytes, raw: bytes, start: int, channel: Channel) -> bytes:
        """`_plain` for a whole event (with its blank line) in the frame of `channel`, whose
        text `raw` starts at `start`: every delta of a trickling provider takes this path."""
        original = utf8(raw)
        policies = self.policies
        if policies is None:
            self.ctx.output_chars += len(original)
            return event
        text = policies.feed(channel, original) if original else original
        head, rest = event[:start], event[start + len(raw) :]
        self._frames[channel] = (head, rest[:-2])
        self._templates.pop(channel, None)
        self._sent(channel, text)
        if text == original:
            return event
        return head + json_text(text) + rest

    def _plain(self, block: bytes, channel: Channel, start: int, end: int) -> bytes:
        """An event whose only text is block[start:end], a JSON string without escapes."""
        original = utf8(block[start:end])
        if self.policies is None:
            self.ctx.output_chars += len(original)
            return block + b"\n\n"
        text = self.policies.feed(channel, original) if original else original
        self._frames[channel] = (block[:start], block[end:])
        self._templates.pop(channel, None)
        self._sent(channel, text)
        if text == original:
            return block + b"\n\n"
        return splice(block, start, end, text)

    def _flush(
        self, prefixes: list[Channel], skip: set[Channel], before: int | None = None
    ) -> bytes:
        """Events carrying what the filters held back of the channels that end here. In a
        numbered stream each takes the number of the event it goes out before (`before`; at the
        stream's end, the next one) and the events after it move up one (`_moved`)."""
        assert self.policies is not None
        out = b""
        for channel in self.policies.open_channels():
            if channel in skip or not _matches(channel, prefixes):
                continue
            rest = self.policies.finish(channel)
            event = self._synthesized(channel, rest) if rest else b""
            if event:
                if self.shape.numbered:
                    if before is None:
                        before = self._highest_number() + 1
                    event = numbered(event, before + self._shift)
                    self._shift += 1
                out += event
                self._sent(channel, rest)
        return out

    def _moved(self, data: bytes) -> bytes:
        """The provider's events in `data` with their numbers as they go out: as they came
        until this rewriter added an event, then one higher for each event it added."""
        return renumber(data, self._shift) if self._shift else data

    def _highest_number(self) -> int:
        """The highest number the provider gave an event so far: every numbered event was
        parsed in full or is its channel's last plain event (its frame or template)."""
        found = [number_of(head) for head, _ in self._frames.values()]
        found += [template.get(NUMBER_KEY) for _, template in self._templates.values()]
        found.append(self._parsed_number)
        return max((n for n in found if type(n) is int), default=-1)

    def _synthesized(self, channel: Channel, text: str) -> bytes:
        """An event carrying `text` for `channel`, modelled on the channel's last event: a plain
        delta event's bytes around the new text (it carries nothing else), or else a new event
        from the shape (`StreamShape.synthesize`)."""
        frame = self._frames.get(channel)
        if frame is not None:
            head, tail = frame
            if b'"role":' not in head:  # the first event's role is not repeated
                return splice(head + tail, len(head), len(head), text)
            name, template = None, json.loads(head[6:] + tail)
        elif channel in self._templates:
            name, template = self._templates[channel]
        else:
            return b""
        return encode_event(name, self.shape.synthesize(channel, template, text))

    def _sent(self, channel: Channel, text: str) -> None:
        self.ctx.output_chars += len(text)
        if self.shape.has_snapshots:
            pieces = self._emitted.get(channel)
            if pieces is None:
                self._emitted[channel] = [text]
            else:
                pieces.append(text)

    def _streamed(self, channel: Channel) -> str | None:
        """The whole text `channel` streamed so far, or None when it streamed nothing."""
        pieces = self._emitted.get(channel)
        if pieces is None:
            return None
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        return pieces[0]


def _shared(first: str, second: str) -> int:
    """How many leading characters the two strings share (a binary search over slices)."""
    low, high = 0, min(len(first), len(second))  # first[:low] == second[:low]; at most high
    while low < high:
        middle = (low + high + 1) // 2
        if first.startswith(second[low:middle], low):
            low = middle
        else:
            high = middle - 1
    return low
