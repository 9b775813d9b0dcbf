"""A local OpenAI-compatible upstream for tests, the demo and the benchmark.

Why it exists: the gateway's behaviour towards providers (fallback, timeouts, streaming, what it
forwards) has to be shown against a real HTTP server, not a mock of aiohttp. This one speaks the
parts of the OpenAI API the gateway proxies (chat completions, completions, embeddings,
responses; JSON and SSE), records every request it receives, and can be scripted per request to
delay, stream slowly, fail with 5xx, answer 429, or reset the connection mid-stream.

In tests::

    async with FakeUpstream() as upstream:          # listens on 127.0.0.1:<free port>
        upstream.then(Behavior(status=429))         # the next request gets a 429, then defaults
        ... point a gateway target at upstream.base_url ...
        upstream.received[-1].body                  # what the gateway sent

Standalone: ``python -m tests.support.upstream --port 8080 [--chunk-delay 0.01] [--text ...]``.
By default the answer echoes the last user text (``echo: ...``), so a test can see what reached
the model and what came back.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import signal
import struct
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Behavior:
    """How to answer one request."""

    status: int = 200
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float = 0.0  # seconds between streamed events
    reset_after: int | None = None  # stream: abort after N events; JSON: abort before answering
    text: str | None = None  # the model's answer; default echoes the last user text
    chunks: list[str] | None = None  # exact streamed pieces of the answer
    tool_call: tuple[str, str] | None = None  # answer with a call: (function name, arguments)
    body: dict[str, Any] | None = None  # answer exactly this JSON (with `status`)
    raw: bytes | None = None  # answer exactly these bytes as application/json (with `status`)
    sse: list[bytes] | None = None  # stream exactly these bytes, one write each (to a stream)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    at: float


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def last_user_text(path: str, body: Any) -> str:
    """The text the fake model answers to: the last user message, prompt or input."""
    if not isinstance(body, dict):
        return ""
    if path.endswith("/chat/completions"):
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""
    if path.endswith("/completions"):
        prompt = body.get("prompt")
        return " ".join(prompt) if isinstance(prompt, list) else str(prompt or "")
    if path.endswith("/responses"):
        value = body.get("input")
        if isinstance(value, str):
            return value
        for item in reversed(value or []):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text_of(item.get("content"))
    return ""


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [""]


def _usage(prompt: str, answer: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = len(prompt) // 4 + 1, len(answer) // 4 + 1
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class FakeUpstream:
    def __init__(self, default: Behavior | None = None) -> None:
        self.default = default or Behavior()
        self.script: deque[Behavior] = deque()
        self.received: list[Received] = []
        self.disconnects = 0  # requests whose client went away before the answer was complete
        self.completed = 0
        self._arrivals: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = "127.0.0.1"

    # --- control -----------------------------------------------------------------------------

    def then(self, *behaviors: Behavior) -> FakeUpstream:
        """Answer the next requests with these behaviours, in order, then the default."""
        self.script.extend(behaviors)
        return self

    async def wait_received(self, count: int = 1, within: float = 5.0) -> None:
        """Wait until at least `count` requests have arrived in total."""
        if self._arrivals is None:
            self._arrivals = asyncio.Condition()
        async with self._arrivals:
            await asyncio.wait_for(
                self._arrivals.wait_for(lambda: len(self.received) >= count), within
            )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/{endpoint:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.host = host
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # --- serving -----------------------------------------------------------------------------

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.received.append(
            Received(request.method, request.path, dict(request.headers), raw, body, time.time())
        )
        if self._arrivals is not None:
            async with self._arrivals:
                self._arrivals.notify_all()
        behavior = self.script.popleft() if self.script else self.default
        try:
            response = await self._answer(request, behavior, body)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        return response

    async def _answer(
        self, request: web.Request, behavior: Behavior, body: Any
    ) -> web.StreamResponse:
        if behavior.delay:
            await asyncio.sleep(behavior.delay)
        if behavior.reset_after is not None and not _streaming(body):
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if behavior.raw is not None:
            self.completed += 1
            return web.Response(
                body=behavior.raw,
                status=behavior.status,
                content_type="application/json",
                headers=behavior.headers,
            )
        if behavior.body is not None or behavior.status != 200:
            answer = behavior.body or _error_for(behavior.status)
            self.completed += 1
            return web.json_response(answer, status=behavior.status, headers=behavior.headers)
        path = request.path
        prompt = last_user_text(path, body)
        text = behavior.text if behavior.text is not None else f"echo: {prompt}"
        model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
        if path.endswith("/embeddings"):
            self.completed += 1
            return web.json_response(_embeddings(body, model), headers=behavior.headers)
        if not _streaming(body):
            self.completed += 1
            if path.endswith("/chat/completions"):
                answer = _chat(model, text, prompt, behavior.tool_call)
            elif path.endswith("/responses"):
                answer = _response(model, text, prompt, "completed", behavior.tool_call)
            elif path.endswith("/completions"):
                answer = _completion(model, text, prompt)
            else:
                return web.json_response(_error_for(404), status=404)
            return web.json_response(answer, headers=behavior.headers)
        events = behavior.sse or _stream_events(path, body, model, text, prompt, behavior)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **behavior.headers,
            }
        )
        await response.prepare(request)
        for number, event in enumerate(events):
            if behavior.reset_after is not None and number >= behavior.reset_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if number and behavior.chunk_delay:
                await asyncio.sleep(behavior.chunk_delay)
            await response.write(event)
        await response.write_eof()
        self.completed += 1
        return response


def _streaming(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _error_for(status: int) -> dict[str, Any]:
    kinds = {
        429: ("rate_limit_exceeded", "Rate limit reached for requests"),
        404: ("not_found", "Unknown endpoint"),
        400: ("invalid_request", "The fake upstream refused the request"),
    }
    code, message = kinds.get(status, ("server_error", f"The fake upstream failed ({status})"))
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _chat(model: str, text: str, prompt: str, tool_call: tuple[str, str] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    finish = "stop"
    if tool_call is not None:
        name, arguments = tool_call
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]
        finish = "tool_calls"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(prompt, text),
    }


def _completion(model: str, text: str, prompt: str) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(prompt, text),
    }


def _message_item(text: str, status: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(tool_call: tuple[str, str], arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": "fc_fake",
        "type": "function_call",
        "status": status,
        "call_id": "call_1",
        "name": tool_call[0],
        "arguments": arguments,
    }


def _response(
    model: str,
    text: str,
    prompt: str,
    status: str,
    tool_call: tuple[str, str] | None = None,
    output: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if output is None:
        output = (
            [_call_item(tool_call, tool_call[1], "completed")]
            if tool_call
            else [_message_item(text, "completed")]
        )
    usage = _usage(prompt, text)
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if status == "completed"
        else None,
    }


def _embeddings(body: Any, model: str) -> dict[str, Any]:
    inputs = body.get("input") if isinstance(body, dict) else None
    items = inputs if isinstance(inputs, list) else [inputs]
    as_base64 = isinstance(body, dict) and body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = [float(len(str(item)) % 7), 0.5, -0.25]
        embedding: Any = (
            base64.b64encode(struct.pack("<3f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(str(item)) // 4 + 1 for item in items)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    # Compact, UTF-8 JSON, as OpenAI streams it (and what the sidecar's fast path reads).
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{head}data: {body}\n\n".encode()


def _stream_events(
    path: str, body: dict[str, Any], model: str, text: str, prompt: str, behavior: Behavior
) -> list[bytes]:
    pieces = behavior.chunks if behavior.chunks is not None else _pieces(text)
    created = int(time.time())
    if path.endswith("/chat/completions"):
        return _chat_events(body, model, text, prompt, pieces, created, behavior)
    if path.endswith("/responses"):
        return _responses_events(model, text, prompt, pieces, behavior)
    base = {"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model}
    events = [
        _sse(
            {**base, "choices": [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}]}
        )
        for p in pieces
    ]
    events.append(
        _sse(
            {
                **base,
                "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}],
            }
        )
    )
    events.append(b"data: [DONE]\n\n")
    return events


def _chat_events(
    body: dict[str, Any],
    model: str,
    text: str,
    prompt: str,
    pieces: list[str],
    created: int,
    behavior: Behavior,
) -> list[bytes]:
    tool_call = behavior.tool_call
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    if tool_call is not None:
        name, arguments = tool_call
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        arg_pieces = _arg_pieces(arguments, behavior.chunks)
        events.extend(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in arg_pieces
        )
        events.append(chunk({}, "tool_calls"))
    else:
        events.extend(chunk({"content": p}) for p in pieces)
        events.append(chunk({}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append(_sse({**base, "choices": [], "usage": _usage(prompt, text)}))
    events.append(b"data: [DONE]\n\n")
    return events


def _arg_pieces(text: str, explicit: list[str] | None) -> list[str]:
    return explicit if explicit is not None else [text[i : i + 5] for i in range(0, len(text), 5)]


def _responses_events(
    model: str, text: str, prompt: str, pieces: list[str], behavior: Behavior
) -> list[bytes]:
    tool_call = behavior.tool_call
    sequence = iter(range(10_000))
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(_sse({"type": kind, "sequence_number": next(sequence), **fields}, kind))

    emit("response.created", response=_response(model, "", prompt, "in_progress", output=[]))
    emit("response.in_progress", response=_response(model, "", prompt, "in_progress", output=[]))
    if tool_call is not None:
        _name, arguments = tool_call
        emit(
            "response.output_item.added",
            output_index=0,
            item=_call_item(tool_call, "", "in_progress"),
        )
        for piece in _arg_pieces(arguments, behavior.chunks):
            emit(
                "response.function_call_arguments.delta",
                item_id="fc_fake",
                output_index=0,
                delta=piece,
            )
        emit(
            "response.function_call_arguments.done",
            item_id="fc_fake",
            output_index=0,
            arguments=arguments,
        )
        item = _call_item(tool_call, arguments, "completed")
        emit("response.output_item.done", output_index=0, item=item)
        emit(
            "response.completed",
            response=_response(model, text, prompt, "completed", output=[item]),
        )
        return events
    empty = {"type": "output_text", "text": "", "annotations": []}
    emit(
        "response.output_item.added",
        output_index=0,
        item={**_message_item("", "in_progress"), "content": []},
    )
    emit(
        "response.content_part.added",
        item_id="msg_fake",
        output_index=0,
        content_index=0,
        part=empty,
    )
    for piece in pieces:
        emit(
            "response.output_text.delta",
            item_id="msg_fake",
            output_index=0,
            content_index=0,
            delta=piece,
            logprobs=[],
        )
    emit(
        "response.output_text.done",
        item_id="msg_fake",
        output_index=0,
        content_index=0,
        text=text,
        logprobs=[],
    )
    emit(
        "response.content_part.done",
        item_id="msg_fake",
        output_index=0,
        content_index=0,
        part={**empty, "text": text},
    )
    item = _message_item(text, "completed")
    emit("response.output_item.done", output_index=0, item=item)
    emit("response.completed", response=_response(model, text, prompt, "completed", output=[item]))
    return events


@contextmanager
def upstream_process(log_path: Path, text: str = "hi") -> Iterator[str]:
    """This fake upstream as a child process on a free loopback port (for a sidecar or an
    operator in another process); yields its base URL once it accepts connections."""
    import socket
    import sys

    from processes import free_port, spawn, stop_processes, wait_until_ready

    port = free_port()
    argv = [sys.executable, "-m", "tests.support.upstream", "--port", str(port), "--text", text]
    proc = spawn(argv, log_path, cwd=Path(__file__).resolve().parents[2])
    procs = [("fake upstream", proc)]
    try:
        wait_until_ready(
            proc,
            lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0,
            "fake upstream",
            log_path,
            timeout=20,
        )
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_processes(procs, grace=10)


async def _serve(host: str, port: int, default: Behavior) -> None:
    upstream = FakeUpstream(default)
    await upstream.start(host, port)
    print(f"fake upstream listening on {upstream.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await upstream.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--text", default=None, help="fixed answer instead of the echo")
    args = parser.parse_args(argv)
    behavior = Behavior(delay=args.delay, chunk_delay=args.chunk_delay, text=args.text)
    asyncio.run(_serve(args.host, args.port, behavior))


if __name__ == "__main__":
    main()
