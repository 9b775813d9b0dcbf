"""The collector's HTTP surface: ingest for sidecars, a read-only query API and page for people.

Ingest (HTTPS, for sidecars; authenticated like the config push channel):

    GET  /v1/namespaces/{ns}/pods/{pod}/records/head    {"seq": last stored seq or -1, "hash"}
    POST /v1/namespaces/{ns}/pods/{pod}/records         body: sealed lines, one per line
         -> 200 {"head": {"seq", "hash"}, "stored", "duplicates", "quarantined", "gaps"}

The Bearer token must be the pod's projected service-account token (audience ``packgate``), bound
to the pod in the path; the chain is keyed by the pod uid from the token, so a pod can only add
to its own chain. A 200 means every line of the body is on disk (stored, a duplicate of a stored
record, or quarantined): the sidecar may then forget about them.

Reading (plain HTTP on 127.0.0.1 inside the pod: reached with ``kubectl port-forward``, which
tunnels through the apiserver, and by nothing else):

    GET /                              the Events page (static files, no data)
    GET /api/v1/records?FILTERS[&wait=S] newest first; with ``after`` and ``wait``, a long poll
    GET /api/v1/records/{uid}/{seq}    one record: decisions, usage, cost, latency, seal
    GET /api/v1/problems               quarantined records and sequence gaps
    GET /api/v1/whoami                 who the token is and which namespaces it may read

Every read needs the caller's Kubernetes Bearer token; see access.py for who may read what.
There is no endpoint that edits or deletes anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from ..propagate import Authenticator, Refused
from . import index
from .access import Keyring, Readers, Retention
from .events import EventAggregator
from .query import FilterError, parse
from .store import Batch, PodKey, Store
from .summary import incidents, may_have_incidents

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024 * 1024
MAX_LINES = 20000
STATIC = resources.files(__package__) / "static"


class CollectorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.stored = Counter(
            "packgate_collector_records_stored_total",
            "Audit records stored (verified and appended to their chain).",
            registry=r,
        )
        self.duplicates = Counter(
            "packgate_collector_records_duplicate_total",
            "Records received again (at-least-once delivery) and skipped.",
            registry=r,
        )
        self.quarantined = Counter(
            "packgate_collector_records_quarantined_total",
            "Records that failed a check, by reason.",
            ["reason"],
            registry=r,
        )
        self.gaps = Counter(
            "packgate_collector_sequence_gaps_total",
            "Gaps found in a pod's audit sequence.",
            registry=r,
        )
        self.refused = Counter(
            "packgate_collector_requests_refused_total",
            "Requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "packgate_collector_ingest_seconds",
            "Time to verify, store and fsync one shipped batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )


class Collector:
    def __init__(
        self,
        store: Store,
        authenticator: Authenticator,
        readers: Readers,
        keyring: Keyring,
        retention: Retention,
        events: EventAggregator | None,
        metrics: CollectorMetrics | None = None,
    ) -> None:
        self.store = store
        self.auth = authenticator
        self.readers = readers
        self.keyring = keyring
        self.retention = retention
        self.events = events
        self.metrics = metrics or CollectorMetrics()
        self._new = asyncio.Condition()
        self._reader: Any = None

    # -- ingest --------------------------------------------------------------------------------

    def ingest_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        base = "/v1/namespaces/{namespace}/pods/{pod}/records"
        app.add_routes(
            [
                web.get(base + "/head", self._guard(self.head)),
                web.post(base, self._guard(self.receive)),
            ]
        )
        return app

    def _guard(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                response: web.StreamResponse = await handler(request)
                return response
            except Refused as refused:
                self.metrics.refused.labels(refused.reason).inc()
                return web.json_response(
                    {"error": {"reason": refused.reason, "message": str(refused)}},
                    status=refused.status,
                )

        return guarded

    async def _pod(self, request: web.Request) -> PodKey:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise Refused(401, "no-token", "send the pod's projected token as Bearer")
        identity = await self.auth.verify(header[7:].strip())
        if not identity.pod_name or not identity.pod_uid:
            raise Refused(403, "not-pod-bound", "the token is not bound to a pod")
        if (identity.namespace, identity.pod_name) != (namespace, pod):
            raise Refused(
                403,
                "wrong-pod",
                f"the token belongs to pod {identity.namespace}/"
                f"{identity.pod_name}, not {namespace}/{pod}",
            )
        return PodKey(namespace, pod, identity.pod_uid)

    async def head(self, request: web.Request) -> web.Response:
        key = await self._pod(request)
        state = self.store.head(key.uid)
        if state is None:
            return web.json_response({"seq": -1, "hash": None})
        return web.json_response({"seq": state.seq - 1, "hash": state.prev})

    async def receive(self, request: web.Request) -> web.Response:
        key = await self._pod(request)
        started = time.perf_counter()
        body = await request.read()
        lines = [line for line in body.split(b"\n") if line]
        if len(lines) > MAX_LINES:
            raise Refused(413, "too-many-lines", f"at most {MAX_LINES} lines per batch")
        kids = {_kid(line) for line in lines[:64]}
        keys = await self.keyring.keys(key.namespace, kids - {""})
        pack = _pack_of(lines)
        days = await self.retention.days(key.namespace, pack)
        result = await self.store.ingest(Batch(key, lines, keys, pack, days))
        self.metrics.stored.inc(len(result.stored))
        self.metrics.duplicates.inc(result.duplicates)
        self.metrics.gaps.inc(len(result.gaps))
        for o in result.quarantined:
            self.metrics.quarantined.labels(o.reason.split(":", 1)[0]).inc()
            log.warning("quarantined a record from %s/%s: %s", key.namespace, key.pod, o.reason)
        if self.events is not None:
            for o in result.stored:
                if o.env is not None and o.env.type == "access" and may_have_incidents(o.line):
                    try:
                        values = o.env.body()
                    except ValueError:  # logged by the index, which decodes it too
                        continue
                    self.events.note(key, str(values.get("pack") or pack or ""), incidents(values))
            for o in result.quarantined:
                self.events.problem(key, "quarantined", o.reason.split(":", 1)[0])
            for first, last in result.gaps:
                self.events.problem(key, "gap", f"seq {first}-{last} missing")
        if result.stored:
            async with self._new:
                self._new.notify_all()
        self.metrics.ingest_seconds.observe(time.perf_counter() - started)
        head = result.head
        return web.json_response(
            {
                "head": {"seq": head.seq - 1, "hash": head.prev}
                if head
                else {"seq": -1, "hash": None},
                "stored": len(result.stored),
                "duplicates": result.duplicates,
                "quarantined": [
                    {"seq": o.env.seq if o.env else None, "reason": o.reason}
                    for o in result.quarantined
                ],
                "gaps": [list(g) for g in result.gaps],
            }
        )

    # -- reading -------------------------------------------------------------------------------

    def read_app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self.page),
                web.get("/static/{name}", self.static),
                web.get("/api/v1/records", self._guard(self.records)),
                web.get("/api/v1/records/{uid}/{seq}", self._guard(self.record)),
                web.get("/api/v1/problems", self._guard(self.problems)),
                web.get("/api/v1/whoami", self._guard(self.whoami)),
            ]
        )
        return app

    def admin_app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )

        app = web.Application()
        app.add_routes(
            [
                web.get("/healthz", healthz),
                web.get("/readyz", healthz),
                web.get("/metrics", metrics),
            ]
        )
        return app

    def _conn(self) -> Any:
        if self._reader is None:
            self._reader = self.store.reader()
        return self._reader

    async def page(self, _: web.Request) -> web.Response:
        return _asset("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise web.HTTPNotFound()
        return _asset(name)

    async def _scope(self, request: web.Request, namespace: str | None) -> tuple[Any, list[str]]:
        user = await self.readers.user(request.headers.get("Authorization", ""))
        candidates = [namespace] if namespace else self.store.namespaces()
        allowed = await self.readers.allowed(user, candidates)
        if namespace and not allowed:
            raise Refused(
                403,
                "forbidden",
                f"{user.username} may not get policypacks in "
                f"namespace {namespace}, so may not read its audit records",
            )
        if not allowed and candidates:
            raise Refused(
                403,
                "forbidden",
                f"{user.username} may not get policypacks in any namespace with audit records",
            )
        return user, allowed

    async def records(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        wait = min(max(float(params.pop("wait", "0") or 0), 0.0), 25.0)
        try:
            filters = parse(params)
        except FilterError as exc:
            raise Refused(400, "bad-filter", str(exc)) from None
        _, allowed = await self._scope(request, filters.namespace)
        await self.store.caught_up()  # every acknowledged record is in the answer
        found = index.search(self._conn(), filters, allowed)
        if not found and wait and filters.after:
            try:
                async with self._new:
                    await asyncio.wait_for(self._new.wait(), wait)
            except TimeoutError:
                pass
            await self.store.caught_up()
            found = index.search(self._conn(), filters, allowed)
        cursor = max([filters.after, *(r["id"] for r in found)])
        if not filters.after:
            row = self._conn().execute("SELECT MAX(id) FROM records").fetchone()
            cursor = int(row[0] or 0)
        return web.json_response({"records": found, "cursor": cursor, "namespaces": allowed})

    async def record(self, request: web.Request) -> web.Response:
        try:
            seq = int(request.match_info["seq"])
        except ValueError:
            raise Refused(400, "bad-seq", "seq must be a whole number") from None
        await self.store.caught_up()
        found = index.detail(self._conn(), request.match_info["uid"], seq)
        # Same answer for "absent" and "not yours": existence is not revealed to a stranger.
        namespace = found["namespace"] if found else None
        user = await self.readers.user(request.headers.get("Authorization", ""))
        if found is None or not await self.readers.allowed(user, [str(namespace)]):
            raise Refused(404, "not-found", "no such record among those you may read")
        return web.json_response(found)

    async def problems(self, request: web.Request) -> web.Response:
        _, allowed = await self._scope(request, request.query.get("namespace") or None)
        await self.store.caught_up()
        conn = self._conn()
        return web.json_response(
            {
                "quarantined": index.problems(conn, "quarantine", allowed),
                "gaps": index.problems(conn, "gaps", allowed),
            }
        )

    async def whoami(self, request: web.Request) -> web.Response:
        user = await self.readers.user(request.headers.get("Authorization", ""))
        allowed = await self.readers.allowed(user, self.store.namespaces())
        return web.json_response({"user": user.username, "namespaces": allowed})


def _asset(name: str) -> web.Response:
    kinds = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    kind = kinds[name[name.rindex(".") :]]
    response = web.Response(body=(STATIC / name).read_bytes(), content_type=kind, charset="utf-8")
    # The page holds a token in memory: no framing by other sites, no inline scripts.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _kid(line: bytes) -> str:
    at = line.find(b'"kid":"')
    return line[at + 7 : at + 23].decode("ascii", "replace") if at >= 0 else ""


def _pack_of(lines: list[bytes]) -> str | None:
    for line in reversed(lines):
        at = line.find(b'"pack":"')
        if at >= 0:
            end = line.find(b'"', at + 8)
            value = line[at + 8 : end].decode("ascii", "replace")
            return value if value and len(value) <= 253 else None
    return None
