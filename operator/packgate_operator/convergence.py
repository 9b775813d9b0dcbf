"""Convergence and drift: PolicyPack status counts, the InSync condition, drift Events and metrics.

Why a loop of its own instead of per-pod handlers: counts change on every pod event and on every
sidecar report, and writing the status for each would flood the API at scale. Changes only mark
their pack dirty; this loop wakes, waits a short debounce so a burst becomes one write, and
writes a pack's counts only when they differ from what it last wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .context import Context
from .kube import KubeError, NotFound
from .pods import Counts, PackKey, counts
from .render import in_sync_condition, now_iso

log = logging.getLogger(__name__)
MANAGER = "packgate-operator-convergence"


class Reporter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.written: dict[PackKey, tuple[Counts, str, int]] = {}
        self.conditions: dict[PackKey, dict[str, object]] = {}
        self.drift_reported: set[str] = set()

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
        result = counts(pods, ctx.hub.reports, current, time.monotonic(), self.fresh_seconds)
        ctx.metrics.packs.set(ctx.hub.packs)
        gauges = (
            ctx.metrics.pods_without_sidecar,
            ctx.metrics.pods_injected,
            ctx.metrics.pods_in_sync,
        )
        if not pods and key not in ctx.packs:
            for gauge in gauges:  # neither pack nor pods: drop the series instead of a stale 0
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, pack)
            self.written.pop(key, None)
            self.conditions.pop(key, None)
            return
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
                    f"pod opted in to packgate (PolicyPack {pack}) but runs without the "
                    "packgate-sidecar: it was created while the webhook was unavailable or "
                    "before packgate was installed, so its LLM traffic is not governed; "
                    "delete the pod so its controller recreates it with the sidecar",
                    name=f"{pod.name[:200]}.packgate-sidecar-missing.{pod.uid[:8]}",
                )
                self.drift_reported.add(pod.uid)
        info = ctx.packs.get(key)
        if info is None:
            return
        if self.written.get(key) == (result, current, info.generation):
            return
        previous = [self.conditions[key]] if key in self.conditions else []
        cond = in_sync_condition(
            previous, result.injected, result.in_sync, current, info.generation, now_iso()
        )
        status = {**result.as_status(), "conditions": [cond]}
        try:
            await ctx.kube.apply_policypack_status(namespace, pack, status, MANAGER)
        except NotFound:
            return
        self.written[key] = (result, current, info.generation)
        self.conditions[key] = cond
