"""The PolicyPack CustomResourceDefinition, built from the policy config models.

Why generated: `PolicyPack.spec` *is* a policy config, so its schema must say what the models
say. `build_crd()` takes the structural schema from `schema.openapi_schema()` and adds what only
Kubernetes needs: names, the status subresource and its schema, printer columns. The committed
`crds/policypacks.yaml` and `helm/packgate/crds/policypacks.yaml` are `crd_yaml()`; a test fails
when they drift.

What the apiserver enforces with this schema: types, enums, bounds, patterns, required keys
and the CEL rules kept beside their Python twins in `models.py`. What it cannot: unknown keys
are *pruned*, not rejected, unless the client asks for strict field validation (kubectl does
by default; the server's default is to warn); user regular expressions are not compiled. The
operator validates every spec with the models and reports those as `Valid=False`; lint
catches both before apply (docs/policy-config.md has the table).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from .schema import Schema, openapi_schema, walk

GROUP = "packgate.dev"
VERSION = "v1alpha1"
KIND = "PolicyPack"
PLURAL = "policypacks"
SINGULAR = "policypack"
SHORT_NAMES = ["ppk"]
CRD_NAME = f"{PLURAL}.{GROUP}"
REGENERATE = (
    "packgate crd --output crds/policypacks.yaml --output helm/packgate/crds/policypacks.yaml"
)

# Defaults the apiserver applies itself. Kept to one: the Enabled column must read true for a
# pack that does not say. Every other default stays in the models (and in the description), so
# a stored object holds what its author wrote and a changed default reaches existing packs.
APPLIED_DEFAULTS = frozenset({"pack.enabled"})

SPEC_DESCRIPTION = (
    "The policy config: the same document `packgate gateway run --policy-config FILE` loads. "
    "The operator renders it into a ConfigMap and every sidecar of a pod annotated "
    "packgate.dev/policy-pack=<name> enforces it."
)
CONDITION_TYPES = ("Valid", "Ready", "InSync", "ConfigTrusted")

_HEADER = f"""\
# The PolicyPack CustomResourceDefinition. GENERATED from sidecar/packgate_policy/models.py by
# `packgate crd`; do not edit by hand. Regenerate with:
#   {REGENERATE}
"""


def build_crd() -> dict[str, Any]:
    """The CRD as a plain dict, ready for yaml.safe_dump or the Kubernetes API."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "packgate",
                "app.kubernetes.io/part-of": "packgate",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["packgate"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": _root_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The committed file's exact text."""
    # No line folding: CEL rules and descriptions stay on one line each, readable and greppable.
    body = yaml.safe_dump(build_crd(), sort_keys=False, width=1_000_000, allow_unicode=True)
    return _HEADER + "---\n" + body


def spec_schema() -> Schema:
    """The spec's schema as the CRD holds it: defaults moved into descriptions, but a few."""
    schema = {"description": SPEC_DESCRIPTION, **openapi_schema()}
    for path, node in walk(schema):
        if "default" not in node or path in APPLIED_DEFAULTS:
            continue
        default = node.pop("default")
        if "properties" in node:
            continue  # a block's default is its fields' defaults, each described on the field
        text = node.get("description", "").rstrip()
        node["description"] = f"{text} Default: {_shown(default)}.".lstrip()
    return schema


def _shown(value: object) -> str:
    if value in ([], {}):
        return "none"
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _root_schema() -> Schema:
    return {
        "description": (
            "A PolicyPack governs the LLM API traffic of the pods that name it: which provider "
            "targets they reach and which policies run on every request and response."
        ),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation.",
                "type": "string",
            },
            "kind": {
                "description": "Kind is the REST resource this object represents.",
                "type": "string",
            },
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": _status_schema(),
        },
    }


def _status_schema() -> Schema:
    def count(description: str) -> Schema:
        return {"description": description, "type": "integer", "format": "int32", "minimum": 0}

    return {
        "description": "Observed state, written by the packgate operator.",
        "type": "object",
        "properties": {
            "observedGeneration": {
                "description": "The metadata.generation of the spec this status describes.",
                "type": "integer",
                "format": "int64",
                "minimum": 0,
            },
            "configHash": {
                "description": (
                    "Hash (sha256:...) of the effective config rendered from that spec; a "
                    "sidecar that enforces it reports the same hash."
                ),
                "type": "string",
                "maxLength": 128,
            },
            "injectedPods": count("Pods in this namespace whose sidecar uses this pack."),
            "podsInSync": count("Injected pods whose sidecar enforces the current configHash."),
            "podsWithoutSidecar": count(
                "Pods that opted in to this pack (packgate.dev/inject) but run without a "
                "sidecar, e.g. created while the webhook was unavailable."
            ),
            "conditions": {
                "description": (
                    "Valid: the spec passed the operator's full validation. Ready: the config "
                    "is rendered and served to sidecars. InSync: every injected pod enforces "
                    "the current configHash. ConfigTrusted: no sidecar reports a config "
                    "without the operator's signature."
                ),
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "maxItems": 16,
                "items": _condition_schema(),
            },
        },
    }


def _condition_schema() -> Schema:
    # The shape of metav1.Condition, so kubectl wait --for=condition=Ready works.
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {
                "description": f"Condition type, e.g. {', '.join(CONDITION_TYPES)}.",
                "type": "string",
                "maxLength": 316,
            },
            "status": {
                "description": "True, False or Unknown.",
                "type": "string",
                "enum": ["True", "False", "Unknown"],
            },
            "reason": {
                "description": "A CamelCase word for programs, e.g. SpecInvalid.",
                "type": "string",
                "maxLength": 1024,
            },
            "message": {
                "description": "Details for people.",
                "type": "string",
                "maxLength": 32768,
            },
            "lastTransitionTime": {
                "description": "When the status last changed.",
                "type": "string",
                "format": "date-time",
            },
            "observedGeneration": {
                "description": "The metadata.generation the condition was set for.",
                "type": "integer",
                "format": "int64",
                "minimum": 0,
            },
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Version",
            "type": "string",
            "jsonPath": ".spec.pack.version",
            "description": "Version of the pack (spec.pack.version).",
        },
        {
            "name": "Enabled",
            "type": "boolean",
            "jsonPath": ".spec.pack.enabled",
            "description": "Whether the pack lets traffic through.",
        },
        {
            "name": "Valid",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Valid")].status',
            "description": "Whether the latest spec is a valid policy config.",
        },
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "The Ready condition.",
        },
        {
            "name": "In Sync",
            "type": "integer",
            "jsonPath": ".status.podsInSync",
            "description": "Injected pods enforcing the current config.",
        },
        {
            "name": "Injected",
            "type": "integer",
            "jsonPath": ".status.injectedPods",
            "description": "Pods whose sidecar uses this pack.",
        },
        {
            "name": "Without Sidecar",
            "type": "integer",
            "jsonPath": ".status.podsWithoutSidecar",
            "priority": 1,
            "description": "Opted-in pods running without a sidecar.",
        },
        {
            "name": "Hash",
            "type": "string",
            "jsonPath": ".status.configHash",
            "priority": 1,
            "description": "Hash of the current config.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
