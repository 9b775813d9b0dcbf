"""What the operator knows about opted-in pods, and the status counts derived from it: pure.

Why its own registry instead of kopf's per-object state: kopf would write bookkeeping annotations
onto every pod it handles. Pod events only feed this in-memory map (kopf event handlers keep no
state on the object), and the PolicyPack status counts are computed from it together with what
the sidecars report over their subscriptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import annotations as ann
from .inject import has_sidecar

PackKey = tuple[str, str]  # (namespace, PolicyPack name)


@dataclass(frozen=True)
class PodRecord:
    namespace: str
    name: str
    uid: str
    pack: str
    has_sidecar: bool
    injected_hash: str  # from packgate.dev/status; "" when absent
    terminating: bool = False


@dataclass(frozen=True)
class Report:
    """What a sidecar last said about itself: the hash it runs, and when."""

    hash: str
    seen: float
    polling: bool  # a subscription request is open right now
    # "<source>:<reason>:<digest>" of the last config the sidecar refused (not signed by the
    # operator, altered, rolled back); "" when none.
    refused: str = ""


@dataclass(frozen=True)
class Counts:
    injected: int
    in_sync: int
    without_sidecar: int

    def as_status(self) -> dict[str, int]:
        return {
            "injectedPods": self.injected,
            "podsInSync": self.in_sync,
            "podsWithoutSidecar": self.without_sidecar,
        }


def record_of(pod: Mapping[str, Any]) -> PodRecord | None:
    """The record of an opted-in pod, or None for pods packgate does not govern."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if not ann.opted_in(annotations):
        return None
    try:
        injected_hash = str(json.loads(annotations.get(ann.STATUS, "{}")).get("configHash", ""))
    except (ValueError, AttributeError):
        injected_hash = ""
    return PodRecord(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        pack=str(annotations.get(ann.POLICY_PACK, "")),
        has_sidecar=has_sidecar(pod),
        injected_hash=injected_hash,
        # A pod on its way out, or one that finished (a completed Job), is not counted.
        terminating=bool(meta.get("deletionTimestamp"))
        or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
    )


class PodRegistry:
    """Opted-in pods by pack; `update` returns the packs whose counts may have changed."""

    def __init__(self) -> None:
        self._by_uid: dict[str, PodRecord] = {}
        self._by_pack: dict[PackKey, dict[str, PodRecord]] = {}

    def update(self, event_type: str | None, pod: Mapping[str, Any]) -> set[PackKey]:
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        touched: set[PackKey] = set()
        old = self._by_uid.pop(uid, None)
        if old is not None:
            key = (old.namespace, old.pack)
            self._by_pack.get(key, {}).pop(uid, None)
            if not self._by_pack.get(key):
                self._by_pack.pop(key, None)
            touched.add(key)
        new = None if event_type == "DELETED" else record_of(pod)
        if new is not None:
            key = (new.namespace, new.pack)
            self._by_uid[uid] = new
            self._by_pack.setdefault(key, {})[uid] = new
            touched.add(key)
        if old == new:
            return set()
        return touched

    def pods(self, key: PackKey) -> list[PodRecord]:
        return list(self._by_pack.get(key, {}).values())

    def get(self, uid: str) -> PodRecord | None:
        return self._by_uid.get(uid)

    def keys(self) -> Iterable[PackKey]:
        return list(self._by_pack)

    def __len__(self) -> int:
        return len(self._by_uid)


def counts(
    pods: Iterable[PodRecord],
    reports: Mapping[str, Report],
    current_hash: str,
    now: float,
    fresh_seconds: float,
) -> Counts:
    """injected: pods with the sidecar; in sync: whose sidecar recently reported `current_hash`."""
    injected = in_sync = without = 0
    for pod in pods:
        if pod.terminating:
            continue
        if not pod.has_sidecar:
            without += 1
            continue
        injected += 1
        report = reports.get(pod.uid)
        if (
            report is not None
            and current_hash
            and report.hash == current_hash
            and (report.polling or now - report.seen <= fresh_seconds)
        ):
            in_sync += 1
    return Counts(injected, in_sync, without)
