"""The authenticated push channel: sidecars subscribe, the operator answers with each new config.

Protocol (one long poll at a time per sidecar, over HTTPS verified with the operator's CA):

    GET /v1/namespaces/{namespace}/pods/{pod}/config?running=<hash>&seen=<hash>&wait=<seconds>
    Authorization: Bearer <projected service-account token, audience "packgate">

    200 {"namespace", "pod", "pack", "hash", "config"}   the pack's config differs from both hashes
    304                                                   nothing new within `wait` seconds
    401 / 403 {"error": ...}                              who you are / what you may read

`running` is the hash the sidecar enforces (this is its convergence report); `seen` is the last
hash it was sent, so a config the sidecar refused is not sent again in a loop. The token is
verified with a TokenReview and must be bound to the pod named in the path (the apiserver puts
the pod's name and uid in the token), so a sidecar reads only its own pod's pack in its own
namespace. Nothing here accepts config: the channel is one-way, operator to sidecar.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from packgate_policy import ConfigError, load_text

from . import annotations as ann
from .hub import Hub, Published
from .kube import Kube, KubeError, TokenIdentity
from .metrics import Metrics
from .render import ANNOTATION_HASH, ANNOTATION_PACK, CONFIG_KEY, LABEL_MANAGED_BY, MANAGED_BY

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

    def __init__(self, kube: Kube, audience: str, ttl: float = 30.0) -> None:
        self._kube = kube
        self._audience = audience
        self._ttl = ttl
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
                raise Refused(
                    503, "tokenreview-failed", f"cannot verify the token now: {exc}"
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
    """Which pack a pod uses, from its annotations; cached by pod uid for a few seconds."""

    def __init__(self, kube: Kube, ttl: float = 10.0) -> None:
        self._kube = kube
        self._ttl = ttl
        self._cache: dict[str, _Cached] = {}

    async def pack_of(self, identity: TokenIdentity) -> str:
        now = time.monotonic()
        hit = self._cache.get(identity.pod_uid)
        if hit is not None and hit.expires > now:
            return str(hit.value)
        pod = await self._kube.get_pod(identity.namespace, identity.pod_name)
        meta = (pod or {}).get("metadata") or {}
        if pod is None or meta.get("uid") != identity.pod_uid:
            raise Refused(403, "pod-gone", "the pod this token is bound to no longer exists")
        annotations = meta.get("annotations") or {}
        if not ann.opted_in(annotations) or not annotations.get(ann.POLICY_PACK):
            raise Refused(
                403, "not-opted-in", f"pod {identity.pod_name} has not opted in to packgate"
            )
        pack = str(annotations[ann.POLICY_PACK])
        if len(self._cache) > 20000:
            self._cache = {k: v for k, v in self._cache.items() if v.expires > now}
        self._cache[identity.pod_uid] = _Cached(pack, now + self._ttl)
        return pack


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
        except Refused as refused:
            self.metrics.subscription_rejections.labels(refused.reason).inc()
            log.info("subscription refused (%s): %s", refused.reason, refused)
            return web.json_response(
                {"error": {"reason": refused.reason, "message": str(refused)}},
                status=refused.status,
            )

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
        self.hub.report(identity.pod_uid, key, running, polling=True)
        self.metrics.subscriptions.set(self.hub.subscriptions)
        try:
            item = await self.hub.wait(namespace, pack, known, wait)
        finally:
            self.hub.report(identity.pod_uid, key, running, polling=False)
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


# --- feeding the hub from the rendered ConfigMaps ------------------------------------------------


def published_of(configmap: dict[str, Any]) -> Published | None:
    """The config a packgate ConfigMap carries, if its text really has the hash it claims.

    A ConfigMap edited by hand is not pushed (sidecars keep what they run) and is re-rendered.
    """
    meta = configmap.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    text = (configmap.get("data") or {}).get(CONFIG_KEY)
    pack, config_hash = annotations.get(ANNOTATION_PACK), annotations.get(ANNOTATION_HASH)
    if not (text and pack and config_hash):
        return None
    try:
        if load_text(str(text)).hash != config_hash:
            return None
    except ConfigError:
        return None
    return Published(str(meta.get("namespace", "")), str(pack), str(config_hash), str(text))


async def feed_hub(
    kube: Kube,
    hub: Hub,
    namespace: str | None,
    ready: asyncio.Event,
    accept: Callable[[str], bool] | None = None,
    on_damaged: Callable[[str, str], None] | None = None,
) -> None:
    """Keep `hub` equal to the packgate ConfigMaps of `namespace` (None: all), forever.

    `on_damaged(namespace, pack)` is called for a ConfigMap deleted or edited by hand.
    """

    def wanted(obj: dict[str, Any]) -> bool:
        return accept is None or accept(str((obj.get("metadata") or {}).get("namespace", "")))

    def damaged(obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        pack = (meta.get("annotations") or {}).get(ANNOTATION_PACK)
        if pack and on_damaged is not None:
            on_damaged(str(meta.get("namespace", "")), str(pack))

    path = f"/api/v1/namespaces/{namespace}/configmaps" if namespace else "/api/v1/configmaps"
    while True:
        try:
            async for kind, obj in kube.watch(path, label_selector=SELECTOR):
                if kind == "SNAPSHOT":
                    items = []
                    for configmap in filter(wanted, obj.get("items", [])):
                        item = published_of(configmap)
                        if item is None:
                            damaged(configmap)
                        else:
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
                item = published_of(obj)
                if item is None:
                    damaged(obj)
                else:
                    hub.publish(item)
        except KubeError as exc:
            log.warning("ConfigMap watch failed (%s); retrying", exc)
            await asyncio.sleep(2)
