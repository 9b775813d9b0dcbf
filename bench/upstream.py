"""The benchmark's OpenAI-compatible upstream: real chat-completion JSON and SSE, almost free.

Why not tests/support/upstream.py: that one is built for tests (it parses every body, records
every request forever, and is scripted per request), so under load it would cost as much CPU as
the proxies it feeds and its memory would grow with the run. To measure proxy overhead the
upstream must be far cheaper than any proxy: this one is a bare asyncio protocol on uvloop that
answers from bytes prepared at start-up. The answers are still the real wire format: a
`chat.completion` object with `usage`, or a `text/event-stream` of `chat.completion.chunk`
events (chunked transfer encoding) ending in `data: [DONE]`, so the OpenAI SDK, LiteLLM and
packgate all parse them as they would a provider's; every delta event carries the random
`obfuscation` padding OpenAI adds by default. The answer text carries an e-mail address,
so response-side PII redaction has work to do too, and the prompt's case tag (see
`payloads.tag`): when a request carries another tag than the default, the answer carries it too,
written over the prepared bytes (same length), so under `loadgen --vary` no answer repeats either.

It keeps only the last request body (for the harness's check that the seed chain redacted the
prompt before it left the proxy), served at `GET /_bench/last`.

    python bench/upstream.py --port 8080 [--event-gap-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import string
import sys
import time
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script by the harness: bench.payloads importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.payloads import TAG_DEFAULT, TAG_PREFIX

ANSWER = (
    "Thanks, I have the details. I opened ticket 48213 for the billing team and they will write "
    "to you at jordan.miles@example.org within one business day. Until then the disputed charge "
    "stays on hold and no late fee applies. If anything changes, reply to this thread and quote "
    "the ticket number and case aaaaaaa so we can find it quickly. Have a good afternoon."
)
MODEL = "gpt-4o"


def _pieces(text: str, size: int = 4) -> list[str]:
    """Token-sized pieces (about 4 characters, like a real model's stream)."""
    words = text.split(" ")
    out: list[str] = []
    for index, word in enumerate(words):
        word = word if index == 0 else " " + word
        out += [word[i : i + size] for i in range(0, len(word), size)]
    return out


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 260, "completion_tokens": 64, "total_tokens": 324}


def json_answer(created: int) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def stream_events(created: int) -> list[bytes]:
    base: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }

    padding = random.Random(created)

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        # OpenAI pads every delta event by default (stream_options.include_obfuscation) with
        # random characters that even out the events' sizes against length side channels.
        size = max(2, 16 - len(delta.get("content") or ""))
        pad = "".join(padding.choices(string.ascii_letters + string.digits, k=size))
        payload = json.dumps(
            {**base, "choices": [choice], "obfuscation": pad}, separators=(",", ":")
        )
        return f"data: {payload}\n\n".encode()

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": piece}) for piece in _pieces(ANSWER)]
    events.append(event({}, "stop"))
    usage = json.dumps({**base, "choices": [], "usage": _usage()}, separators=(",", ":"))
    events.append(f"data: {usage}\n\n".encode())
    events.append(b"data: [DONE]\n\n")
    return events


