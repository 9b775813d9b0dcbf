"""Names packgate reserves in a pod, and the refusal of pods that use them for something else.

Why: the operator counts a pod as governed, and the injector skips it, when it finds the
`packgate-sidecar` container and the `packgate-*` volumes by name. A pod that brings its own
under those names (its own "sidecar", its own ConfigMap as `packgate-config`) would be passed
off as governed. So such a pod is refused with a message naming the conflict, unless what it
carries is exactly what inject.py would add, apiserver defaults aside: that is the webhook being
called again (reinvocation) or an injected pod's manifest replayed, which is as governed as any.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .annotations import AnnotationError, parse_quantity
from .inject import (
    RESERVED_VOLUMES,
    SIDECAR_NAME,
    Injection,
    injected_volumes,
    sidecar_container,
)
from .settings import Settings


def conflicts(pod: Mapping[str, Any], injection: Injection, settings: Settings) -> list[str]:
    """What in `pod` uses a name packgate reserves, unless it is exactly packgate's own."""
    spec = pod.get("spec") or {}
    problems: list[str] = []
    for container in spec.get("containers") or []:
        if container.get("name") == SIDECAR_NAME:
            problems.append(
                f"container {SIDECAR_NAME} is reserved for the injected sidecar; rename yours"
            )
    wanted_sidecar = sidecar_container(injection, settings)
    for container in spec.get("initContainers") or []:
        if container.get("name") == SIDECAR_NAME and not _covers(container, wanted_sidecar):
            problems.append(
                f"init container {SIDECAR_NAME} is reserved for the injected sidecar and this "
                "one is not packgate's; remove or rename it"
            )
    wanted_volumes = {v["name"]: v for v in injected_volumes(injection, settings)}
    for volume in spec.get("volumes") or []:
        name = volume.get("name")
        if name not in RESERVED_VOLUMES:
            continue
        wanted = wanted_volumes.get(name)
        if wanted is None or not _covers(volume, wanted):
            problems.append(
                f"volume {name} is reserved for the injected sidecar "
                f"({', '.join(RESERVED_VOLUMES)}); rename yours"
            )
    return problems


def _covers(actual: Any, wanted: Any, key: str = "") -> bool:
    """Is `actual` what we would inject, give or take fields the apiserver defaults?

    Objects: every key we set has our value (extra keys are defaults such as
    terminationMessagePath). Lists: same length, item by item, so nothing can be added to our
    env or args. Mounts may gain others (the ServiceAccount admission plugin adds the API token
    to every container) but none at, over or under one of ours. Resource quantities compare by
    value (the apiserver canonicalises them).
    """
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and _covers(actual[k], v, k) for k, v in wanted.items()
        )
    if key == "volumeMounts" and isinstance(wanted, list) and isinstance(actual, list):
        return _mounts_cover(actual, wanted)
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_covers(a, w, key) for a, w in zip(actual, wanted, strict=True))
        )
    if actual == wanted:
        return True
    if key in ("cpu", "memory") and isinstance(actual, str) and isinstance(wanted, str):
        try:
            return parse_quantity(actual) == parse_quantity(wanted)
        except AnnotationError:
            return False
    return False


def _mounts_cover(actual: list[Any], wanted: list[Any]) -> bool:
    ours = [m for m in actual if isinstance(m, Mapping) and m.get("name") in RESERVED_VOLUMES]
    if len(ours) != len(wanted) or not all(
        _covers(a, w) for a, w in zip(ours, wanted, strict=True)
    ):
        return False
    paths = [str(w["mountPath"]).rstrip("/") + "/" for w in wanted]
    for mount in actual:
        if not isinstance(mount, Mapping) or mount in ours:
            continue
        path = str(mount.get("mountPath", "")).rstrip("/") + "/"
        if any(path.startswith(p) or p.startswith(path) for p in paths):
            return False
    return True
