"""The authenticated push channel: sidecars subscribe, the operator answers with each new config.

Protocol (one long poll at a time per sidecar, over HTTPS verified with the operator's CA):

    GET /v1/namespaces/{namespace}/pods/{pod}/config?running=<hash>&seen=<hash>&wait=<seconds>
    Authorization: Bearer <projected service-account token, audience "packgate">

    200 {"namespace", "pod", "pack", "hash", "config"}   the pack's config differs from both hashes
    304                                                   nothing new within `wait` seconds
    401 / 403 {"error": ...}                              who you are / what you may read
    503 {"error": ...}, Retry-After                       the apiserver is unreachable right now

`running` is the hash the sidecar enforces (this is its convergence report); `seen` is the last
hash it was sent, so a config the sidecar refused is not sent again in a loop. The token is
verified with a TokenReview and must be bound to the pod named in the path (the apiserver puts
the pod's name and uid in the token), so a sidecar reads only its own pod's pack in its own
namespace. The pod must still exist: the operator's pod watch (the registry) answers that
without an API call, and a pod it does not know is looked up, uncached, so a deleted pod's token
stops working as soon as the deletion is seen. While the apiserver is unreachable, sidecars whose
token was verified before keep their subscription; others get 503 and retry within seconds.
Nothing here accepts config: the channel is one-way, operator to sidecar. A sidecar reports the
last config it refused (`refused=<reason>&refused_source=file|push&refused_digest=...`), which the
operator turns into an Event, a metric and the pack's ConfigTrusted condition.

`published_of` and `feed_hub` keep the hub equal to what the owned ConfigMaps hold, but only
configs carrying the operator's signature for that very pack, never older than what the hub
serves; anything else in a packgate ConfigMap is reported as damaged and rendered again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from packgate_policy import ConfigError, load_text, signing

from . import annotations as ann
from .hub import Hub, Published
from .kube import Kube, KubeError, TokenIdentity
from .metrics import Metrics
from .pods import PodRegistry
from .render import ANNOTATION_PACK, CONFIG_KEY, LABEL_MANAGED_BY, MANAGED_BY, configmap_name

log = logging.getLogger(__name__)
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


@dataclass
class _Cached:
    value: Any
    expires: float


class Authenticator:
    """TokenReview with a short cache: a re-poll after each change must not cost an API call."""

    def __init__(
        self, kube: Kube, audience: str, ttl: float = 30.0, stale_grace: float = 600.0
    ) -> None:
        self._kube = kube
        self._audience = audience
        self._ttl = ttl
        # While the apiserver is unreachable a token verified within this long still counts
        # (the pod check below still runs against the pod watch), so an apiserver restart does
        # not knock every sidecar off its subscription.
        self._stale_grace = stale_grace
        self._cache: dict[str, _Cached] = {}

    async def verify(self, token: str) -> TokenIdentity:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit.expires > now:
            identity: TokenIdentity | None = hit.value
        else:
            try:
                identity = await self._kube.token_review(token, self._audience)
            except KubeError as exc:
                if hit is not None and hit.value and hit.expires + self._stale_grace > now:
                    return hit.value  # type: ignore[no-any-return]
                raise Refused(
                    503, "apiserver-unavailable", f"cannot verify the token now: {exc}"
                ) from None
            if len(self._cache) > 10000:
                self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
            # Refusals are cached briefly too, so a misconfigured sidecar cannot hammer the API.
            self._cache[key] = _Cached(identity, now + (self._ttl if identity else 5.0))
        if identity is None:
            raise Refused(
                401,
                "invalid-token",
                f'the token is not a valid service-account token for audience "{self._audience}"',
            )
        return identity


class PodPacks:
    """Which pack a live pod uses: from the pod watch, else from the API (never cached)."""

    def __init__(
        self,
        kube: Kube,
        registry: PodRegistry | None = None,
        served: Callable[[str], bool] | None = None,
    ) -> None:
        self._kube = kube
        self._registry = registry
        self._served = served or (lambda namespace: True)

    async def pack_of(self, identity: TokenIdentity) -> str:
        if not self._served(identity.namespace):
            raise Refused(
                403,
                "not-served",
                f"this operator does not serve namespace {identity.namespace}",
            )
        known = self._registry.get(identity.pod_uid) if self._registry is not None else None
        if known is not None and (known.namespace, known.name) == (
            identity.namespace,
            identity.pod_name,
        ):
            if not known.pack:
                raise Refused(403, "not-opted-in", f"pod {identity.pod_name} names no PolicyPack")
            return known.pack
        try:
            pod = await self._kube.get_pod(identity.namespace, identity.pod_name)
        except KubeError as exc:
            raise Refused(
                503, "apiserver-unavailable", f"cannot look the pod up now: {exc}"
            ) from None
        meta = (pod or {}).get("metadata") or {}
        if pod is None or meta.get("uid") != identity.pod_uid:
            raise Refused(403, "pod-gone", "the pod this token is bound to no longer exists")
        annotations = meta.get("annotations") or {}
        if not ann.opted_in(annotations) or not annotations.get(ann.POLICY_PACK):
            raise Refused(
                403, "not-opted-in", f"pod {identity.pod_name} has not opted in to packgate"
            )
        return str(annotations[ann.POLICY_PACK])


class SubscriptionServer:
    def __init__(
        self,
        hub: Hub,
        authenticator: Authenticator,
        pod_packs: PodPacks,
        metrics: Metrics,
        max_wait: float,
    ) -> None:
        self.hub = hub
        self.auth = authenticator
        self.pod_packs = pod_packs
        self.metrics = metrics
        self.max_wait = max_wait

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/v1/namespaces/{namespace}/pods/{pod}/config", self.serve)])
        return app

    async def serve(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._serve(request)
        except KubeError as exc:  # anything the apiserver failed: retry soon, never a 500
            refused = Refused(503, "apiserver-unavailable", f"the Kubernetes API failed: {exc}")
        except Refused as exc:
            refused = exc
        self.metrics.subscription_rejections.labels(refused.reason).inc()
        log.info("subscription refused (%s): %s", refused.reason, refused)
        response = web.json_response(
            {"error": {"reason": refused.reason, "message": str(refused)}},
            status=refused.status,
        )
        if refused.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise Refused(
                401, "no-token", "send the pod's projected token as Authorization: Bearer"
            )
        identity = await self.auth.verify(header[7:].strip())
        if not identity.pod_name or not identity.pod_uid:
            raise Refused(
                403,
                "not-pod-bound",
                "the token is not bound to a pod; use the projected token the injector mounts",
            )
        if identity.namespace != namespace or identity.pod_name != pod:
            raise Refused(
                403,
                "wrong-pod",
                f"the token belongs to pod {identity.namespace}/{identity.pod_name}, "
                f"not {namespace}/{pod}: a sidecar reads only its own pod's PolicyPack",
            )
        pack = await self.pod_packs.pack_of(identity)
        if not self.hub.ready.is_set():
            raise Refused(503, "starting", "the operator is starting; retry shortly")
        running = request.query.get("running", "")
        seen = request.query.get("seen", "")
        try:
            wait = max(0.0, min(float(request.query.get("wait", self.max_wait)), self.max_wait))
        except ValueError:
            wait = self.max_wait
        known: Collection[str] = {h for h in (running, seen) if h}
        key = (namespace, pack)
        refused = _refusal(request.query)
        self.hub.report(identity.pod_uid, key, running, polling=True, refused=refused)
        self.metrics.subscriptions.set(self.hub.subscriptions)
        try:
            item = await self.hub.wait(namespace, pack, known, wait)
        finally:
            self.hub.report(identity.pod_uid, key, running, polling=False, refused=refused)
            self.metrics.subscriptions.set(self.hub.subscriptions)
        if item is None:
            return web.Response(status=304)
        self.metrics.pushes.inc()
        response = web.json_response(
            {
                "namespace": namespace,
                "pod": pod,
                "pack": pack,
                "hash": item.hash,
                "config": item.text,
            }
        )
        response.headers["ETag"] = f'"{item.hash}"'
        return response


_REFUSAL_PART = re.compile(r"^[-a-z0-9]{1,40}$")


def _refusal(query: Mapping[str, str]) -> str:
    """ "source:reason:digest" from a poll's refused* parameters; "" when absent or malformed."""
    parts = [query.get(k, "") for k in ("refused_source", "refused", "refused_digest")]
    if not parts[1] or not all(_REFUSAL_PART.match(p or "-") for p in parts):
        return ""
    return ":".join(parts)


