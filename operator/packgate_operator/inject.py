"""Pod + PolicyPack + settings -> the JSON Patch that injects the sidecar (pure, add-only).

Why add-only and name-keyed: the apiserver may call the webhook again after other webhooks changed
the pod (reinvocation), and users own every container, env var and volume already in the pod.
So this module never replaces or reorders anything: it appends what is missing, recognises its
own pieces by name, and returns no operations for a pod that already has everything.

The names it uses are reserved (reserved.py refuses pods that bring their own), and the
`packgate.dev/status` record is always written here, over any value the pod came with.

One value of the user's is raised, never lowered: `terminationGracePeriodSeconds`. On SIGTERM
the sidecar lets requests finish for up to its drain time, then ships the audit records the
collector has not acknowledged yet for up to the flush time; a pod killed before that loses
them with its emptyDir. So a grace period shorter than `grace_seconds()` is raised to it. (The
sidecar is a native sidecar: the kubelet stops it after the app containers, within the same
grace period, so an app that itself needs long to stop should set its grace to its own time
plus this.)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packgate_policy import Target, secret_env_name

from . import annotations as ann
from .settings import SIDECAR_API_PORT, Settings

SIDECAR_NAME = "packgate-sidecar"
BASE_URL = f"http://127.0.0.1:{SIDECAR_API_PORT}/v1"
PLACEHOLDER_KEY = "packgate-sidecar-holds-the-key"

CONFIG_DIR = "/etc/packgate/config"
PODINFO_DIR = "/etc/packgate/podinfo"
TOKEN_DIR = "/var/run/secrets/packgate.dev/token"  # noqa: S105 - a path, not a secret
DATA_DIR = "/var/lib/packgate"  # audit log and other policy files

VOL_CONFIG = "packgate-config"
VOL_TOKEN = "packgate-token"  # noqa: S105 - a volume name
VOL_PODINFO = "packgate-podinfo"
VOL_DATA = "packgate-data"
VOL_TMP = "packgate-tmp"
RESERVED_VOLUMES = (VOL_CONFIG, VOL_TOKEN, VOL_PODINFO, VOL_DATA, VOL_TMP)

# The env contract between the injected pod spec and the sidecar (subscribe.py reads these).
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_POLICY_PACK = "PACKGATE_POLICY_PACK"
ENV_OPERATOR_URL = "PACKGATE_OPERATOR_URL"
ENV_OPERATOR_CA = "PACKGATE_OPERATOR_CA"
ENV_TOKEN_FILE = "PACKGATE_TOKEN_FILE"  # noqa: S105 - an env var name
ENV_LABELS_FILE = "PACKGATE_POD_LABELS_FILE"
ENV_DATA_DIR = "PACKGATE_DATA_DIR"
ENV_AUDIT_KEY = "PACKGATE_AUDIT_KEY"
ENV_CONFIG_KEYS = "PACKGATE_CONFIG_KEYS"  # packgate_policy.signing.ENV_TRUSTED_KEYS
ENV_AUDIT_COLLECTOR_URL = "PACKGATE_AUDIT_COLLECTOR_URL"
AUDIT_KEY_KEY = "audit-key"  # the key inside settings.audit_key_secret

# The sidecar's shutdown, as `packgate gateway run` runs it by default (the sidecar's own
# constants; a unit test holds the two in step): requests drain, then audit shipping flushes.
SIDECAR_DRAIN_SECONDS = 25  # packgate_sidecar.run.DRAIN_SECONDS
AUDIT_FLUSH_SECONDS = 10  # packgate_sidecar.audit.ship.DRAIN_SECONDS
STOP_MARGIN_SECONDS = 5  # signal delivery, closing policies, process exit
DEFAULT_GRACE_SECONDS = 30  # what Kubernetes gives a pod that sets none

Op = dict[str, Any]


@dataclass(frozen=True)
class Injection:
    """What the webhook resolved for one pod: its pack and that pack's rendered config."""

    pack: str
    configmap: str
    config_hash: str
    targets: Sequence[Target]
    resources: Mapping[str, Mapping[str, str]]
    ca_pem: str = ""
    trusted_keys: str = ""  # PACKGATE_CONFIG_KEYS: the public keys configs must be signed with


