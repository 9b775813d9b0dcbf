"""The pod annotations packgate reads, parsed into values or into messages a person can act on.

Why a module: the webhook must reject a pod whose opt-in is malformed rather than start it without
governance, so every rule about annotation values (the opt-in flag, the pack name, resource
quantities for the sidecar) lives here, pure and testable, and every failure names the annotation
and says what to write instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

PREFIX = "packgate.dev/"
INJECT = PREFIX + "inject"
POLICY_PACK = PREFIX + "policy-pack"
STATUS = PREFIX + "status"

# annotation -> (section, resource) of the sidecar's resources.
RESOURCE_ANNOTATIONS: dict[str, tuple[str, str]] = {
    PREFIX + "sidecar-cpu-request": ("requests", "cpu"),
    PREFIX + "sidecar-cpu-limit": ("limits", "cpu"),
    PREFIX + "sidecar-memory-request": ("requests", "memory"),
    PREFIX + "sidecar-memory-limit": ("limits", "memory"),
}

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Kubernetes' quantity grammar (k8s.io/apimachinery/pkg/api/resource), without a sign: resources
# are never negative.
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exp>[eE][+-]?[0-9]+)|(?P<decimal>m|k|M|G|T|P|E)?)$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: dict[str, Decimal] = {
    suffix: Decimal(10) ** power
    for suffix, power in {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}.items()
}


class AnnotationError(ValueError):
    """One or more annotations are malformed; `problems` lists each with what to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity such as 100m, 0.5, 128Mi or 1e3."""
    match = _QUANTITY.match(text.strip()) if text == text.strip() else None
    if match is None:
        raise AnnotationError(
            [f'"{text}" is not a Kubernetes quantity; write e.g. 100m or 0.5 (CPU), 128Mi (memory)']
        )
    try:
        number = Decimal(str(match["number"]))
        if match["binary"]:
            return number * _BINARY[match["binary"]]
        if match["exp"]:
            return number * Decimal(10) ** int(match["exp"][1:])
        return number * _DECIMAL[match["decimal"] or ""]
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
        raise AnnotationError([f'"{text}" is not a Kubernetes quantity']) from None


@dataclass(frozen=True)
class PodRequest:
    """What an opted-in pod asked for, from its annotations."""

    pack: str
    resource_overrides: dict[str, dict[str, str]] = field(default_factory=dict)


def opted_in(annotations: Mapping[str, str] | None) -> bool:
    return (annotations or {}).get(INJECT) == "true"


def parse_pod_request(annotations: Mapping[str, str] | None, namespace: str) -> PodRequest | None:
    """None for pods that did not opt in; raises AnnotationError listing every problem."""
    annotations = annotations or {}
    flag = annotations.get(INJECT)
    if flag is None or flag == "false":
        return None
    problems: list[str] = []
    if flag != "true":
        problems.append(
            f'{INJECT} is "{flag}": set it to "true" to inject the packgate sidecar '
            'or "false" to opt out'
        )
    pack = annotations.get(POLICY_PACK, "")
    if not pack:
        problems.append(
            f"{POLICY_PACK} is missing: set it to the name of a PolicyPack in namespace "
            f'"{namespace}" (kubectl get policypacks -n {namespace})'
        )
    elif len(pack) > 253 or not _DNS_SUBDOMAIN.match(pack):
        problems.append(
            f'{POLICY_PACK} is "{pack}", which is not a valid PolicyPack name: use lowercase '
            "letters, digits, '-' and '.'"
        )
    overrides: dict[str, dict[str, str]] = {}
    for key, value in sorted(annotations.items()):
        if key.startswith(PREFIX + "sidecar-") and key not in RESOURCE_ANNOTATIONS:
            problems.append(
                f"unknown annotation {key}; expected one of {', '.join(RESOURCE_ANNOTATIONS)}"
            )
            continue
        if key not in RESOURCE_ANNOTATIONS:
            continue
        section, resource = RESOURCE_ANNOTATIONS[key]
        problem = _check_quantity(key, value, resource, section)
        if problem:
            problems.append(problem)
        else:
            overrides.setdefault(section, {})[resource] = value
    if problems:
        raise AnnotationError(problems)
    return PodRequest(pack=pack, resource_overrides=overrides)


def _check_quantity(key: str, value: str, resource: str, section: str) -> str | None:
    try:
        amount = parse_quantity(value)
    except AnnotationError:
        example = "100m or 0.5" if resource == "cpu" else "128Mi or 1Gi"
        return f'{key} is "{value}", which is not a Kubernetes quantity; write e.g. {example}'
    if resource == "memory" and value.endswith("m"):
        return f'{key} is "{value}", i.e. thousandths of a byte; did you mean "{value[:-1]}Mi"?'
    if section == "limits" and amount == 0:
        return f"{key} is 0; a limit must be greater than 0 (remove the annotation for the default)"
    return None


def merge_resources(
    defaults: Mapping[str, Mapping[str, str]], overrides: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        values = {**defaults.get(section, {}), **overrides.get(section, {})}
        if values:
            merged[section] = values
    return merged


def check_resources(resources: Mapping[str, Mapping[str, str]], where: str) -> None:
    """Reject a request above its limit here, with our words, before the apiserver does."""
    problems = []
    for resource in ("cpu", "memory"):
        request = resources.get("requests", {}).get(resource)
        limit = resources.get("limits", {}).get(resource)
        if request and limit and parse_quantity(request) > parse_quantity(limit):
            problems.append(
                f"{where}: sidecar {resource} request {request} is above its limit {limit}; "
                f"raise {PREFIX}sidecar-{resource}-limit or lower the request"
            )
    if problems:
        raise AnnotationError(problems)