# --- feeding the hub from the rendered ConfigMaps ------------------------------------------------


class Damaged(ValueError):
    """A packgate ConfigMap holds something the operator did not sign for it."""


def published_of(
    configmap: Mapping[str, Any], trusted: Mapping[str, Any], served: Published | None = None
) -> Published:
    """The config a packgate ConfigMap carries; raises Damaged unless it is the operator's
    signed config for this very pack, not older than `served` (what the hub holds now)."""
    meta = configmap.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    pack = str((meta.get("annotations") or {}).get(ANNOTATION_PACK) or "")
    text = (configmap.get("data") or {}).get(CONFIG_KEY)
    if not pack or meta.get("name") != configmap_name(pack):
        raise Damaged("it names no PolicyPack, or not the one its name belongs to")
    if not isinstance(text, str):
        raise Damaged(f"it has no {CONFIG_KEY}")
    try:
        signed = signing.verify(text, trusted, namespace, pack)
    except signing.SignatureError as exc:
        raise Damaged(str(exc)) from None
    if served is not None and not signing.newer_or_same(
        signed,
        signing.Signed("", namespace, pack, served.uid, served.generation, ""),
    ):
        raise Damaged(
            f"it holds generation {signed.generation}, older than generation "
            f"{served.generation} in force (a rollback)"
        )
    try:
        config_hash = load_text(signed.body).hash
    except ConfigError as exc:  # signed, so ours; only a bug or an old version gets here
        raise Damaged(f"its config does not load: {exc}") from None
    return Published(namespace, pack, config_hash, text, signed.uid, signed.generation)