def status_record(injection: Injection, settings: Settings) -> str:
    return json.dumps(
        {
            "pack": injection.pack,
            "configHash": injection.config_hash,
            "sidecarVersion": settings.effective_sidecar_version,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    return any(c.get("name") == SIDECAR_NAME for c in containers)


def build_patch(pod: Mapping[str, Any], injection: Injection, settings: Settings) -> list[Op]:
    """The add operations that make `pod` governed; [] when it already is."""
    spec = pod.get("spec") or {}
    ops: list[Op] = []
    ops += _append_items(spec, "volumes", "/spec/volumes", injected_volumes(injection, settings))
    if not has_sidecar(pod):
        ops += _append_items(
            spec, "initContainers", "/spec/initContainers", [sidecar_container(injection, settings)]
        )
    for index, container in enumerate(spec.get("containers") or []):
        if container.get("name") == SIDECAR_NAME:
            continue
        ops += _app_env_ops(container, index)
    ops += _grace_ops(spec, settings)
    annotations = (pod.get("metadata") or {}).get("annotations")
    record = status_record(injection, settings)
    if annotations is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {ann.STATUS: record}})
    elif annotations.get(ann.STATUS) != record:
        # `add` on an existing member replaces it (RFC 6902): a record the user wrote is not kept.
        ops.append(
            {"op": "add", "path": "/metadata/annotations/" + _escape(ann.STATUS), "value": record}
        )
    return ops


def grace_seconds(settings: Settings) -> int:
    """The grace period the sidecar needs to stop without losing audit records."""
    need = SIDECAR_DRAIN_SECONDS + STOP_MARGIN_SECONDS
    if settings.subscribe_url and settings.audit_collector_url:  # the sidecar ships
        need += AUDIT_FLUSH_SECONDS
    return need


def _grace_ops(spec: Mapping[str, Any], settings: Settings) -> list[Op]:
    have = spec.get("terminationGracePeriodSeconds")
    need = grace_seconds(settings)
    if (have if isinstance(have, int) else DEFAULT_GRACE_SECONDS) >= need:
        return []
    # `add` on an existing member replaces it (RFC 6902): the one value raised, never lowered.
    return [{"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": need}]


def _append_items(
    spec: Mapping[str, Any], key: str, path: str, items: Sequence[Mapping[str, Any]]
) -> list[Op]:
    existing = spec.get(key)
    names = {item.get("name") for item in existing or []}
    missing = [dict(item) for item in items if item["name"] not in names]
    if not missing:
        return []
    if existing is None:
        return [{"op": "add", "path": path, "value": missing}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in missing]


def _app_env_ops(container: Mapping[str, Any], index: int) -> list[Op]:
    env = container.get("env")
    wanted: list[dict[str, Any]] = []
    base_urls = [e for e in env or [] if e.get("name") == "OPENAI_BASE_URL"]
    # A container that sets its own base URL still gets ours appended: the later duplicate wins,
    # so governance cannot be bypassed by a manifest, and the user's entry is left in place.
    if not base_urls or base_urls[-1].get("value") != BASE_URL or "valueFrom" in base_urls[-1]:
        wanted.append({"name": "OPENAI_BASE_URL", "value": BASE_URL})
    has_key = any(e.get("name") == "OPENAI_API_KEY" for e in env or [])
    # envFrom may carry a key we cannot see; a placeholder there would silently override it.
    if not has_key and not container.get("envFrom"):
        wanted.append({"name": "OPENAI_API_KEY", "value": PLACEHOLDER_KEY})
    if not wanted:
        return []
    path = f"/spec/containers/{index}/env"
    if env is None:
        return [{"op": "add", "path": path, "value": wanted}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in wanted]


def injected_volumes(injection: Injection, settings: Settings) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        # A whole-ConfigMap volume (never subPath): the kubelet swaps it atomically on change.
        {"name": VOL_CONFIG, "configMap": {"name": injection.configmap}},
        {
            "name": VOL_PODINFO,
            "downwardAPI": {
                "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
            },
        },
        {"name": VOL_DATA, "emptyDir": {}},
        {"name": VOL_TMP, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if settings.subscribe_url:
        volumes.append(
            {
                "name": VOL_TOKEN,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": settings.token_audience,
                                "expirationSeconds": settings.token_expiration_seconds,
                                "path": "token",
                            }
                        }
                    ]
                },
            }
        )
    return volumes


