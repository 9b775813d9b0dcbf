"""Who may read which namespace's audit records, and which MAC key and retention a pod's chain has.

Why it exists: the collector holds every namespace's records, so reading them must follow the
cluster's own permissions rather than a second user database. A reader presents their Kubernetes
bearer token; a TokenReview says who they are, and a SubjectAccessReview per namespace says
whether they may ``get`` PolicyPacks there: whoever may read a namespace's policy may read what it
did, nobody else. Answers are cached briefly (a revoked binding takes effect within ``ttl``).

The same module looks up what a shipping pod's chain is checked against: the namespace's audit
MAC key (the Secret the chart names, key ``audit-key``, the one the injector gives the sidecar)
and its pack's ``retention_days``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from typing import Any

from packgate_policy import AuditLogger
from packgate_sidecar.audit.chain import key_id
from packgate_sidecar.audit.keys import AuditKeyError, decode_key

from ..inject import AUDIT_KEY_KEY
from ..kube import Kube, KubeError, UserInfo
from ..propagate import Refused
from ..render import GROUP, PLURAL

_DEFAULT_RETENTION = AuditLogger.model_fields["retention_days"].default


class Readers:
    def __init__(self, kube: Kube, ttl: float = 30.0) -> None:
        self.kube = kube
        self.ttl = ttl
        self._users: dict[str, tuple[float, UserInfo | None]] = {}
        self._grants: dict[tuple[str, str], tuple[float, bool]] = {}

    async def user(self, header: str) -> UserInfo:
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise Refused(
                401,
                "no-token",
                "send your Kubernetes token as Authorization: Bearer (for example the output of "
                "`kubectl create token <service-account>`)",
            )
        token = header[7:].strip()
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._users.get(key)
        if hit is not None and hit[0] > now:
            user = hit[1]
        else:
            try:
                user = await self.kube.review_user_token(token)
            except KubeError as exc:
                raise Refused(
                    503, "tokenreview-failed", f"cannot verify the token: {exc}"
                ) from None
            if len(self._users) > 10000:
                self._users.clear()
            self._users[key] = (now + (self.ttl if user else 5.0), user)
        if user is None:
            raise Refused(401, "invalid-token", "the token is not valid for this cluster")
        return user

    async def allowed(self, user: UserInfo, namespaces: Iterable[str]) -> list[str]:
        """The namespaces among ``namespaces`` whose PolicyPacks ``user`` may get."""
        who = user.username + "|" + ",".join(user.groups)
        now = time.monotonic()
        wanted = list(namespaces)
        unknown = [
            ns for ns in wanted if (hit := self._grants.get((who, ns))) is None or hit[0] <= now
        ]
        if unknown:
            try:
                answers = await asyncio.gather(
                    *(self.kube.may(user, "get", GROUP, PLURAL, ns) for ns in unknown)
                )
            except KubeError as exc:
                raise Refused(503, "sar-failed", f"cannot check permissions: {exc}") from None
            if len(self._grants) > 50000:
                self._grants.clear()
            for ns, ok in zip(unknown, answers, strict=True):
                self._grants[(who, ns)] = (now + self.ttl, ok)
        return [ns for ns in wanted if self._grants[(who, ns)][1]]


class Keyring:
    """The audit MAC keys per namespace; None for a namespace means "no key configured"."""

    def __init__(self, kube: Kube, secret: str, ttl: float = 60.0) -> None:
        self.kube = kube
        self.secret = secret
        self.ttl = ttl
        self._cache: dict[str, tuple[float, dict[str, bytes] | None]] = {}
        self._current: dict[str, bytes | None] = {}

    async def current(self, namespace: str) -> bytes | None:
        """The key the namespace's Secret holds now (what the collector seals with)."""
        await self.keys(namespace)
        return self._current.get(namespace)

    async def keys(self, namespace: str, kids: Iterable[str] = ()) -> dict[str, bytes] | None:
        if not self.secret:
            return None
        now = time.monotonic()
        hit = self._cache.get(namespace)
        # A key id we do not know may mean the Secret was rotated: look again (at most every 5 s).
        stale = (
            hit is not None
            and any(k not in (hit[1] or {}) for k in kids)
            and (hit[0] - self.ttl + 5.0 < now)
        )
        if hit is None or hit[0] < now or stale:
            try:
                raw = await self.kube.get_secret_key(namespace, self.secret, AUDIT_KEY_KEY)
            except KubeError as exc:
                raise Refused(503, "key-unavailable", f"cannot read the audit key: {exc}") from None
            found: dict[str, bytes] | None = None
            key: bytes | None = None
            if raw is not None:
                try:
                    key = decode_key(raw, f"Secret {namespace}/{self.secret}")
                except AuditKeyError:
                    key = None
            self._current[namespace] = key
            if key is not None:
                found = {key_id(key): key}
                if hit is not None and hit[1]:
                    found = {**hit[1], **found}  # keep the old key for records in flight
            hit = self._cache[namespace] = (now + self.ttl, found)
        return hit[1]


class Retention:
    """``retention_days`` of a namespace's pack, from the PolicyPack (cached)."""

    def __init__(self, kube: Kube, ttl: float = 60.0) -> None:
        self.kube = kube
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, int | None]] = {}

    async def days(self, namespace: str, pack: str | None) -> int | None:
        if not pack:
            return None
        now = time.monotonic()
        hit = self._cache.get((namespace, pack))
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            obj = await self.kube.get_policypack(namespace, pack)
        except KubeError:
            return hit[1] if hit is not None else None
        days = retention_of(obj) if obj is not None else None
        self._cache[(namespace, pack)] = (now + self.ttl, days)
        return days


def retention_of(policypack: dict[str, Any]) -> int:
    spec = policypack.get("spec") or {}
    block = (spec.get("policy") or {}).get("audit-logger") or {}
    days = block.get("retention_days", _DEFAULT_RETENTION)
    return days if isinstance(days, int) and days >= 1 else int(_DEFAULT_RETENTION)
