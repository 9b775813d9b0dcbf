"""Blocks and fail-opens as Kubernetes Events, aggregated so etcd is not flooded.

Why it exists: ``kubectl describe pod`` and ``kubectl get events`` are where people look first.
Every block or fail-open the collector stores is counted under (pod, kind, policy, reason code);
every ``interval`` seconds each series that moved is written once: created as a Warning Event
with its count the first time, its count and last-seen time patched afterwards, so one
violation kind on one pod is one Event row whose COUNT grows (as the kubelet's own repeated
Events look), at most one API write per series per interval. Each PolicyPack gets one summary
Event the same way. Quarantined records and sequence gaps become Events on the pod as well.

An Event that expired (the apiserver keeps them an hour by default) or that an earlier
collector process created is found by name and continued, not duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..kube import Kube, KubeError, involved_pack
from .store import PodKey
from .summary import Incident

log = logging.getLogger(__name__)
COMPONENT = "packgate-audit-collector"
REASONS = {
    "block": "PolicyBlocked",
    "fail_open": "PolicyFailedOpen",
    "quarantined": "AuditRecordQuarantined",
    "gap": "AuditSequenceGap",
}


@dataclass(frozen=True)
class _Series:
    namespace: str
    pod: str
    uid: str
    kind: str
    policy: str
    code: str

    @property
    def name(self) -> str:
        digest = hashlib.sha256(f"{self.kind}|{self.policy}|{self.code}".encode()).hexdigest()
        return f"{self.pod[:200]}.packgate-{digest[:12]}"

    def message(self, total: int) -> str:
        what = {
            "block": f"{self.policy} blocked {total} request(s) ({self.code})",
            "fail_open": f"{self.policy} failed and let {total} request(s) through "
            f"(fail_open, {self.code})",
            "quarantined": f"{total} audit record(s) from this pod failed verification and were "
            f"quarantined ({self.code})",
            "gap": f"{total} gap(s) in this pod's audit sequence ({self.code})",
        }[self.kind]
        return f"{what}; see: packgate audit query --namespace {self.namespace} --pod {self.pod}"


class EventAggregator:
    def __init__(self, kube: Kube, interval: float = 10.0) -> None:
        self.kube = kube
        self.interval = interval
        self._pending: Counter[_Series] = Counter()
        self._totals: dict[_Series, int] = {}
        self._packs: dict[tuple[str, str], Counter[str]] = {}
        self._pack_totals: dict[tuple[str, str], int] = {}
        self.writes = 0
        self.failures = 0

    def note(self, pod: PodKey, pack: str | None, found: Iterable[Incident]) -> None:
        for incident in found:
            self._pending[
                _Series(
                    pod.namespace, pod.pod, pod.uid, incident.kind, incident.policy, incident.code
                )
            ] += 1
            if pack:
                label = (
                    f"{incident.policy} {'blocked' if incident.kind == 'block' else 'failed open'}"
                )
                self._packs.setdefault((pod.namespace, pack), Counter())[label] += 1

    def problem(self, pod: PodKey, kind: str, code: str, count: int = 1) -> None:
        self._pending[_Series(pod.namespace, pod.pod, pod.uid, kind, "audit", code)] += count

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, Counter()
        packs, self._packs = self._packs, {}
        for series, count in pending.items():
            try:
                await self._write_pod(series, count)
            except KubeError as exc:
                self.failures += 1
                self._pending[series] += count  # try again next interval
                log.warning("cannot write Event for %s/%s: %s", series.namespace, series.pod, exc)
        for (namespace, pack), counts in packs.items():
            try:
                await self._write_pack(namespace, pack, counts)
            except KubeError as exc:
                self.failures += 1
                log.warning("cannot write Event for PolicyPack %s/%s: %s", namespace, pack, exc)

    async def _write_pod(self, series: _Series, count: int) -> None:
        involved = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": series.pod,
            "namespace": series.namespace,
            "uid": series.uid,
        }
        total = await self._write(
            series.namespace,
            series.name,
            involved,
            REASONS[series.kind],
            count,
            series.message,
            self._totals.get(series),
        )
        self._totals[series] = total

    async def _write_pack(self, namespace: str, pack: str, counts: Counter[str]) -> None:
        obj = await self.kube.get_policypack(namespace, pack)
        if obj is None:
            return
        key = (namespace, pack)
        shown = ", ".join(f"{label}: {n}" for label, n in counts.most_common(5))

        def message(total: int) -> str:
            return (
                f"{sum(counts.values())} violation(s) in the last {self.interval:g}s "
                f"({shown}); {total} in this series; see: packgate audit query --namespace "
                f"{namespace} --pack {pack}"
            )

        self._pack_totals[key] = await self._write(
            namespace,
            f"{pack[:200]}.packgate-violations",
            involved_pack(obj),
            "PolicyViolations",
            sum(counts.values()),
            message,
            self._pack_totals.get(key),
        )

    async def _write(
        self,
        namespace: str,
        name: str,
        involved: dict[str, str],
        reason: str,
        count: int,
        message: Callable[[int], str],
        known: int | None,
    ) -> int:
        """Create the series' Event or raise its count; returns the count it now shows."""
        self.writes += 1
        if known is not None:
            total = known + count
            if await self.kube.patch_event_count(namespace, name, total, message(total)):
                return total
            # Expired meanwhile (the apiserver's Event TTL): the series starts again.
        created = await self.kube.create_event(
            involved,
            "Warning",
            reason,
            message(count),
            name=name,
            count=count,
            component=COMPONENT,
        )
        if created:
            return count
        # It exists, made by an earlier collector process: continue its count.
        total = (await self.kube.event_count(namespace, name) or 0) + count
        await self.kube.patch_event_count(namespace, name, total, message(total))
        return total
