"""The filters of ``packgate audit query`` and the Events page, parsed and checked in one place.

Why it exists: the CLI, the page and the HTTP API must accept exactly the same filters and
refuse a bad one with the same clear message (which filter, what was wrong) instead of
silently returning everything. Pure: query parameters in, a ``Filters`` or an error out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from .summary import DECISIONS

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_POLICY = re.compile(r"[a-z][a-z0-9-]{0,62}")
_STATUS = re.compile(r"[1-5](\d\d|xx)")
_AGO = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_LIMIT = 1000


class FilterError(ValueError):
    """A filter value is not acceptable; the message names the filter."""


@dataclass(frozen=True)
class Filters:
    namespace: str | None = None
    pack: str | None = None
    pod: str | None = None
    policy: str | None = None
    decision: str | None = None
    status: str | None = None  # "403" or a class such as "4xx"
    since: str | None = None  # RFC 3339 UTC, normalised
    until: str | None = None
    after: int = 0  # only records ingested after this cursor (live updates)
    limit: int = 100

    def as_params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in (None, "", 0) or f.name == "limit":
                out[f.name] = str(value)
        return out


def parse_time(name: str, text: str, now: datetime | None = None) -> str:
    """RFC 3339 (``2025-01-31T12:00:00Z``) or an age such as ``15m``, ``2h``, ``7d``."""
    text = text.strip()
    now = now or datetime.now(UTC)
    ago = _AGO.fullmatch(text)
    if ago:
        moment = now - timedelta(seconds=int(ago.group(1)) * _UNITS[ago.group(2)])
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(
                f"{name}: {text!r} is neither an RFC 3339 time nor an age like 15m, 2h or 7d"
            ) from None
        if moment.tzinfo is None:
            raise FilterError(f"{name}: {text!r} needs a time zone (e.g. a trailing Z)")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse(params: Mapping[str, str], now: datetime | None = None) -> Filters:
    known = {f.name for f in fields(Filters)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise FilterError(f"unknown filter {unknown[0]!r}; known: {', '.join(sorted(known))}")
    values: dict[str, object] = {}
    for name in ("namespace", "pack", "pod"):
        value = params.get(name, "").strip()
        if value:
            if not _NAME.fullmatch(value):
                raise FilterError(f"{name}: {value!r} is not a Kubernetes name")
            values[name] = value
    policy = params.get("policy", "").strip()
    if policy:
        if not _POLICY.fullmatch(policy):
            raise FilterError(f"policy: {policy!r} is not a policy kind (e.g. prompt-injection)")
        values["policy"] = policy
    decision = params.get("decision", "").strip()
    if decision:
        if decision not in DECISIONS:
            raise FilterError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
        values["decision"] = decision
    status = params.get("status", "").strip().lower()
    if status:
        if not _STATUS.fullmatch(status):
            raise FilterError(f"status: {status!r} is not an HTTP status such as 403 or 4xx")
        values["status"] = status
    for name in ("since", "until"):
        if params.get(name, "").strip():
            values[name] = parse_time(name, params[name], now)
    for name, low, high in (("after", 0, 2**62), ("limit", 1, MAX_LIMIT)):
        raw = params.get(name, "").strip()
        if raw:
            try:
                number = int(raw)
            except ValueError:
                raise FilterError(f"{name}: {raw!r} is not a whole number") from None
            if not low <= number <= high:
                raise FilterError(f"{name}: must be between {low} and {high}")
            values[name] = number
    return Filters(**values)  # type: ignore[arg-type]
