"""Convergence and drift: PolicyPack status counts, the InSync condition, drift Events and metrics.

Why a loop of its own instead of per-pod handlers: counts change on every pod event and on every
sidecar report, and writing the status for each would flood the API at scale. Changes only mark
their pack dirty; this loop wakes, waits a short debounce so a burst becomes one write, and
writes a pack's counts only when they differ from what it last wrote.

It also turns what sidecars report into something people see: a sidecar that refused a config
not signed by the operator (a forged ConfigMap, see packgate_policy.signing) gives a Warning Event
on its pod, the gauge packgate_operator_pods_refusing_config and the pack's ConfigTrusted
condition; pods naming a PolicyPack that does not exist get a Warning Event and the gauge
packgate_operator_pods_without_pack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from .context import Context
from .kube import KubeError, NotFound
from .pods import Counts, PackKey, PodRecord, counts
from .render import condition, in_sync_condition, now_iso
from .replicas import merge

log = logging.getLogger(__name__)
MANAGER = "packgate-operator-convergence"
# The webhook configuration never sends these namespaces' pods (the chart and
# cluster/operator_process.py alike).
UNINJECTABLE_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def _pod_ref(pod: PodRecord) -> dict[str, str]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
    }


def sidecar_missing_message(pod: PodRecord) -> str:
    head = f"pod opted in to packgate (PolicyPack {pod.pack}) but runs without the packgate-sidecar"
    if pod.namespace in UNINJECTABLE_NAMESPACES:
        return (
            f"{head}: the webhook is never called for namespace {pod.namespace}, so recreating "
            "the pod will not inject it; run the workload in another namespace, or remove "
            "packgate.dev/inject"
        )
    return (
        f"{head}: it was created while the webhook was unavailable or before packgate was "
        "installed, so its LLM traffic is not governed; delete the pod so its controller "
        "recreates it with the sidecar"
    )


class Reporter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.written: dict[PackKey, tuple[Counts, str, int, tuple[str, ...]]] = {}
        self.conditions: dict[PackKey, dict[str, dict[str, Any]]] = {}
        self.drift_reported: set[str] = set()
        self.refusals_reported: set[tuple[str, str]] = set()
        self.orphans_reported: set[str] = set()

    @property
    def fresh_seconds(self) -> float:
        # A sidecar re-polls right after each answer, so two waits without a word means gone.
        return 2 * self.ctx.settings.poll_wait_seconds + 10

    async def run(self) -> None:
        ctx = self.ctx
        last_sweep = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.dirty.wait(), timeout=10)
            await asyncio.sleep(ctx.settings.status_debounce_seconds)
            if time.monotonic() - last_sweep > 10:
                # Freshness expires with time, not with events: recheck every pack now and then.
                last_sweep = time.monotonic()
                ctx.hub.expire_reports(self.fresh_seconds)
                self.drift_reported = {uid for uid in self.drift_reported if ctx.pods.get(uid)}
                self.orphans_reported = {u for u in self.orphans_reported if ctx.pods.get(u)}
                self.refusals_reported = {r for r in self.refusals_reported if ctx.pods.get(r[0])}
                ctx.dirty.mark(set(ctx.pods.keys()) | set(ctx.packs))
            for key in sorted(ctx.dirty.take()):
                try:
                    await self.update(key)
                except KubeError as exc:
                    log.warning("status update of %s/%s failed: %s; will retry", *key, exc)
                    ctx.dirty.mark([key])
                    await asyncio.sleep(1)

    async def update(self, key: PackKey) -> None:
        ctx = self.ctx
        namespace, pack = key
        pods = ctx.pods.pods(key)
        current = ctx.hub.current_hash(key)
        clock = time.monotonic()
        reports = ctx.hub.reports
        if ctx.replicas is not None:  # sidecars polling the other replicas count too
            reports = merge(ctx.hub.reports, ctx.replicas.remote, clock)
        result = counts(pods, reports, current, clock, self.fresh_seconds)
        ctx.metrics.packs.set(ctx.hub.packs)
        gauges = (
            ctx.metrics.pods_without_sidecar,
            ctx.metrics.pods_injected,
            ctx.metrics.pods_in_sync,
        )
        if not pods and key not in ctx.packs:
            for gauge in (*gauges, ctx.metrics.config_refusals, ctx.metrics.pods_orphaned):
                # neither pack nor pods: drop the series instead of a stale 0
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, pack)
            self.written.pop(key, None)
            self.conditions.pop(key, None)
            return
        await self._orphans(key, pods)
        for gauge, value in zip(
            gauges, (result.without_sidecar, result.injected, result.in_sync), strict=True
        ):
            gauge.labels(namespace, pack).set(value)
        for pod in pods:
            if not pod.has_sidecar and not pod.terminating and pod.uid not in self.drift_reported:
                await ctx.kube.create_event(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod.name,
                        "namespace": pod.namespace,
                        "uid": pod.uid,
                    },
                    "Warning",
                    "SidecarMissing",
                    sidecar_missing_message(pod),
                    name=f"{pod.name[:200]}.packgate-sidecar-missing.{pod.uid[:8]}",
                )
                self.drift_reported.add(pod.uid)
        refusing = await self._refusals(key, pods)
        info = ctx.packs.get(key)
        if info is None:
            return
        if ctx.replicas is not None and not ctx.replicas.state.active:
            return  # a replica that stopped reconciling leaves the status to the one that does
        if self.written.get(key) == (result, current, info.generation, refusing):
            return
        previous = self.conditions.get(key, {})
        now = now_iso()
        cond = in_sync_condition(
            [previous["InSync"]] if "InSync" in previous else [],
            result.injected,
            result.in_sync,
            current,
            info.generation,
            now,
        )
        trusted = condition(
            [previous["ConfigTrusted"]] if "ConfigTrusted" in previous else [],
            "ConfigTrusted",
            not refusing,
            "UnsignedConfigRefused" if refusing else "OnlySignedConfigs",
            (
                f"{len(refusing)} sidecar(s) refused a config the operator did not sign and "
                f"keep their last good config: {'; '.join(refusing)[:900]}; the ConfigMap was "
                "edited outside the operator (see ConfigMapTampered events)"
            )
            if refusing
            else "no sidecar reports a config without the operator's signature",
            info.generation,
            now,
        )
        status = {**result.as_status(), "conditions": [cond, trusted]}
        try:
            await ctx.kube.apply_policypack_status(namespace, pack, status, MANAGER)
        except NotFound:
            return
        self.written[key] = (result, current, info.generation, refusing)
        self.conditions[key] = {"InSync": cond, "ConfigTrusted": trusted}

    async def _refusals(self, key: PackKey, pods: list[PodRecord]) -> tuple[str, ...]:
        """Pods whose sidecar reports a refused config: gauge, one Event per pod and refusal."""
        ctx = self.ctx
        refusing = []
        for pod in pods:
            report = ctx.hub.reports.get(pod.uid)
            if report is None or not report.refused or pod.terminating:
                continue
            source, reason, _ = [*report.refused.split(":"), "", ""][:3]
            refusing.append(f"pod {pod.name}: {reason} config from {source}")
            if (pod.uid, report.refused) in self.refusals_reported:
                continue
            self.refusals_reported.add((pod.uid, report.refused))
            await ctx.kube.create_event(
                _pod_ref(pod),
                "Warning",
                "UnsignedConfigRefused",
                f"the packgate sidecar refused a config from its {source} ({reason}): it was "
                f"not signed by the operator for PolicyPack {pod.pack}. The last good config "
                "stays in force. Someone changed the pack's ConfigMap outside the operator.",
            )
        ctx.metrics.config_refusals.labels(*key).set(len(refusing))
        return tuple(sorted(refusing))

    async def _orphans(self, key: PackKey, pods: list[PodRecord]) -> None:
        """Pods naming a PolicyPack that does not exist: gauge and one Event per pod."""
        ctx = self.ctx
        live = [p for p in pods if not p.terminating and p.pack]
        if key in ctx.packs or not live:
            with contextlib.suppress(KeyError):
                ctx.metrics.pods_orphaned.remove(*key)
            return
        unreported = not all(p.uid in self.orphans_reported for p in live)
        if unreported and await ctx.kube.get_policypack(*key) is not None:
            return  # exists, not reconciled yet (or another replica reconciles it)
        ctx.metrics.pods_orphaned.labels(*key).set(len(live))
        for pod in live:
            if pod.uid in self.orphans_reported:
                continue
            self.orphans_reported.add(pod.uid)
            await ctx.kube.create_event(
                _pod_ref(pod),
                "Warning",
                "PolicyPackMissing",
                f"the pod uses PolicyPack {pod.pack} (packgate.dev/policy-pack), which does not "
                f"exist in namespace {pod.namespace}: its sidecar keeps enforcing the last config "
                "it had and receives no changes. Recreate the pack, or point the pod at another.",
                name=f"{pod.name[:200]}.packgate-pack-missing.{pod.uid[:8]}",
            )
