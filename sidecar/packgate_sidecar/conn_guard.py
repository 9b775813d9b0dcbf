"""Client connection limits the HTTP server lacks: a cap, a header-read timeout, an idle timeout.

Why it exists: aiohttp keeps a connection open for an hour by default and has no deadline for
reading request headers, so 2,000 idle sockets or slowloris clients (sending a header byte every
few seconds) all stay open and use up file descriptors and memory. nginx and Envoy bound these
with `client_header_timeout`, `keepalive_timeout` and `worker_connections`; this module does the
same by wrapping each aiohttp protocol in a thin `asyncio.Protocol` that counts bytes, and by
sweeping the open connections periodically:

- at most `max_connections` at once; one more gets an OpenAI-shaped `503` and is closed;
- a connection with no request in progress is closed when it has been idle for `idle_timeout`,
  or when bytes of a next request have started arriving but its headers have not completed
  within `header_timeout` (counted from the accept, or from the end of the previous request).

A request in progress is not this module's business: its body has the gateway's body timeout
and its upstream call the provider timeouts.

It also makes the errors aiohttp answers by itself, before any handler runs (a malformed request
line, a header over 8 KiB, broken chunked framing), OpenAI-shaped JSON like every other error,
and logs them by type only (aiohttp's own message may quote the bytes the client sent).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .logs import get_logger, log

_log = get_logger("http")

_BODY = json.dumps(
    {
        "error": {
            "type": "service_unavailable",
            "code": "too_many_connections",
            "message": "The sidecar has reached its connection limit (--max-connections)",
            "param": None,
        }
    }
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)


class _OpenAIErrors(RequestHandler):
    """aiohttp's connection handler, with its own error answers in the OpenAI shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log(_log, 30, "malformed HTTP request", status=status, error=type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        code = "bad_http_request" if 400 <= status < 500 else "internal_error"
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        body = {
            "error": {
                "type": "invalid_request_error" if status < 500 else "api_error",
                "code": code,
                "message": f"The HTTP request could not be parsed ({status} {phrase})",
                "param": None,
            }
        }
        response = web.Response(
            status=status, body=json.dumps(body).encode(), content_type="application/json"
        )
        response.force_close()
        return response


def _handler(server: Any) -> Any:
    """What `aiohttp.web.Server.__call__` builds, with `_OpenAIErrors` as the class."""
    try:
        return _OpenAIErrors(server, loop=server._loop, **server._kwargs)
    except (AttributeError, TypeError):  # an aiohttp that changed its internals: plain errors
        return server()


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout: float, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.open: set[_Guarded] = set()
        self.refused = 0
        self.timed_out = {"header": 0, "idle": 0}
        self._sweeper: asyncio.Task[None] | None = None

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` around aiohttp's (`runner.server`)."""

        def make() -> asyncio.Protocol:
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
            return _Guarded(self, factory)

        return make

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.header_timeout / 4, self.idle_timeout / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        for conn in list(self.open):
            conn.check(now)


class _Guarded(asyncio.Protocol):
    __slots__ = (
        "_factory",
        "bytes_at_rest",
        "bytes_in",
        "guard",
        "inner",
        "last_count",
        "rest_since",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], Any]) -> None:
        self.guard = guard
        self.inner: Any = None
        self._factory = factory
        self.transport: asyncio.Transport | None = None
        self.bytes_in = 0
        self.last_count = 0
        self.rest_since: float | None = None
        self.bytes_at_rest = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same interface.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        guard = self.guard
        if len(guard.open) >= guard.max_connections:
            guard.refused += 1
            transport.write(REFUSAL)
            transport.close()
            return
        guard.open.add(self)
        self.rest_since = asyncio.get_running_loop().time()
        self.inner = _handler(self._factory)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.bytes_in += len(data)
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.open.discard(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def check(self, now: float) -> None:
        """Close the connection if it has rested (no request in progress) for too long."""
        inner = self.inner
        busy = getattr(inner, "_current_request", None) is not None
        count = getattr(inner, "_request_count", 0)
        if busy or count != self.last_count:
            # A request is running, or one ran since the last sweep: the rest starts afresh.
            self.last_count = count
            self.rest_since = None if busy else now
            self.bytes_at_rest = self.bytes_in
            return
        if self.rest_since is None:
            self.rest_since, self.bytes_at_rest = now, self.bytes_in
            return
        started = self.bytes_in > self.bytes_at_rest  # part of a next request has arrived
        limit = self.guard.header_timeout if started else self.guard.idle_timeout
        if now - self.rest_since >= limit and self.transport is not None:
            self.guard.timed_out["header" if started else "idle"] += 1
            self.transport.close()
