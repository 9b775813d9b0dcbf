"""Several operator replicas: exactly one reconciles, and every replica's sidecars are counted.

Why: the chart runs two replicas. Both serve the admission webhook and the push channel (a
sidecar subscribes to whichever one the Service picks); kopf peering makes exactly one of them
reconcile PolicyPacks. Two things kopf does not do are done here:

- Distinct priorities. kopf pauses *every* replica when live peers share a priority, so each
  replica ranks itself by its start time (older ranks higher: a rollout's new pod does not
  preempt the working one) with random low digits to break ties between pods started in the
  same second.
- One view of the sidecars. A sidecar's convergence report (the hash it runs) reaches only the
  replica it polls, but the reconciling replica writes `podsInSync`. So every replica publishes
  what its sidecars report in a Lease of its own (owned by its pod, so it goes with it), and the
  reconciling replica merges the Leases that are still being renewed with its own reports.

The pure parts (ranking, who is active, encoding reports) are functions; `Replicas` runs the
publishing and refreshing loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .kube import Kube, KubeError
from .pods import PackKey, Report

log = logging.getLogger(__name__)
REPORTS = "packgate.dev/sidecar-reports"
PEERING_LABEL = "packgate.dev/peering"
LEASE_SECONDS = 30
RENEW_SECONDS = 5.0


def priority(started: float, rng: random.Random | None = None) -> int:
    """Older replicas rank higher; three random digits separate same-second starts."""
    rng = rng or random.SystemRandom()
    return (2**31 - int(started)) * 1000 + rng.randrange(1000)


def _parse_time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class PeeringView:
    """Who reconciles, from the kopf peering object's status."""

    active: bool  # this replica is the live peer with the highest priority
    leader_exists: bool  # some live peer has a priority no other live peer shares


def view(status: Mapping[str, Any], identity: str, now: dt.datetime) -> PeeringView:
    live: dict[str, int] = {}
    for peer, info in status.items():
        if not isinstance(info, Mapping):
            continue
        seen = _parse_time(str(info.get("lastseen", "")))
        if seen is None:
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
        if seen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now:
            live[peer] = int(info.get("priority", 0))
    if not live:
        return PeeringView(active=False, leader_exists=False)
    top = max(live.values())
    leaders = [peer for peer, prio in live.items() if prio == top]
    unique = len(leaders) == 1
    return PeeringView(active=unique and leaders[0] == identity, leader_exists=unique)


def encode_reports(reports: Mapping[str, tuple[PackKey, str]]) -> str:
    """{pod uid: [namespace, pack, hash]}, compact and sorted (so unchanged means equal)."""
    return json.dumps(
        {uid: [key[0], key[1], h] for uid, (key, h) in sorted(reports.items())},
        separators=(",", ":"),
    )


def decode_reports(text: str) -> dict[str, tuple[PackKey, str]]:
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    out: dict[str, tuple[PackKey, str]] = {}
    if isinstance(raw, dict):
        for uid, value in raw.items():
            if (
                isinstance(value, list)
                and len(value) == 3
                and all(isinstance(v, str) for v in value)
            ):
                out[str(uid)] = ((value[0], value[1]), value[2])
    return out


def merge(
    own: Mapping[str, Report], remote: Mapping[str, tuple[PackKey, str]], now: float
) -> dict[str, Report]:
    """Own reports win; remote ones (from renewed Leases) count as fresh."""
    merged = {uid: Report(hash=h, seen=now, polling=True) for uid, (_, h) in remote.items()}
    merged.update(own)
    return merged


@dataclass
class Replicas:
    """Publishes this replica's sidecar reports and keeps the others' and the peering view."""

    kube: Kube
    peering: str
    identity: str
    namespace: str  # where the Leases live: the operator's own namespace
    pod_name: str
    pod_uid: str
    clusterwide: bool
    peering_namespaces: tuple[str, ...] = ()
    remote: dict[str, tuple[PackKey, str]] = field(default_factory=dict)
    state: PeeringView = PeeringView(active=False, leader_exists=False)
    _published: str = ""
    _renewed: float = 0.0

    @property
    def lease_name(self) -> str:
        return f"{self.peering}-{self.pod_name}"[:253]

    async def run(self, own: Any, on_remote_change: Any) -> None:
        """own(): this replica's {uid: (pack, hash)}; on_remote_change(keys): mark packs dirty."""
        while True:
            with contextlib.suppress(KubeError, asyncio.TimeoutError):
                await self._publish(own())
            with contextlib.suppress(KubeError, asyncio.TimeoutError):
                changed = await self._refresh()
                if changed:
                    on_remote_change(changed)
            with contextlib.suppress(KubeError, asyncio.TimeoutError):
                state = await self._peering_view()
                if state != self.state:
                    log.info(
                        "peering %s: this replica %s",
                        self.peering,
                        "reconciles"
                        if state.active
                        else "stands by"
                        if state.leader_exists
                        else "stands by and no replica reconciles",
                    )
                self.state = state
            await asyncio.sleep(1.0)

    async def _publish(self, reports: Mapping[str, tuple[PackKey, str]]) -> None:
        text = encode_reports(reports)
        if text == self._published and time.monotonic() - self._renewed < RENEW_SECONDS:
            return
        await self.kube.apply_lease(
            self.namespace,
            self.lease_name,
            holder=self.identity,
            duration=LEASE_SECONDS,
            labels={PEERING_LABEL: self.peering},
            annotations={REPORTS: text},
            owner={"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.pod_uid}
            if self.pod_uid
            else None,
        )
        self._published, self._renewed = text, time.monotonic()

    async def _refresh(self) -> set[PackKey]:
        leases = await self.kube.list_leases(self.namespace, f"{PEERING_LABEL}={self.peering}")
        now = dt.datetime.now(dt.UTC)
        remote: dict[str, tuple[PackKey, str]] = {}
        for lease in leases:
            if lease["metadata"]["name"] == self.lease_name:
                continue
            spec = lease.get("spec", {})
            renewed = _parse_time(str(spec.get("renewTime", "")))
            duration = int(spec.get("leaseDurationSeconds", LEASE_SECONDS))
            if renewed is None or renewed + dt.timedelta(seconds=duration) < now:
                continue  # its replica is gone or stuck: its sidecars have moved or will
            annotations = lease["metadata"].get("annotations", {})
            remote.update(decode_reports(annotations.get(REPORTS, "{}")))
        changed = {key for uid, (key, h) in remote.items() if self.remote.get(uid) != (key, h)}
        changed |= {key for uid, (key, _) in self.remote.items() if uid not in remote}
        self.remote = remote
        return changed

    async def _peering_view(self) -> PeeringView:
        if self.clusterwide:
            status = await self.kube.get_peering_status(self.peering, None)
        else:
            # Namespaced peering: one KopfPeering per served namespace; kopf runs per namespace,
            # the first one speaks for the set (they all have the same peers and priorities).
            status = await self.kube.get_peering_status(self.peering, self.peering_namespaces[0])
        return view(status, self.identity, dt.datetime.now(dt.UTC))