def sidecar_argv(settings: Settings) -> list[str]:
    return [
        "gateway",
        "run",
        "--listen",
        f"127.0.0.1:{SIDECAR_API_PORT}",
        "--admin-listen",
        f"0.0.0.0:{settings.sidecar_admin_port}",
        "--policy-config",
        f"{CONFIG_DIR}/policy.yaml",
    ]


def sidecar_env(injection: Injection, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": ENV_POLICY_PACK, "value": injection.pack},
        {"name": ENV_LABELS_FILE, "value": f"{PODINFO_DIR}/labels"},
        {"name": ENV_DATA_DIR, "value": DATA_DIR},
    ]
    if settings.subscribe_url:
        env += [
            {"name": ENV_OPERATOR_URL, "value": settings.subscribe_url},
            {"name": ENV_TOKEN_FILE, "value": f"{TOKEN_DIR}/token"},
        ]
        if injection.ca_pem:
            env.append({"name": ENV_OPERATOR_CA, "value": injection.ca_pem})
        if settings.audit_collector_url:
            # Shipping uses the same projected token and CA as the config channel.
            env.append({"name": ENV_AUDIT_COLLECTOR_URL, "value": settings.audit_collector_url})
    if injection.trusted_keys:
        env.append({"name": ENV_CONFIG_KEYS, "value": injection.trusted_keys})
    if settings.audit_key_secret:
        env.append(
            {
                "name": ENV_AUDIT_KEY,
                "valueFrom": {
                    "secretKeyRef": {"name": settings.audit_key_secret, "key": AUDIT_KEY_KEY}
                },
            }
        )
    seen = {e["name"] for e in env}
    for target in injection.targets:
        ref = target.secret_key_ref
        if ref is None:
            continue
        if ref.secret is not None:
            name = secret_env_name(target)
            source: dict[str, Any] = {"name": ref.secret.name, "key": ref.secret.key}
        elif ref.env is not None and settings.default_key_secret:
            name = ref.env
            source = {"name": settings.default_key_secret, "key": ref.env, "optional": True}
        else:
            continue
        if name not in seen:
            seen.add(name)
            env.append({"name": name, "valueFrom": {"secretKeyRef": source}})
    return env


def sidecar_container(injection: Injection, settings: Settings) -> dict[str, Any]:
    admin = settings.sidecar_admin_port
    mounts = [
        {"name": VOL_CONFIG, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": VOL_PODINFO, "mountPath": PODINFO_DIR, "readOnly": True},
        {"name": VOL_DATA, "mountPath": DATA_DIR},
        {"name": VOL_TMP, "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's
    ]
    if settings.subscribe_url:
        mounts.append({"name": VOL_TOKEN, "mountPath": TOKEN_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": settings.sidecar_image,
        "imagePullPolicy": settings.sidecar_image_pull_policy,
        # A native sidecar: app containers start once its startup probe passes, and Jobs finish.
        "restartPolicy": "Always",
        "command": ["packgate"],
        "args": sidecar_argv(settings),
        "ports": [{"name": "packgate-admin", "containerPort": admin, "protocol": "TCP"}],
        "env": sidecar_env(injection, settings),
        "resources": {k: dict(v) for k, v in injection.resources.items()},
        "volumeMounts": mounts,
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": admin},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 60,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": admin}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": admin},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.sidecar_run_as_user,
            "runAsGroup": settings.sidecar_run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if not container["resources"]:
        del container["resources"]
    return container


# --- a minimal JSON Patch (RFC 6902) applier for `add`, used by kopf and by tests ----------------


class PatchError(ValueError):
    pass


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(document: Mapping[str, Any], ops: Sequence[Op]) -> dict[str, Any]:
    """A copy of `document` with the `add` operations applied."""
    result: dict[str, Any] = copy.deepcopy(dict(document))
    for op in ops:
        if op.get("op") != "add":
            raise PatchError(f"only add operations are supported, got {op.get('op')!r}")
        apply_add_in_place(result, str(op["path"]), copy.deepcopy(op["value"]))
    return result


def apply_add_in_place(document: dict[str, Any], path: str, value: Any) -> None:
    tokens = [_unescape(t) for t in path.split("/")[1:]]
    if not tokens:
        raise PatchError("cannot add at the document root")
    parent: Any = document
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            index = int(last)
            if not 0 <= index <= len(parent):
                raise PatchError(f"{path}: index out of range")
            parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"{path}: parent is neither an object nor an array")
