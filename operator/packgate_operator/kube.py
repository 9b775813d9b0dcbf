"""The only module that calls the Kubernetes API (kopf's own machinery aside).

Why a small aiohttp client instead of the `kubernetes` package's API classes: those are
synchronous, and the subscription endpoint must verify tokens for hundreds of sidecars at once
without a thread per call. Credentials still come from the `kubernetes` package (kubeconfig or the
in-cluster service account, with token refresh), so the operator authenticates like kopf does.
Errors are typed: callers tell "not found" and "conflict" from "the API is unavailable".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .render import API_VERSION, KIND, PLURAL

log = logging.getLogger(__name__)
FIELD_MANAGER = "packgate-operator"


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Gone(KubeError):
    pass


class Unavailable(KubeError):
    """The apiserver could not be reached (down, restarting, timed out): retry, do not crash."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(503, f"the Kubernetes API is unreachable ({type(exc).__name__}: {exc})")


@dataclass(frozen=True)
class TokenIdentity:
    """A verified pod-bound service-account token."""

    username: str
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


@dataclass(frozen=True)
class UserInfo:
    """A person (or any subject) authenticated by a TokenReview, for SubjectAccessReviews."""

    username: str
    uid: str
    groups: tuple[str, ...]
    extra: dict[str, list[str]]


