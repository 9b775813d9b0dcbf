"""Thin kopf handlers: PolicyPack -> ConfigMap + status; pod events -> the in-memory pod registry.

Why thin: the decisions (what to render, what the status says) are pure functions in render.py,
and the API calls live in kube.py; these handlers only wire kopf's events to them. Pods are
watched with event handlers, which keep no state on the object, so kopf writes nothing onto pods.
An invalid spec does not raise (retrying cannot fix it): it is reported in an Event and in the
Valid condition, and the last good ConfigMap stays untouched, so sidecars keep enforcing it.
The PolicyPack is the only source of truth: every rendered config is signed (render.signed_text)
and published to the hub straight from here; a ConfigMap that holds anything else is put back
(`repair`), with a Warning Event when someone other than the operator wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from packgate_policy import ConfigError

from .context import Context, PackInfo
from .hub import Published
from .kube import KubeError, NotFound, involved_pack
from .render import (
    GROUP,
    PLURAL,
    VERSION,
    configmap_body,
    configmap_name,
    issues_text,
    now_iso,
    render,
    signed_text,
    status_invalid,
    status_valid,
)

log = logging.getLogger(__name__)
STATUS_MANAGER = "packgate-operator"


def _same(status: dict[str, Any], previous: dict[str, Any]) -> bool:
    """Would applying `status` change nothing? (Conditions compare by type: others own some.)"""
    for key, value in status.items():
        if key != "conditions":
            if previous.get(key) != value:
                return False
            continue
        before = {c.get("type"): c for c in previous.get("conditions") or []}
        if any(before.get(c["type"]) != c for c in value):
            return False
    return True


async def reconcile(ctx: Context, body: Mapping[str, Any]) -> None:
    """Render one PolicyPack into its ConfigMap and status; idempotent."""
    meta = dict(body.get("metadata") or {})
    namespace, name = str(meta["namespace"]), str(meta["name"])
    generation = int(meta.get("generation") or 0)
    previous = dict(body.get("status") or {})
    raw = {"metadata": meta, "spec": dict(body.get("spec") or {})}
    if meta.get("deletionTimestamp"):
        return  # being deleted: the garbage collector removes the ConfigMap, do not recreate it
    ctx.packs[(namespace, name)] = PackInfo(uid=str(meta.get("uid", "")), generation=generation)
    now = now_iso()
    try:
        rendered = render(raw["spec"])
    except ConfigError as exc:
        problems = issues_text(exc)
        status = status_invalid(previous, problems, generation, now)
        was = previous.get("conditions") or []
        already = any(
            c.get("type") == "Valid"
            and c.get("status") == "False"
            and c.get("message") == "; ".join(problems)
            for c in was
        )
        if not already:
            kept = (
                f"; config {previous['configHash']} stays in force"
                if previous.get("configHash")
                else ""
            )
            await ctx.kube.create_event(
                involved_pack(raw),
                "Warning",
                "InvalidSpec",
                f"spec (generation {generation}) is not a valid policy config{kept}:\n"
                + "\n".join(problems),
            )
        if not _same(status, previous):
            await ctx.kube.apply_policypack_status(namespace, name, status, STATUS_MANAGER)
        ctx.metrics.reconciles.labels("invalid").inc()
        log.info("PolicyPack %s/%s is invalid: %s", namespace, name, "; ".join(problems))
        return
    text = signed_text(raw, rendered, ctx.signer)
    await ctx.kube.apply_configmap(configmap_body(raw, rendered, text))
    ctx.hub.publish(
        Published(namespace, name, rendered.hash, text, str(meta.get("uid", "")), generation)
    )
    status = status_valid(previous, rendered, generation, now, configmap_name(name))
    if not _same(status, previous):
        await ctx.kube.apply_policypack_status(namespace, name, status, STATUS_MANAGER)
    if previous.get("configHash") != rendered.hash:
        await ctx.kube.create_event(
            involved_pack(raw),
            "Normal",
            "ConfigRendered",
            f"generation {generation} rendered into ConfigMap {configmap_name(name)} "
            f"as {rendered.hash}",
        )
    ctx.metrics.reconciles.labels("rendered").inc()
    ctx.dirty.mark([(namespace, name)])


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)
    async def reconcile_pack(body: kopf.Body, **_: Any) -> None:
        try:
            await reconcile(ctx, body)
        except NotFound:
            return  # deleted while we worked; the ConfigMap goes with it
        except KubeError as exc:
            raise kopf.TemporaryError(f"API call failed: {exc}", delay=2) from exc

    # Event handlers are coroutines on purpose: kopf runs plain functions in a thread pool, and
    # these touch loop-bound state (the registry, asyncio events).
    @kopf.on.event(*resource, id="track-pack", registry=registry)
    async def track_pack(type: str, body: kopf.Body, **_: Any) -> None:
        key = (str(body.metadata.namespace), str(body.metadata.name))
        if type == "DELETED":
            ctx.packs.pop(key, None)
            ctx.dirty.mark([key])

    @kopf.on.event("v1", "pods", id="track-pod", registry=registry)
    async def track_pod(type: str, body: kopf.Body, **_: Any) -> None:
        raw = {key: body[key] for key in body}
        touched = ctx.pods.update(type, raw)
        if type == "DELETED":
            ctx.hub.forget(str(body.metadata.uid))
        if touched:
            ctx.dirty.mark(touched)


async def repair(ctx: Context, namespace: str, name: str, problem: str = "") -> None:
    """Re-render a pack whose ConfigMap was deleted or holds what the operator did not sign."""
    if (namespace, name) not in ctx.packs:
        return  # the pack is gone (or never rendered): the ConfigMap goes with it
    try:
        pack = await ctx.kube.get_policypack(namespace, name)
        if pack is not None:
            log.warning(
                "ConfigMap of PolicyPack %s/%s %s; rendering it again",
                namespace,
                name,
                f"was altered: {problem}" if problem else "was deleted",
            )
            if problem:
                ctx.metrics.tampered.labels(namespace, name).inc()
                await ctx.kube.create_event(
                    involved_pack(pack),
                    "Warning",
                    "ConfigMapTampered",
                    f"ConfigMap {configmap_name(name)} was changed outside the operator "
                    f"({problem}); it was restored from the PolicyPack, and sidecars enforce "
                    "only configs the operator signed. Check who may edit ConfigMaps here.",
                )
            await reconcile(ctx, pack)
    except KubeError as exc:
        log.warning("repair of %s/%s failed: %s", namespace, name, exc)