def responses_stream_events(created: int) -> list[bytes]:
    """The same answer as a Responses API stream (`POST /v1/responses`, `stream: true`), in the
    layout OpenAI sends: each event named on an `event:` line, numbered by `sequence_number`,
    text deltas padded with `obfuscation`, then the whole text repeated by the `.done` events
    and the final `response.completed` snapshot."""
    padding = random.Random(created)
    item_id = "msg_68b5ebae5a708196b74b94f22ca8995e0698ecbf1b9f2704"
    number = 0

    def event(data: dict[str, Any]) -> bytes:
        nonlocal number
        payload = json.dumps(
            {"type": data["type"], "sequence_number": number, **data}, separators=(",", ":")
        )
        number += 1
        return f"event: {data['type']}\ndata: {payload}\n\n".encode()

    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    item = {"id": item_id, "type": "message", "status": "in_progress", "content": [],
            "role": "assistant"}  # fmt: skip
    response: dict[str, Any] = {
        "id": "resp_bench", "object": "response", "created_at": created, "status": "in_progress",
        "model": MODEL, "output": [], "usage": None,
    }  # fmt: skip
    events = [event({"type": "response.created", "response": response})]
    events.append(event({"type": "response.in_progress", "response": response}))
    events.append(event({"type": "response.output_item.added", "output_index": 0, "item": item}))
    events.append(event({"type": "response.content_part.added", **where, "part": part}))
    for piece in _pieces(ANSWER):
        size = max(2, 16 - len(piece))
        pad = "".join(padding.choices(string.ascii_letters + string.digits, k=size))
        delta = {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        events.append(event({**delta, "obfuscation": pad}))
    events.append(
        event({"type": "response.output_text.done", **where, "text": ANSWER, "logprobs": []})
    )
    done_part = {**part, "text": ANSWER}
    events.append(event({"type": "response.content_part.done", **where, "part": done_part}))
    done_item = {**item, "status": "completed", "content": [done_part]}
    events.append(
        event({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    )
    usage = {"input_tokens": 260, "output_tokens": 64, "total_tokens": 324}
    final = {**response, "status": "completed", "output": [done_item], "usage": usage}
    events.append(event({"type": "response.completed", "response": final}))
    return events


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    def __init__(self, event_gap: float) -> None:
        created = int(time.time())
        body = json_answer(created)
        self.json = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"x-request-id: req_bench\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"x-request-id: req_bench\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.events = [_chunk(e) for e in stream_events(created)]
        self.stream_head = head + self.events[0]
        self.stream_whole = head + b"".join(self.events) + b"0\r\n\r\n"
        models = json.dumps(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": created, "owned_by": "bench"}],
            }
        ).encode()
        self.models = _plain(200, models)
        self.not_found = _plain(404, b'{"error":{"message":"not found","type":"not_found"}}')
        self.event_gap = event_gap
        self.last = b""
        self.served = 0


def _plain(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 411: b"Length Required"}[status]
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        content_type,
        len(body),
        body,
    )


class Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length request bodies, no pipelining needed."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding:" in head:
                self._send(_plain(411, b'{"error":{"message":"send Content-Length"}}'))
                assert self.transport is not None
                self.transport.close()
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        answers = self.answers
        line = head[: head.find(b"\r\n")]
        if line.startswith(b"post /v1/chat/completions"):
            answers.last = body
            answers.served += 1
            at = body.find(TAG_PREFIX) + len(TAG_PREFIX)
            value = body[at : at + len(TAG_DEFAULT)]
            fresh = at >= len(TAG_PREFIX) and value != TAG_DEFAULT and value.isalpha()
            if b'"stream":true' in body or b'"stream": true' in body:
                if answers.event_gap > 0:
                    asyncio.get_running_loop().create_task(self._slow_stream())
                elif fresh:  # the tag's word is streamed as two pieces, " aaa" and "aaaa"
                    whole = answers.stream_whole.replace(b'" aaa"', b'" ' + value[:3] + b'"')
                    self._send(whole.replace(b'"aaaa"', b'"' + value[3:] + b'"'))
                else:
                    self._send(answers.stream_whole)
            elif fresh:
                self._send(answers.json.replace(b"case " + TAG_DEFAULT, b"case " + value))
            else:
                self._send(answers.json)
        elif line.startswith(b"get /v1/models"):
            self._send(answers.models)
        elif line.startswith(b"get /_bench/last"):
            self._send(_plain(200, answers.last or b"{}"))
        elif line.startswith((b"get /health", b"get /_bench/health")):
            self._send(_plain(200, b'{"status":"ok","served":%d}' % answers.served))
        else:
            self._send(answers.not_found)
        if b"\r\nconnection: close" in head and self.transport is not None:
            self.transport.close()

    async def _slow_stream(self) -> None:
        answers = self.answers
        self._send(answers.stream_head)
        for event in answers.events[1:]:
            await asyncio.sleep(answers.event_gap)
            self._send(event)
        self._send(b"0\r\n\r\n")

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(host: str, port: int, event_gap: float) -> None:
    answers = Answers(event_gap)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(answers), host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"bench upstream listening on http://{host}:{port}/v1", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--event-gap-ms", type=float, default=0.0, help="pause between streamed events"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.event_gap_ms / 1000))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(args.host, args.port, args.event_gap_ms / 1000))


if __name__ == "__main__":
    main()
