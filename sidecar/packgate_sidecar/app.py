"""HTTP wiring of the sidecar: the OpenAI-compatible API app and the admin app.

Why it exists: it is the front door, and its job is to make sure nothing gets past the chain.
Every path goes through one dispatcher: the five governed endpoints are handled, any other path
gets an OpenAI-style 404 (never forwarded), a wrong method gets 405. Each request takes the
config in force once (atomic reloads), gets a request id that every response carries, is parsed
and checked (400, 413), runs the request phase of the chain (403 on a block), and is forwarded.
Afterwards the request is counted, logged as one JSON line without any text, and handed to the
policies' `on_finish` hooks off the response path.

The admin app (a separate port) serves `/healthz`, `/readyz` and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from logging import INFO
from typing import Any, cast

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST

from . import strict_json
from .audit import ship
from .audit.writer import DURABLE_STATE_KEY
from .conn_guard import ConnectionGuard
from .errors import (
    REQUEST_ID_HEADER,
    ApiError,
    invalid_request,
    method_not_allowed,
    not_found,
    policy_blocked,
    sse_error_event,
    too_large,
)
from .forward import Durable, Forwarder, wait_durable
from .logs import describe_exception, get_logger, log, log_fields
from .metrics import Metrics
from .policy import PolicyRuntime, RequestContext
from .reload import Active, ConfigHolder
from .shapes import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, ShapeError, request_texts

MODELS = "/v1/models"
ROUTE_METHODS = {
    CHAT: "POST",
    COMPLETIONS: "POST",
    EMBEDDINGS: "POST",
    RESPONSES: "POST",
    MODELS: "GET",
}
_log = get_logger("access")
# What aiohttp's low-level server calls with each request.
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def _settled(task: asyncio.Task[None]) -> None:
    """Wait until `task` has finished, however it ended, without cancelling it when the waiter
    is cancelled: `asyncio.wait({task})` with its sets, counter and done/pending results cost
    2.7 us more per request (uvloop, one task)."""
    if task.done():
        return
    waiter: asyncio.Future[None] = task.get_loop().create_future()

    def wake(_task: asyncio.Task[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        task.remove_done_callback(wake)


@dataclass(frozen=True)
class GatewayOptions:
    max_body_bytes: int = 8 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    # Whole request body, from the end of the headers (a slow-body client holds a connection).
    body_timeout: float = 30.0
    # Whole provider answers are buffered (the response policies read them as one object), so
    # their size is bounded while reading. Embeddings get more room: 2048 inputs of 3072-dim
    # vectors are ~34 MB even base64-encoded.
    max_response_bytes: int = 16 * 1024 * 1024
    max_embeddings_response_bytes: int = 64 * 1024 * 1024
    max_error_body_bytes: int = 64 * 1024
    # Client connections (conn_guard.py): headers must arrive within header_timeout, an idle
    # keep-alive connection is closed after idle_timeout, at most max_connections at once.
    header_timeout: float = 10.0
    idle_timeout: float = 15.0
    max_connections: int = 1024
    # Hold each whole response until its audit record is fsynced, and give streams a durable
    # write-ahead record (issue 13). Off only to measure what that costs (`make bench`).
    durable_audit: bool = True
    # Bound on waiting for on_finish hooks (audit records) at shutdown.
    finish_grace: float = 5.0


class Gateway:
    def __init__(
        self,
        holder: ConfigHolder,
        metrics: Metrics,
        runtime: PolicyRuntime,
        options: GatewayOptions | None = None,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.runtime = runtime
        self.options = options or GatewayOptions()
        self.draining = False
        self.guard = ConnectionGuard(
            self.options.max_connections, self.options.header_timeout, self.options.idle_timeout
        )
        self._forwarder: Forwarder | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop serving the app
        self._ids = _RequestIds()
        self._finishing: set[asyncio.Task[None]] = set()
        # Requests being handled (the handler's task -> its context once it has one).
        self._inflight: dict[asyncio.Task[Any], RequestContext | None] = {}
        self._idle = asyncio.Event()
        self.drained: set[str] = set()  # request ids ended by the drain deadline
        self.finish_deadline: float | None = None

    # --- apps --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_body_bytes)
        # Every path reaches `dispatch`, which routes it. The server calls `dispatch` directly
        # (`direct`); aiohttp's router only sees requests with an `Expect` header.
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def direct(self, routed: Handler) -> Handler:
        """The API server's request handler in place of the app's own (`routed`, which
        `start_site` hands over): `dispatch` at once. Every path of the app reaches `dispatch`,
        which routes it, so aiohttp's router, match info and middleware pass (~4 us a request)
        decide nothing; a request with an `Expect` header still goes through the app, whose
        expect handler answers `100 Continue` (or 417) first."""
        dispatch = cast(Handler, self.dispatch)

        def handle(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            if request.headers.get(hdrs.EXPECT):
                return routed(request)
            return dispatch(request)

        return handle

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _start(self, _app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        # One pooled session for the process: connection reuse is most of the added latency.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        self._forwarder = Forwarder(
            session,
            self.metrics,
            self.options.connect_timeout,
            self.options.read_timeout,
            self.options.max_response_bytes,
            self.options.max_embeddings_response_bytes,
            self.options.max_error_body_bytes,
        )

    async def _stop(self, _app: web.Application) -> None:
        self.guard.close()
        if self._finishing:
            grace = self.options.finish_grace
            if self.finish_deadline is not None:  # the shutdown has a total deadline
                grace = max(0.0, self.finish_deadline - asyncio.get_running_loop().time())
            await asyncio.wait(set(self._finishing), timeout=grace)
        if self._forwarder is not None:
            await self._forwarder.session.close()

    # --- the API -----------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        request_id = self._ids.next()
        route = request.path
        active = self.holder.current
        ctx: RequestContext | None = None
        response: web.StreamResponse | None = None
        # With the loop given, no lookup of the running loop (a getpid system call on 3.11).
        task = asyncio.current_task(self._loop)
        assert task is not None
        if active is not None:
            self.holder.enter(active)
        self.metrics.inflight_count += 1
        self._inflight[task] = None
        self._idle.clear()
        try:
            try:
                expected = ROUTE_METHODS.get(route)
                if expected is None:
                    response = self._unrouted(request, active, request_id)
                elif request.method != expected:
                    raise method_not_allowed(request.method, route, [expected])
                elif active is None:
                    raise ApiError(503, "not_ready", self.holder.not_ready_message())
                elif not active.config.pack.enabled:
                    raise _pack_disabled(active)
                elif route == MODELS:
                    response = _json(_models(active), request_id)
                else:
                    ctx = self._inflight[task] = self._context(request, request_id, route, active)
                    response = await self._proxy(request, ctx, active)
            except Exception as exc:
                error = exc if isinstance(exc, ApiError) else _internal(exc, request_id)
                if ctx is not None:
                    ctx.error_code = error.code
                    ctx.outcome = "blocked" if error.status == 403 else "error"
                response = error.response(request_id)
        except asyncio.CancelledError:
            if ctx is None or ctx.request_id not in self.drained:
                if ctx is not None:
                    ctx.outcome = "client_disconnected"
                raise
            # Cancelled by the shutdown deadline (drain), not by the client: answer it.
            task.uncancel()
            response = await self._drained_answer(ctx)
        finally:
            del self._inflight[task]
            if not self._inflight:
                self._idle.set()
            if ctx is not None and self._forwarder is not None:
                self._forwarder.streams.pop(ctx.request_id, None)
            finishing = self._done(route, request, response, ctx, active)
        if self.draining:
            response.force_close()  # no keep-alive while draining: clients reconnect elsewhere
        if self.options.durable_audit and finishing is not None and not response.prepared:
            # A whole response leaves only once its audit record is durable (audit-logger's
            # on_finish hands over the fsync's future), so a kill -9 cannot lose the record of
            # an answer the client got. Streams got a durable write-ahead record before going
            # upstream.
            await _settled(finishing)
            assert ctx is not None
            try:
                await wait_durable(ctx.state.get(DURABLE_STATE_KEY, ()))
            except ApiError as withheld:
                log(_log, 40, "answer withheld: its audit record failed", request_id=ctx.request_id)
                return withheld.response(ctx.request_id)
        return response

    async def _drained_answer(self, ctx: RequestContext) -> web.StreamResponse:
        ctx.outcome, ctx.error_code = "drained", "drained"
        error = ApiError(
            503,
            "drained",
            "The sidecar shut down (--drain-seconds elapsed) before this request finished; "
            "retry it",
        )
        stream = self._forwarder.streams.get(ctx.request_id) if self._forwarder else None
        if stream is None or not stream.prepared:
            return error.response(ctx.request_id)
        try:
            await stream.write(sse_error_event(error))
            await stream.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away meanwhile; the outcome is still "drained"
        return stream

    async def drain(self, deadline: float) -> None:
        """Let in-flight requests finish until `deadline` (loop time); then end the rest:
        streams with an SSE error event, others with a 503, all audited as `drained`."""
        self.finish_deadline = deadline
        remaining = deadline - asyncio.get_running_loop().time()
        if self._inflight and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), remaining)
        if not self._inflight:
            return
        for task, ctx in list(self._inflight.items()):
            if ctx is not None:
                self.drained.add(ctx.request_id)
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 0.5)

    def _write_ahead(self, ctx: RequestContext, active: Active) -> list[Durable]:
        """Queue the `started` records (audit-logger) of a stream about to go upstream; the
        forwarder holds the stream's first byte until they are durable."""
        pending: list[Durable] = []
        for entry in active.chain.finish_entries:
            hook = getattr(entry.policy, "write_ahead", None)
            if hook is None:
                continue
            try:
                durable = hook(ctx)
            except Exception as exc:
                log(_log, 40, "write-ahead failed", kind=entry.kind, error=describe_exception(exc))
                raise ApiError(
                    503,
                    "audit_unavailable",
                    "The request could not be audited, so it was not sent (fail closed)",
                ) from None
            if durable is not None:
                pending.append(durable)
        return pending

    def _context(
        self, request: web.Request, request_id: str, route: str, active: Active
    ) -> RequestContext:
        config = active.config
        return RequestContext(
            request_id,
            route,
            pack=config.pack.name,
            pack_version=config.pack.version,
            config_hash=active.hash,
            pod=self.runtime.pod,
            headers=PackgateHeaders(request.headers),
        )

    async def _proxy(
        self, request: web.Request, ctx: RequestContext, active: Active
    ) -> web.StreamResponse:
        raw = self._body_now(request)
        if raw is None:
            raw = await self._read_body(request)
        try:
            body = strict_json.loads(raw)
        except strict_json.JsonRefused as exc:
            raise invalid_request(exc.message, code=exc.code) from None
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid_request("model is required and must be a string", "model")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise invalid_request("stream must be a boolean", "stream")
        ctx.model = model
        ctx.stream = bool(stream) and ctx.route != EMBEDDINGS
        try:
            slots = request_texts(ctx.route, body)
        except ShapeError as exc:
            raise invalid_request(str(exc), exc.param) from None
        ctx.input_chars = sum(len(slot.get()) for slot in slots)
        blocked = await active.chain.run_request(ctx, slots)
        if blocked is not None:
            raise policy_blocked("request", blocked.kind, blocked.reason)
        assert self._forwarder is not None, "the app has started"
        ahead = self._write_ahead(ctx, active) if ctx.stream and self.options.durable_audit else []
        # What goes upstream is the serialisation of `body`, the object the chain checked (and
        # maybe rewrote), never the client's bytes: see strict_json.py.
        return await self._forwarder.forward(
            request, active.upstreams, active.chain, ctx.route, body, ctx, ahead
        )

    def _body_now(self, request: web.Request) -> bytes | None:
        """The body when it arrived with its headers, as most do, else None (`_read_body`);
        a declared length over the limit is refused first, for both.
        Taken from the buffer at once: the bytes `request.read()` returns, without its read
        loop (two `readany` awaits and a bytearray copy) or a deadline (nothing to wait for)."""
        limit = self.options.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise too_large(limit)
        content = request.content
        if not content.is_eof():
            return None
        try:
            raw = content.read_nowait()
        except (ContentEncodingError, RequestPayloadError):
            raise _unreadable(request) from None
        if len(raw) > limit:  # inflated from a compressed body past the limit
            raise too_large(limit)
        return raw

    async def _read_body(self, request: web.Request) -> bytes:
        """A body still arriving, once `_body_now` found it is not all here."""
        limit = self.options.max_body_bytes
        try:
            # A client that trickles its body ties up a connection; the whole body has a
            # deadline.
            async with asyncio.timeout(self.options.body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limit) from None
        except TimeoutError:
            raise ApiError(
                408,
                "request_timeout",
                f"The request body did not arrive within {self.options.body_timeout:g} s "
                "(--body-timeout)",
                headers={"Connection": "close"},
            ) from None
        except (ContentEncodingError, RequestPayloadError):
            raise _unreadable(request) from None

    def _unrouted(
        self, request: web.Request, active: Active | None, request_id: str
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith(MODELS + "/") and len(path) > len(MODELS) + 1:
            if request.method != "GET":
                raise method_not_allowed(request.method, path, ["GET"])
            if active is None:
                raise ApiError(503, "not_ready", self.holder.not_ready_message())
            if not active.config.pack.enabled:
                raise _pack_disabled(active)
            wanted = path[len(MODELS) + 1 :]
            for model in _models(active)["data"]:
                if model["id"] == wanted:
                    return _json(model, request_id)
            raise ApiError(
                404, "model_not_found", f"The model '{wanted}' is not served by this gateway"
            )
        raise not_found(request.method, path)

    def _done(
        self,
        route: str,
        request: web.Request,
        response: web.StreamResponse | None,
        ctx: RequestContext | None,
        active: Active | None,
    ) -> asyncio.Task[None] | None:
        """Count, log and hand the request to the finish hooks; runs for every request."""
        self.metrics.inflight_count -= 1
        # 499: the client went away before an answer existed (nginx's convention).
        status = response.status if response is not None else 499
        route_label = route if route in ROUTE_METHODS else "other"
        if ctx is None:
            self.metrics.request_done(route_label, status, "none", None)
            if active is not None:
                self.holder.leave(active)
            log(_log, INFO, "request", method=request.method, route=route_label, status=status)
            return None
        duration = time.perf_counter() - ctx.started
        self.metrics.request_done(route_label, status, ctx.target or "none", duration)
        ctx.status = status
        ctx.latency_ms = round(duration * 1000, 3)
        if _log.isEnabledFor(INFO):
            log_fields(
                _log,
                INFO,
                "request",
                {
                    "request_id": ctx.request_id,
                    "route": route_label,
                    "status": status,
                    "target": ctx.target,
                    "model": ctx.upstream_model,
                    "stream": ctx.stream,
                    "outcome": ctx.outcome,
                    "code": ctx.error_code,
                    "latency_ms": ctx.latency_ms,
                    "upstream_ms": ctx.upstream_latency_ms,
                    "attempts": ctx.attempts,
                    "decisions": [f"{d.kind}:{d.phase}:{d.action}" for d in ctx.decisions],
                },
                self._loop,
            )
        assert active is not None
        if not active.chain.finish_entries:
            self.holder.leave(active)
            return None
        # Off the response path: the client has its answer; audit and cost run afterwards.
        # In a task of their own, not run here as far as they go without waiting: that
        # measured fewer instructions but more CPU per request (json c32, 437 against 403 us)
        # with more context switches (0.5 against 0.3 per request).
        rest = active.chain.finish(ctx)
        task = (self._loop or asyncio.get_running_loop()).create_task(rest)
        self._finishing.add(task)

        def _finished(done: asyncio.Task[None], active: Active = active) -> None:
            self._finishing.discard(done)
            self.holder.leave(active)

        task.add_done_callback(_finished)
        return task

    # --- admin -------------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, detail = self.holder.readiness()
        if shipping := ship.status():
            detail["audit_shipping"] = shipping
            if ship.refusing():
                ready = False
                detail.update(ready=False, reason="audit spool full: requests are refused")
        if self.draining:
            ready = False
            detail.update(ready=False, reason="draining: the gateway is shutting down")
        return web.json_response(detail, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


class _RequestIds:
    """Request ids: 16 bytes of the OS's random source each, as hex, read 64 ids at a time.
    A getrandom system call per request cost more than the id (system calls are slow in the
    VMs sidecars run in); the bytes are the same kind, only fetched in bulk."""

    __slots__ = ("_at", "_pool")
    BATCH = 64

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * self.BATCH), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


class PackgateHeaders(Mapping[str, str]):
    """A request's `x-packgate-*` headers by lower-cased name, picked out on first use: most
    chains read none (only cost-attribution's tags do), and scanning every header of every
    request for them cost more than the lookups."""

    __slots__ = ("_picked", "_raw")

    def __init__(self, raw: Mapping[str, str]) -> None:
        self._raw = raw
        self._picked: dict[str, str] | None = None

    def _pick(self) -> dict[str, str]:
        picked = self._picked
        if picked is None:
            picked = self._picked = {}
            for name, value in self._raw.items():
                lower = name.lower()
                if lower.startswith("x-packgate-"):
                    picked[lower] = value
        return picked

    def __getitem__(self, name: str) -> str:
        return self._pick()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pick())

    def __len__(self) -> int:
        return len(self._pick())