async def feed_hub(
    kube: Kube,
    hub: Hub,
    namespace: str | None,
    ready: asyncio.Event,
    accept: Callable[[str], bool] | None = None,
    on_damaged: Callable[[str, str, str], None] | None = None,
    trusted: Mapping[str, Any] | None = None,
) -> None:
    """Keep `hub` equal to the packgate ConfigMaps of `namespace` (None: all), forever.

    `on_damaged(namespace, pack, problem)` is called for a ConfigMap deleted, or holding
    anything but the operator's signed config for its pack (problem "" when deleted).
    """
    keys = trusted or {}

    def wanted(obj: dict[str, Any]) -> bool:
        return accept is None or accept(str((obj.get("metadata") or {}).get("namespace", "")))

    def damaged(obj: dict[str, Any], problem: str = "") -> None:
        meta = obj.get("metadata") or {}
        pack = (meta.get("annotations") or {}).get(ANNOTATION_PACK)
        if pack and on_damaged is not None:
            on_damaged(str(meta.get("namespace", "")), str(pack), problem)

    def publishable(obj: dict[str, Any], snapshot: bool = False) -> Published | None:
        meta = obj.get("metadata") or {}
        pack = str((meta.get("annotations") or {}).get(ANNOTATION_PACK) or "")
        served = None if snapshot else hub.current(str(meta.get("namespace", "")), pack)
        try:
            return published_of(obj, keys, served)
        except Damaged as exc:
            damaged(obj, str(exc))
            return None

    path = f"/api/v1/namespaces/{namespace}/configmaps" if namespace else "/api/v1/configmaps"
    while True:
        try:
            async for kind, obj in kube.watch(path, label_selector=SELECTOR):
                if kind == "SNAPSHOT":
                    items = []
                    for configmap in filter(wanted, obj.get("items", [])):
                        item = publishable(configmap, snapshot=True)
                        if item is not None:
                            items.append(item)
                    hub.replace_namespace_snapshot(namespace, items)
                    ready.set()
                    continue
                if not wanted(obj):
                    continue
                meta = obj.get("metadata") or {}
                pack = (meta.get("annotations") or {}).get(ANNOTATION_PACK)
                if kind == "DELETED":
                    if pack:
                        hub.remove(str(meta.get("namespace", "")), str(pack))
                    damaged(obj)
                    continue
                item = publishable(obj)
                if item is not None:
                    hub.publish(item)
        except KubeError as exc:
            log.warning("ConfigMap watch failed (%s); retrying", exc)
            await asyncio.sleep(0.5)
