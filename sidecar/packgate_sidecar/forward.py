"""The hot path to the providers: try the targets in order, relay the answer.

Why it exists: this is where a request leaves the pod, so it holds the rules that keep that safe
and predictable. The provider key comes from the sidecar's environment (the client's
Authorization header is never forwarded) and the URL from the config (the client cannot choose
it). Targets are tried in config order; a 429, a 5xx, a connection error or a timeout falls back
to the next target, but only while nothing has reached the client yet: a stream that has started
is never retried elsewhere. Streams are relayed as they arrive, through the chain's stream
filters; an upstream that breaks mid-stream ends the client's stream with an error event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from packgate_policy import ConfigError, ConfigIssue, PolicyConfig, key_env_name
from yarl import URL

from . import scrub, strict_json
from .audit.writer import STREAMED_STATE_KEY
from .chain import Chain, StreamBlocked
from .errors import REQUEST_ID_HEADER, ApiError, error_body, policy_blocked, sse_error_event
from .logs import get_logger, log
from .metrics import Metrics
from .policy import RequestContext
from .shapes import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, all_strings, response_texts
from .sse import StreamRewriter
from .sse_wire import UnreadableEvent
from .stream_shapes import STREAM_SHAPES
from .upstream_read import read_any

_log = get_logger("forward")
API_ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)
USER_AGENT = "packgate-sidecar/0.1"
# Upstream response headers worth passing on: request ids, rate limits, retry hints.
_PASS_PREFIXES = ("x-request-id", "openai-", "x-ratelimit-", "retry-after")
_ERROR_BODY_LIMIT = 64 * 1024
# An audit record being made durable: resolves once it is fsynced, fails if it cannot be written.
Durable = asyncio.Future[Any]


@dataclass(frozen=True)
class Upstream:
    """One provider target, resolved: URLs per route and the headers carrying its key."""

    id: str
    model: str | None
    urls: Mapping[str, URL]
    headers: Mapping[str, str] = field(repr=False)


def resolve_upstreams(config: PolicyConfig, environ: Mapping[str, str]) -> list[Upstream]:
    """Targets with their keys read from the environment; a missing key is a ConfigError."""
    upstreams: list[Upstream] = []
    issues: list[ConfigIssue] = []
    for index, target in enumerate(config.providers.targets):
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        env = key_env_name(target)
        if env is not None:
            key = environ.get(env)
            if not key:
                issues.append(
                    ConfigIssue(
                        f"providers.targets[{index}].secret_key_ref",
                        f'environment variable {env} (the API key of target "{target.id}") '
                        "is not set in the sidecar",
                    )
                )
                continue
            headers["Authorization"] = f"Bearer {key}"
            scrub.register([key])
        base = target.effective_base_url
        urls = {route: URL(base + route.removeprefix("/v1")) for route in API_ROUTES}
        # As a multidict proxy: aiohttp copies such headers as they are, where a dict is first
        # converted to one on every request.
        upstreams.append(
            Upstream(target.id, target.model, urls, CIMultiDictProxy(CIMultiDict(headers)))
        )
    if issues:
        raise ConfigError(issues)
    return upstreams


def _broken(ctx: RequestContext, timed_out: bool) -> ApiError:
    return ApiError(
        504 if timed_out else 502,
        "upstream_timeout" if timed_out else "upstream_stream_broken",
        f'Provider target "{ctx.target}" '
        + ("stopped sending" if timed_out else "broke off the stream")
        + " before the response was complete",
    )


def _dumps(body: Mapping[str, Any]) -> bytes:
    return strict_json.dumps(body)


async def wait_durable(records: Sequence[Durable]) -> None:
    """Wait until the audit records of a request are on disk: no answer reaches the client
    before they are (a stream's write-ahead records, a whole response's record), and if one
    cannot be written the answer is not relayed (fail closed: ApiError 503)."""
    for durable in records:
        try:
            await durable
        except Exception:
            raise ApiError(
                503,
                "audit_unavailable",
                "The request could not be audited, so its answer was not relayed (fail closed)",
            ) from None


def _too_big(ctx: RequestContext, limit: int) -> ApiError:
    return ApiError(
        502,
        "upstream_response_too_large",
        f'Provider target "{ctx.target}" sent a response larger than the limit of {limit} '
        "bytes (--max-response-bytes, --max-embeddings-response-bytes); it was not relayed",
    )


_ANSWER = "The provider's response"


def _passed_headers(upstream: aiohttp.ClientResponse, request_id: str) -> dict[str, str]:
    headers = {REQUEST_ID_HEADER: request_id}
    for name, value in upstream.headers.items():
        passed = _PASSED.get(name)
        if passed is None:
            passed = _passes(name)
        if passed:
            headers[name] = scrub.scrub_text(value)
    return headers


# Whether a response header name is passed on, by its spelling: a provider sends the same
# dozen names with every answer. Bounded like the log's heads: a name past the bound is
# decided each time.
_PASSED: dict[str, bool] = {}


def _passes(name: str) -> bool:
    passed = name.lower().startswith(_PASS_PREFIXES)
    if len(_PASSED) < 512:
        _PASSED[name] = passed
    return passed


@dataclass
class _UpstreamError:
    """A provider's error answer (4xx/5xx), read up to the error-body cap."""

    status: int
    raw: bytes
    headers: dict[str, str]


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        connect_timeout: float,
        read_timeout: float,
        max_response_bytes: int = 16 * 1024 * 1024,
        max_embeddings_response_bytes: int = 64 * 1024 * 1024,
        max_error_body_bytes: int = _ERROR_BODY_LIMIT,
    ) -> None:
        self.session = session
        self.metrics = metrics
        # The read timeout limits silence: before the answer starts and between its chunks.
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.max_response_bytes = max_response_bytes
        self.max_embeddings_response_bytes = max_embeddings_response_bytes
        self.max_error_body_bytes = max_error_body_bytes
        # Streams the client is receiving, by request id (the gateway ends them at shutdown).
        self.streams: dict[str, web.StreamResponse] = {}

    async def forward(
        self,
        request: web.Request,
        upstreams: Sequence[Upstream],
        chain: Chain,
        route: str,
        body: dict[str, Any],
        ctx: RequestContext,
        ahead: Sequence[Durable] = (),
    ) -> web.StreamResponse:
        """Send `body` (the object the chain checked) to the first target that answers; a
        stream's first byte waits until the records in `ahead` are durable."""
        failure: ApiError | _UpstreamError | None = None
        for upstream in upstreams:
            model = upstream.model or ctx.model
            if upstream.model is not None and body.get("model") != upstream.model:
                payload = _dumps({**body, "model": upstream.model})
            else:
                payload = _dumps(body)
            ctx.target, ctx.upstream_model = upstream.id, model
            started = time.perf_counter()
            try:
                # Never follow a redirect: it would re-send the prompt (307/308) to a host the
                # config does not name, and relay that host's answer as the model's.
                async with self.session.post(
                    upstream.urls[route],
                    data=payload,
                    headers=upstream.headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                ) as answer:
                    elapsed = time.perf_counter() - started
                    ctx.upstream_latency_ms = round(elapsed * 1000, 3)
                    self.metrics.upstream_answered(upstream.id, route, elapsed)
                    if 300 <= answer.status < 400:
                        failure = ApiError(
                            502,
                            "upstream_redirect",
                            f'Provider target "{upstream.id}" answered with a redirect '
                            f"({answer.status}); packgate never follows redirects, so the "
                            "request was not sent anywhere else",
                        )
                        self._attempt_failed(ctx, upstream.id, "redirect", str(answer.status))
                        continue
                    if answer.status == 429 or answer.status >= 500:
                        reason = "status_429" if answer.status == 429 else "status_5xx"
                        failure = await self._read_error(answer, ctx)
                        self._attempt_failed(ctx, upstream.id, reason, str(answer.status))
                        continue
                    ctx.attempts.append((upstream.id, str(answer.status)))
                    if answer.status >= 400:
                        error = await self._read_error(answer, ctx)
                        return await self._error_answer(error, chain, ctx)
                    streamed = answer.status == 200 and answer.content_type == "text/event-stream"
                    if ctx.stream and streamed:
                        await wait_durable(ahead)
                        ctx.state[STREAMED_STATE_KEY] = True  # no answer waits for the rest
                        return await self._relay(request, answer, chain, route, ctx)
                    return await self._whole(answer, chain, route, ctx)
            except TimeoutError:
                failure = ApiError(
                    504,
                    "upstream_timeout",
                    f'Provider target "{upstream.id}" did not answer in time',
                )
                self._attempt_failed(ctx, upstream.id, "timeout", "timeout")
            except aiohttp.ClientError as exc:
                failure = ApiError(
                    502,
                    "upstream_unreachable",
                    f'Provider target "{upstream.id}" could not be reached ({type(exc).__name__})',
                )
                self._attempt_failed(ctx, upstream.id, "connect", "unreachable")
        if isinstance(failure, ApiError):
            if len(upstreams) > 1:
                failure.message = f"All {len(upstreams)} provider targets failed; last: " + (
                    failure.message
                )
            raise failure
        assert failure is not None, "a config always has at least one target"
        return await self._error_answer(failure, chain, ctx)

    def _attempt_failed(self, ctx: RequestContext, target: str, reason: str, what: str) -> None:
        ctx.attempts.append((target, what))
        self.metrics.upstream_failures.labels(target, reason).inc()
        log(
            _log,
            30,
            "upstream attempt failed",
            request_id=ctx.request_id,
            target=target,
            reason=reason,
        )

    async def _read_error(
        self, answer: aiohttp.ClientResponse, ctx: RequestContext
    ) -> _UpstreamError:
        """The provider's error answer, capped, kept to pass on if no other target does better."""
        raw = await answer.content.read(self.max_error_body_bytes)
        return _UpstreamError(answer.status, raw, _passed_headers(answer, ctx.request_id))

    async def _error_answer(
        self, error: _UpstreamError, chain: Chain, ctx: RequestContext
    ) -> web.Response:
        """A provider error body, made safe to relay: secrets scrubbed, every string in it
        through the response policies (a provider may echo the prompt, PII included), and
        always OpenAI-shaped JSON."""
        raw = scrub.scrub_bytes(error.raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = error_body(
                "upstream_error",
                "upstream_error",
                f"Provider target answered {error.status}: "
                + raw.decode("utf-8", "replace")[: self.max_error_body_bytes],
            )
        slots = all_strings(body, "assistant", "")
        blocked = await chain.run_response(ctx, slots)
        if blocked is not None:
            raise policy_blocked("response", blocked.kind, blocked.reason)
        ctx.outcome = "upstream_error"
        headers = {**error.headers, "Content-Type": "application/json"}
        return web.Response(status=error.status, body=_dumps(body), headers=headers)

    async def _read_capped(self, answer: aiohttp.ClientResponse, ctx: RequestContext) -> bytes:
        """The whole answer, refusing (before buffering it) one larger than the limit."""
        limit = (
            self.max_embeddings_response_bytes
            if ctx.route == EMBEDDINGS
            else self.max_response_bytes
        )
        length = answer.content_length
        if length is not None and length > limit:
            raise _too_big(ctx, limit)
        if length is not None and "Content-Encoding" not in answer.headers:
            # The parser reads exactly Content-Length bytes, already checked: one read. A
            # compressed answer's length is not its decompressed size, so it is counted below.
            return await answer.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in answer.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > limit:
                raise _too_big(ctx, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _whole(
        self, answer: aiohttp.ClientResponse, chain: Chain, route: str, ctx: RequestContext
    ) -> web.Response:
        raw = await self._read_capped(answer, ctx)
        headers = _passed_headers(answer, ctx.request_id)
        headers["Content-Type"] = answer.headers.get("Content-Type", "application/json")
        if 200 <= answer.status < 300 and (chain.response_entries or chain.finish_entries):
            try:
                # Strict, as requests are: the bytes relayed must have one reading, the one the
                # policies checked (see strict_json.py).
                body = strict_json.loads(raw, _ANSWER)
            except strict_json.JsonRefused as refused:
                if refused.code in ("invalid_json", "invalid_encoding"):
                    body = None
                else:
                    message = refused.message
                    if not message.startswith(_ANSWER):  # NaN and overflow messages name no source
                        message = f"{_ANSWER}: {message}"
                    raise ApiError(
                        502, "bad_upstream_response", message + "; it was not relayed"
                    ) from None
            if not isinstance(body, dict):
                if chain.response_entries:
                    raise ApiError(
                        502,
                        "bad_upstream_response",
                        "The provider's response is not a JSON object, so the policy chain "
                        "could not check it",
                    )
                return web.Response(
                    status=answer.status, body=scrub.scrub_bytes(raw), headers=headers
                )
            if isinstance(body.get("usage"), dict):
                ctx.usage = body["usage"]
            slots = response_texts(route, body)
            before = [slot.get() for slot in slots]
            blocked = await chain.run_response(ctx, slots)
            if blocked is not None:
                raise policy_blocked("response", blocked.kind, blocked.reason)
            after = [slot.get() for slot in slots]
            ctx.output_chars = sum(map(len, after))
            if after != before:
                raw = _dumps(body)
        return web.Response(status=answer.status, body=scrub.scrub_bytes(raw), headers=headers)

    async def _relay(
        self,
        request: web.Request,
        answer: aiohttp.ClientResponse,
        chain: Chain,
        route: str,
        ctx: RequestContext,
    ) -> web.StreamResponse:
        """Relay a stream chunk by chunk. The client has bytes from here on, so this never
        raises (a raise would look like a target failure and trigger a fallback)."""
        headers = _passed_headers(answer, ctx.request_id)
        headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response = web.StreamResponse(status=answer.status, headers=headers)
        policies = chain.open_stream(ctx)
        rewriter = (
            StreamRewriter(STREAM_SHAPES[route], policies, ctx)
            if policies is not None or chain.finish_entries
            else None
        )
        allowed = b""  # what may still go out before the error event
        sent = False  # whether the client has had any body bytes
        scrubber = scrub.StreamScrubber()
        try:
            await response.prepare(request)
            self.streams[ctx.request_id] = response
            while True:
                try:
                    chunk = await read_any(answer.content)  # readany, cheaper per HTTP chunk
                except (aiohttp.ClientError, TimeoutError) as exc:
                    reason, error = "upstream_error", _broken(ctx, isinstance(exc, TimeoutError))
                    break
                out = chunk
                if rewriter is not None and chunk:
                    # The first bytes go out as soon as one event is checked, not the whole chunk.
                    out = rewriter.feed(chunk, first=not sent)
                    if out and not sent:
                        sent = True
                        await response.write(scrubber.feed(out))
                        out = rewriter.feed(b"")
                content = answer.content
                if not chunk or (content.at_eof() and content.exception() is None):
                    # The upstream has ended (often with the chunk that brought the last events):
                    # the last bytes go out with the end of the body, one write, not two.
                    if rewriter is not None:
                        try:
                            out += rewriter.end()
                        except StreamBlocked as blocked:
                            blocked.partial = out + blocked.partial
                            raise
                    await response.write_eof(scrubber.feed(out) + scrubber.end())
                    return response
                if out:
                    await response.write(scrubber.feed(out))
        except StreamBlocked as blocked:
            allowed = blocked.partial
            reason, error = "blocked", policy_blocked("response", blocked.kind, blocked.reason)
        except UnreadableEvent as exc:
            reason, error = "upstream_error", ApiError(502, "bad_upstream_response", str(exc))
        except ConnectionResetError:
            self._client_gone(ctx, route)
            return response
        finally:
            if policies is not None:
                policies.close()
        try:
            allowed = scrubber.feed(allowed) + scrubber.end()
            if allowed:
                await response.write(allowed)
            await self._abort(response, ctx, route, reason, error)
        except ConnectionResetError:
            self._client_gone(ctx, route)
        return response

    def _client_gone(self, ctx: RequestContext, route: str) -> None:
        ctx.outcome = "client_disconnected"
        self.metrics.stream_aborts.labels(route, "client_disconnected").inc()

    async def _abort(
        self,
        response: web.StreamResponse,
        ctx: RequestContext,
        route: str,
        reason: str,
        error: ApiError,
    ) -> None:
        ctx.outcome = "blocked" if reason == "blocked" else "upstream_error"
        ctx.error_code = error.code
        self.metrics.stream_aborts.labels(route, reason).inc()
        log(
            _log,
            30,
            "stream aborted",
            request_id=ctx.request_id,
            target=ctx.target,
            reason=reason,
            code=error.code,
        )
        await response.write(sse_error_event(error))
        await response.write_eof()
