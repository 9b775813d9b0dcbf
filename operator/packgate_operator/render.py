"""PolicyPack -> rendered config, ConfigMap body and status: pure functions, no API calls.

Why pure: the reconcile handler, the webhook and the tests must agree on what a pack renders to
(the ConfigMap name, its text, its hash) and on what the status says, and that is easiest to get
right where it can be tested without a cluster. The API calls that act on these values live in
kube.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packgate_policy import ConfigError, LoadedConfig, dump_yaml, load_mapping
from packgate_policy.signing import Signer

GROUP = "packgate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PolicyPack"
PLURAL = "policypacks"

CONFIG_KEY = "policy.yaml"
MANAGED_BY = "packgate-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_PACK = "packgate.dev/policy-pack"
ANNOTATION_HASH = "packgate.dev/config-hash"
ANNOTATION_PACK = "packgate.dev/policy-pack"
ANNOTATION_GENERATION = "packgate.dev/pack-generation"

Condition = dict[str, Any]


def configmap_name(pack: str) -> str:
    """The ConfigMap of PolicyPack `pack`; PolicyPack names may use all 253 characters."""
    name = f"packgate-{pack}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(pack.encode()).hexdigest()[:10]
    return f"{name[:242]}-{digest}"


def label_value(value: str) -> str:
    """A label value (at most 63 characters) that still identifies a long name."""
    if len(value) <= 63:
        return value
    return f"{value[:52]}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Rendered:
    """A valid pack: the config the sidecar loads and the ConfigMap that carries it."""

    loaded: LoadedConfig
    text: str

    @property
    def hash(self) -> str:
        return self.loaded.hash


def render(spec: Mapping[str, Any] | None) -> Rendered:
    """Validate a PolicyPack spec; raises packgate_policy.ConfigError with lint's messages."""
    loaded = load_mapping(dict(spec) if spec is not None else None, source="spec")
    return Rendered(loaded=loaded, text=dump_yaml(loaded.config))


def owner_reference(pack: Mapping[str, Any]) -> dict[str, Any]:
    meta = pack["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def signed_text(pack: Mapping[str, Any], rendered: Rendered, signer: Signer) -> str:
    """The config as the ConfigMap and the push channel carry it: signed for this very pack
    (namespace, name, uid) and generation, so it cannot be replayed into another pack."""
    meta = pack["metadata"]
    return signer.sign(
        rendered.text,
        str(meta["namespace"]),
        str(meta["name"]),
        str(meta.get("uid", "")),
        int(meta.get("generation") or 0),
    )


def configmap_body(pack: Mapping[str, Any], rendered: Rendered, text: str) -> dict[str, Any]:
    """The owned ConfigMap carrying `text` (the signed config of `rendered`)."""
    meta = pack["metadata"]
    name = str(meta["name"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(name),
            "namespace": meta["namespace"],
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_PART_OF: "packgate",
                LABEL_PACK: label_value(name),
            },
            "annotations": {
                ANNOTATION_PACK: name,
                ANNOTATION_HASH: rendered.hash,
                ANNOTATION_GENERATION: str(meta.get("generation", "")),
            },
            "ownerReferences": [owner_reference(pack)],
        },
        "data": {CONFIG_KEY: text},
    }


def issues_text(error: ConfigError) -> list[str]:
    """The same lines `packgate policy lint` prints for an invalid spec (path: message)."""
    return [f"spec.{issue}" if issue.path else str(issue) for issue in error.issues]


# --- status ---------------------------------------------------------------------------------


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> Condition:
    """A condition whose lastTransitionTime moves only when its status flips."""
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    changed = before is None or before.get("status") != value
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now
        if changed or before is None
        else before.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def status_valid(
    previous: Mapping[str, Any], rendered: Rendered, generation: int, now: str, configmap: str
) -> dict[str, Any]:
    conditions = previous.get("conditions") or []
    warnings = [str(w) for w in rendered.loaded.warnings]
    valid_message = "the spec is a valid policy config"
    if warnings:
        valid_message += "; warnings: " + "; ".join(f"spec.{w}" for w in warnings)
    return {
        "observedGeneration": generation,
        "configHash": rendered.hash,
        "conditions": [
            condition(conditions, "Valid", True, "SpecValid", valid_message, generation, now),
            condition(
                conditions,
                "Ready",
                True,
                "ConfigRendered",
                f"ConfigMap {configmap} holds config {rendered.hash}",
                generation,
                now,
            ),
        ],
    }


def status_invalid(
    previous: Mapping[str, Any], problems: Sequence[str], generation: int, now: str
) -> dict[str, Any]:
    conditions = previous.get("conditions") or []
    last_good = previous.get("configHash")
    if last_good:
        ready = condition(
            conditions,
            "Ready",
            True,
            "LastGoodConfigInForce",
            f"generation {generation} is invalid; sidecars keep enforcing {last_good}",
            generation,
            now,
        )
    else:
        ready = condition(
            conditions,
            "Ready",
            False,
            "NoValidConfig",
            "no valid generation yet; pods using this pack are rejected until the spec is fixed",
            generation,
            now,
        )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        # Kept (not dropped) so the hash of the config still in force stays visible.
        **({"configHash": last_good} if last_good else {}),
        "conditions": [
            condition(
                conditions, "Valid", False, "SpecInvalid", "; ".join(problems), generation, now
            ),
            ready,
        ],
    }
    return status


def in_sync_condition(
    previous: Sequence[Mapping[str, Any]],
    injected: int,
    in_sync: int,
    config_hash: str,
    generation: int,
    now: str,
) -> Condition:
    if injected == 0:
        return condition(
            previous, "InSync", True, "NoInjectedPods", "no pods use this pack", generation, now
        )
    message = f"{in_sync} of {injected} injected pods enforce {config_hash or 'no config yet'}"
    if in_sync == injected:
        return condition(previous, "InSync", True, "AllPodsInSync", message, generation, now)
    return condition(previous, "InSync", False, "Converging", message, generation, now)