def _internal(exc: Exception, request_id: str) -> ApiError:
    """A bug or an unforeseen failure: still an OpenAI-shaped answer, logged without text."""
    log(
        _log,
        40,
        "request failed unexpectedly",
        request_id=request_id,
        error=describe_exception(exc),
    )
    return ApiError(500, "internal_error", "packgate could not handle this request")


def _unreadable(request: web.Request) -> ApiError:
    """The answer to a body aiohttp could not read: bad chunking or a bad compressed body."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is None:
        return invalid_request(
            "The request body could not be read (malformed chunked encoding)",
            code="bad_request_body",
        )
    return invalid_request(
        f"The request body does not match its Content-Encoding ({encoding!r}): it could "
        "not be decoded",
        code="bad_content_encoding",
    )


def _json(body: Any, request_id: str) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id},
    )


def _pack_disabled(active: Active) -> ApiError:
    return ApiError(
        503,
        "pack_disabled",
        f'The policy pack "{active.config.pack.name}" is disabled, so this gateway refuses '
        "all traffic",
    )


def _models(active: Active) -> dict[str, Any]:
    """The models the configured targets serve; a target that forwards the client's model
    choice unchanged names no model and is not listed."""
    seen: dict[str, dict[str, Any]] = {}
    for target in active.config.providers.targets:
        if target.model and target.model not in seen:
            seen[target.model] = {
                "id": target.model,
                "object": "model",
                "created": 0,
                "owned_by": target.provider,
            }
    return {"object": "list", "data": list(seen.values())}