class Kube:
    def __init__(self, host: str, ssl_context: ssl.SSLContext | bool, auth: Any) -> None:
        self.host = host.rstrip("/")
        self._ssl = ssl_context
        self._auth = auth  # kubernetes.client.Configuration, for fresh bearer tokens
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        from kubernetes import client, config  # the sync client is only used for credentials

        cfg = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        if cfg.verify_ssl:
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        else:  # pragma: no cover - only for kubeconfigs that ask for it
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cfg.cert_file and cfg.key_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(cfg.host, context, cfg)

    def connection_info(self) -> dict[str, Any]:
        """The same credentials, in the shape of kopf.ConnectionInfo's arguments."""
        cfg = self._auth
        bearer = (cfg.auth_settings().get("BearerToken") or {}).get("value") or ""
        scheme, _, token = bearer.partition(" ")
        return {
            "server": cfg.host,
            "ca_path": cfg.ssl_ca_cert,
            "insecure": not cfg.verify_ssl,
            "scheme": scheme if token else None,
            "token": token or scheme or None,
            "certificate_path": cfg.cert_file,
            "private_key_path": cfg.key_file,
        }

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._auth is not None:
            bearer = self._auth.auth_settings().get("BearerToken")
            if bearer and bearer.get("value"):
                headers["Authorization"] = bearer["value"]
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout_seconds: float = 15.0,
    ) -> Any:
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        try:
            async with self._client().request(
                method,
                self.host + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(exc) from None
        if status >= 400:
            raise _error(status, text)
        return json.loads(text) if text else None

    # -- PolicyPacks --

    def _pack_path(self, namespace: str, name: str = "") -> str:
        path = f"/apis/{API_VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
        return f"{path}/{quote(name)}" if name else path

    async def get_policypack(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", self._pack_path(namespace, name))
        except NotFound:
            return None
        return result

    async def list_policypack_names(self, namespace: str) -> list[str]:
        try:
            listing = await self.request("GET", self._pack_path(namespace))
        except NotFound:  # the CRD is not installed
            return []
        return sorted(item["metadata"]["name"] for item in listing.get("items", []))

    async def apply_policypack_status(
        self, namespace: str, name: str, status: Mapping[str, Any], manager: str
    ) -> None:
        """Server-side apply of the status fields `manager` owns.

        Two writers share the status (the reconciler: conditions Valid/Ready, hash, generation;
        the convergence reporter: pod counts and InSync). Apply merges `conditions` by type, so
        neither overwrites the other's entries, which a merge patch of the list would.
        """
        await self.request(
            "PATCH",
            self._pack_path(namespace, name) + "/status",
            body={
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "status": dict(status),
            },
            params={"fieldManager": manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    # -- ConfigMaps --

    async def apply_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply: creates or updates in one call; no change leaves it untouched."""
        meta = body["metadata"]
        path = f"/api/v1/namespaces/{quote(meta['namespace'])}/configmaps/{quote(meta['name'])}"
        result: dict[str, Any] = await self.request(
            "PATCH",
            path,
            body=body,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        return result

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request(
                "GET", f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}"
            )
        except NotFound:
            return None
        return result

    # -- replicas (replicas.py): Leases with sidecar reports, kopf's peering object --

    async def apply_lease(
        self,
        namespace: str,
        name: str,
        *,
        holder: str,
        duration: int,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        owner: Mapping[str, str] | None,
    ) -> None:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        }
        if owner is not None:
            meta["ownerReferences"] = [{**owner, "controller": False}]
        await self.request(
            "PATCH",
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases/{quote(name)}",
            body={
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": meta,
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": duration,
                    "renewTime": _now_micro(),
                },
            },
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    async def list_leases(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        listing = await self.request(
            "GET",
            f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases",
            params={"labelSelector": label_selector},
        )
        return list(listing.get("items", []))

    async def get_peering_status(self, name: str, namespace: str | None) -> dict[str, Any]:
        """The status of kopf's (Cluster)KopfPeering: {peer id: {priority, lastseen, ...}}."""
        path = (
            f"/apis/kopf.dev/v1/clusterkopfpeerings/{quote(name)}"
            if namespace is None
            else f"/apis/kopf.dev/v1/namespaces/{quote(namespace)}/kopfpeerings/{quote(name)}"
        )
        try:
            peering = await self.request("GET", path)
        except NotFound:
            return {}
        return dict(peering.get("status") or {})

    # -- pods, tokens, events --

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request(
                "GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
            )
        except NotFound:
            return None
        return result

    async def _review_token(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST a TokenReview; its status (empty when the apiserver gave none)."""
        review = await self.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        return dict(review.get("status") or {})

    async def token_review(self, token: str, audience: str) -> TokenIdentity | None:
        """Who a token belongs to, when it is a valid pod-bound token for `audience`."""
        status = await self._review_token({"token": token, "audiences": [audience]})
        if not status.get("authenticated") or audience not in (status.get("audiences") or []):
            return None
        user = status.get("user") or {}
        username = str(user.get("username", ""))
        extra = user.get("extra") or {}
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        pod_name = (extra.get("authentication.kubernetes.io/pod-name") or [""])[0]
        pod_uid = (extra.get("authentication.kubernetes.io/pod-uid") or [""])[0]
        return TokenIdentity(username, parts[2], parts[3], pod_name, pod_uid)

    async def review_user_token(self, token: str) -> UserInfo | None:
        """Who a person's bearer token belongs to (any authenticator the apiserver trusts, the
        apiserver's own audience), or None when it does not authenticate."""
        status = await self._review_token({"token": token})
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = {str(k): [str(v) for v in vs] for k, vs in (user.get("extra") or {}).items()}
        return UserInfo(
            str(user.get("username", "")),
            str(user.get("uid", "")),
            tuple(str(g) for g in user.get("groups") or ()),
            extra,
        )

    async def may(
        self, user: UserInfo, verb: str, group: str, resource: str, namespace: str
    ) -> bool:
        """A SubjectAccessReview: may `user` do `verb` on `resource` in `namespace`?"""
        review = await self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user.username,
                    "uid": user.uid,
                    "groups": list(user.groups),
                    "extra": {k: list(v) for k, v in user.extra.items()},
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": verb,
                        "group": group,
                        "resource": resource,
                    },
                },
            },
        )
        return bool((review.get("status") or {}).get("allowed"))

    async def get_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        """One key of a Secret, decoded; None when the Secret or the key does not exist."""
        import base64

        try:
            secret = await self.request(
                "GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"
            )
        except NotFound:
            return None
        value = (secret.get("data") or {}).get(key)
        return base64.b64decode(value) if isinstance(value, str) else None

    async def event_count(self, namespace: str, name: str) -> int | None:
        try:
            event = await self.request(
                "GET", f"/api/v1/namespaces/{quote(namespace)}/events/{quote(name)}"
            )
        except NotFound:
            return None
        return int(event.get("count") or 1)

    async def patch_event_count(self, namespace: str, name: str, count: int, message: str) -> bool:
        """Raise an existing Event's count (an aggregated series); False when it is gone."""
        try:
            await self.request(
                "PATCH",
                f"/api/v1/namespaces/{quote(namespace)}/events/{quote(name)}",
                body={"count": count, "lastTimestamp": _now(), "message": message[:1024]},
                content_type="application/merge-patch+json",
            )
        except NotFound:
            return False
        return True

    async def create_event(
        self,
        involved: Mapping[str, str],
        event_type: str,
        reason: str,
        message: str,
        name: str | None = None,
        *,
        count: int = 1,
        component: str = FIELD_MANAGER,
    ) -> bool:
        """Record an Event; a fixed `name` makes it once-only (a second create is a no-op and
        returns False)."""
        namespace = involved["namespace"]
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": (
                {"name": name, "namespace": namespace}
                if name
                else {"generateName": f"{involved['name'][:200]}.", "namespace": namespace}
            ),
            "involvedObject": dict(involved),
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": f"packgate.dev/{component}",
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=body)
        except Conflict:
            return False
        return True

    # -- watching --

    async def watch(
        self, path: str, label_selector: str = "", timeout_seconds: int = 300
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """List then watch `path`, forever; a relist yields ("SNAPSHOT", {"items": [...]})."""
        resource_version = ""
        while True:
            if not resource_version:
                params = {"labelSelector": label_selector} if label_selector else {}
                listing = await self.request("GET", path, params=params)
                resource_version = listing["metadata"]["resourceVersion"]
                yield "SNAPSHOT", listing
            params = {
                "watch": "1",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(timeout_seconds),
            }
            if label_selector:
                params["labelSelector"] = label_selector
            try:
                async with self._client().get(
                    self.host + path,
                    params=params,
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30),
                ) as response:
                    if response.status == 410:
                        resource_version = ""
                        continue
                    if response.status >= 400:
                        raise _error(response.status, await response.text())
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind, obj = event.get("type", ""), event.get("object") or {}
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                resource_version = ""
                            break
                        resource_version = obj.get("metadata", {}).get(
                            "resourceVersion", resource_version
                        )
                        if kind != "BOOKMARK":
                            yield kind, obj
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("watch of %s interrupted (%s); resuming", path, exc)
                await asyncio.sleep(0.5)


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, text: str) -> KubeError:
    try:
        message = json.loads(text).get("message", text)
    except ValueError:
        message = text
    cls = {404: NotFound, 409: Conflict, 410: Gone}.get(status, KubeError)
    return cls(status, str(message)[:2000])


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def involved_pack(pack: Mapping[str, Any]) -> dict[str, str]:
    meta = pack["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid", ""),
    }
