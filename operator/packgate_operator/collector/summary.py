"""What one audit record means to a reader: its outcome, the policies that acted, its incidents.

Why it exists: the index, the Events and the page all need the same reading of a record's
decisions ("was it blocked, by which policy, for what reason"), and the reason codes carry
per-request numbers (``request:injection/score=0.93``) that must not split one kind of violation
into thousands of Event series. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DECISIONS = ("blocked", "failed_open", "rewritten", "flagged", "allowed")


@dataclass(frozen=True, slots=True)
class Incident:
    """A block or a fail-open, as Kubernetes Events count them."""

    kind: str  # "block" | "fail_open"
    policy: str
    code: str  # the reason without its per-request numbers, e.g. "request:injection"


def reason_code(reason: object) -> str:
    text = str(reason or "")
    return text.split("/", 1)[0][:64] or "-"


def decisions_of(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = body.get("decisions")
    return [d for d in raw if isinstance(d, Mapping)] if isinstance(raw, list) else []


def incidents(body: Mapping[str, Any]) -> list[Incident]:
    found: list[Incident] = []
    for d in decisions_of(body):
        reason = str(d.get("reason") or "")
        policy = str(d.get("policy") or "-")
        if d.get("decision") == "block":
            found.append(Incident("block", policy, reason_code(reason)))
        elif reason.endswith(",fail_open"):
            found.append(Incident("fail_open", policy, reason_code(reason)))
    return found


def may_have_incidents(line: bytes) -> bool:
    """False when a sealed line surely holds no incident, without decoding it: a sidecar seals
    canonical JSON, where a block is spelled ``"decision":"block"`` and a fail-open reason ends
    in ``,fail_open"``. Most records are neither, and their bodies are then not decoded on the
    event loop at all."""
    return b'"decision":"block"' in line or b',fail_open"' in line


def outcome(body: Mapping[str, Any]) -> str:
    """One word for the whole request: the strongest thing any policy did."""
    return summarise(body)[0]


def acting_policies(body: Mapping[str, Any]) -> list[str]:
    """Policies that did something other than allow (or failed), in chain order, once each."""
    return summarise(body)[1]


def summarise(body: Mapping[str, Any]) -> tuple[str, list[str]]:
    """:func:`outcome` and :func:`acting_policies` in one pass (the index needs both per record)."""
    seen: set[str] = set()
    failed_open = False
    acting: list[str] = []
    for d in decisions_of(body):
        decision, reason = str(d.get("decision")), str(d.get("reason") or "")
        seen.add(decision)
        failed_open = failed_open or reason.endswith(",fail_open")
        if decision != "allow" or reason.endswith(("fail_open", "fail_closed")):
            policy = str(d.get("policy") or "")
            if policy and policy not in acting:
                acting.append(policy)
    if "block" in seen:
        word = "blocked"
    elif failed_open:
        word = "failed_open"
    elif "rewrite" in seen or "redact" in seen:
        word = "rewritten"
    elif seen - {"allow"}:
        word = "flagged"
    else:
        word = "allowed"
    return word, acting
