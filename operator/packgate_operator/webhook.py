"""The mutating admission webhook: inject the sidecar into opted-in pods, or say what to fix.

Why reject rather than pass: a pod that asked for governance (`packgate.dev/inject: "true"`) must
never run without it, so a missing or invalid PolicyPack or a malformed annotation denies the pod
with a message naming the problem. Pods without the annotation pass untouched. The handler has
no side effects (sideEffects: None), so a dry-run request gets the same answer and leaves no trace
in metrics. The patch itself is built by inject.py; kopf turns it into the JSON Patch response.

Also refused, each with its reason: a pod in a namespace this operator does not serve (its packs
are never rendered there), a hostNetwork pod (the sidecar's fixed ports would collide on the
node), and a pod using a name packgate reserves (inject.conflicts). A pack whose latest edit is
invalid still admits pods, with the last good config it rendered and a warning saying so.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from packgate_policy import ConfigError, load_text, signing

from . import annotations as ann
from .context import Context
from .inject import BASE_URL, Injection, apply_add_in_place, build_patch
from .kube import KubeError
from .render import configmap_name, issues_text, render
from .reserved import conflicts

log = logging.getLogger(__name__)

# The URL path of the webhook: https://<operator>:<port>/inject-sidecar (kopf routes by handler id).
WEBHOOK_ID = "inject-sidecar"


class Rejected(kopf.AdmissionError):
    """The pod is denied; the message is shown by kubectl and in ReplicaSet events."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__("packgate: " + message, code=code)


async def decide(
    ctx: Context, pod: dict[str, Any], namespace: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The add operations for `pod` and warnings for the user; raises Rejected."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        request = ann.parse_pod_request(annotations, namespace)
    except ann.AnnotationError as exc:
        raise Rejected("; ".join(exc.problems)) from None
    if request is None:
        return [], []
    settings = ctx.settings
    if not settings.serves(namespace):
        raise Rejected(
            f'namespace "{namespace}" is not served by this packgate operator (it serves '
            f"{', '.join(settings.namespaces)}), so no PolicyPack is rendered here and the pod "
            f"cannot be governed; run it in a served namespace, or remove {ann.INJECT}"
        )
    if (pod.get("spec") or {}).get("hostNetwork"):
        raise Rejected(
            "hostNetwork pods cannot be injected: the sidecar listens on fixed ports "
            f"(127.0.0.1:41002 and :{settings.sidecar_admin_port}) that would collide between "
            f"pods on the node; drop hostNetwork, or remove {ann.INJECT}"
        )
    try:
        pack = await ctx.kube.get_policypack(namespace, request.pack)
        names = [] if pack is not None else await ctx.kube.list_policypack_names(namespace)
    except KubeError as exc:
        raise Rejected(
            f"cannot read PolicyPack {namespace}/{request.pack} ({exc}); retry", 503
        ) from None
    if pack is None:
        available = f"PolicyPacks there: {', '.join(names)}" if names else "it has no PolicyPacks"
        raise Rejected(
            f'PolicyPack "{request.pack}" (annotation {ann.POLICY_PACK}) does not exist in '
            f'namespace "{namespace}"; create it or name an existing one ({available})'
        )
    warnings = []
    try:
        loaded = render(pack.get("spec")).loaded
    except ConfigError as exc:
        last_good = ctx.hub.current(namespace, request.pack)
        if last_good is None:
            raise Rejected(
                f'PolicyPack "{request.pack}" is invalid, so pods using it are not admitted; fix '
                f"it (kubectl edit policypack {request.pack} -n {namespace}): "
                + "; ".join(issues_text(exc))
            ) from None
        loaded = load_text(signing.split(last_good.text)[1])
        warnings.append(
            f'packgate: PolicyPack "{request.pack}" generation {pack["metadata"].get("generation")}'
            f" is invalid ({'; '.join(issues_text(exc))[:300]}); this pod gets the last good "
            f"config {last_good.hash}"
        )
    resources = ann.merge_resources(ctx.settings.default_resources(), request.resource_overrides)
    try:
        ann.check_resources(resources, "pod annotations")
    except ann.AnnotationError as exc:
        raise Rejected("; ".join(exc.problems)) from None
    injection = Injection(
        pack=request.pack,
        configmap=configmap_name(request.pack),
        config_hash=loaded.hash,
        targets=loaded.config.providers.targets,
        resources=resources,
        ca_pem=ctx.ca_pem,
        trusted_keys=ctx.trusted_env,
    )
    problems = conflicts(pod, injection, settings)
    if problems:
        raise Rejected("; ".join(problems))
    ops = build_patch(pod, injection, settings)
    for container in (pod.get("spec") or {}).get("containers") or []:
        own = [e for e in container.get("env") or [] if e.get("name") == "OPENAI_BASE_URL"]
        if own and own[-1].get("value") != BASE_URL:
            warnings.append(
                f"packgate: container {container.get('name')} sets OPENAI_BASE_URL; packgate "
                f"appends OPENAI_BASE_URL={BASE_URL}, which takes precedence"
            )
    return ops, warnings


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    @kopf.on.mutate("v1", "pods", id=WEBHOOK_ID, operations=["CREATE"], registry=registry)
    async def inject_sidecar(
        body: kopf.Body,
        patch: kopf.Patch,
        dryrun: bool,
        warnings: list[str],
        **_: Any,
    ) -> None:
        pod: dict[str, Any] = {key: body[key] for key in body}
        namespace = str(body.metadata.namespace or "")
        try:
            ops, notes = await decide(ctx, pod, namespace)
        except Rejected:
            if not dryrun:
                ctx.metrics.injections.labels("rejected").inc()
            raise
        if not ops:
            return
        warnings.extend(notes)

        def apply(raw: Any) -> None:
            for op in ops:
                apply_add_in_place(raw, op["path"], op["value"])

        patch.fns.append(apply)
        if not dryrun:
            ctx.metrics.injections.labels("injected").inc()
