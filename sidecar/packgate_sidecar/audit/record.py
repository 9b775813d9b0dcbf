"""The body of one audit record, built through a typed, validating constructor.

Why it exists: an audit log must never hold prompt text, completions or secrets, and the easiest
way to leak them is a free-form field that someone fills with "the thing that got blocked". So
there is none. Every string field is a short *token* (no whitespace, quotes or braces, at most
128 characters): identities, model and target ids, policy kinds, decisions and reason codes such
as ``pii:EMAIL,PHONE`` or ``score=0.93``. A value that does not fit is refused with ``ValueError``
at the call site instead of being written. Values that come from the client (``model``, a
client-sent request id) go through :func:`client_token`, which replaces anything that is not a
token with a digest, so a prompt pasted into the ``model`` field still cannot reach the log.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter

from packgate_sidecar.audit.chain import JSONValue

_TOKEN = re.compile(r"[A-Za-z0-9_.:/@+=,%\-]{1,128}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_MAX_DECISIONS = 32
_MAX_TAGS = 32
# Strings that passed _TOKEN: the same pod, pack, model and decision names come with every
# request, and a set lookup is a tenth of the regex. Bounded: emptied when full.
_SEEN: set[str] = set()
_MAX_SEEN = 4096


def utc_time(epoch: float) -> str:
    """RFC 3339 UTC time with milliseconds, the form every audit timestamp uses.

    Every record takes two (its own and its seal's), and most fall in the second the previous
    one did: the date and time up to the second are formatted once per second and remembered
    (a tuple swapped whole, so any thread reads a consistent pair). The split into second and
    microsecond is ``datetime.fromtimestamp``'s own (``modf``, round half to even, carry), so
    the result equals formatting ``datetime.fromtimestamp(epoch)`` for every epoch (a property
    test holds them equal)."""
    global _SECOND
    frac, whole = math.modf(epoch)
    micro = round(frac * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    second = int(whole)
    cached = _SECOND
    if cached[0] != second:
        t = datetime.fromtimestamp(second, tz=UTC)
        cached = _SECOND = (
            second,
            f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.",
        )
    return f"{cached[1]}{micro // 1000:03d}Z"


_SECOND: tuple[int, str] = (-(2**62), "")  # (epoch second, its formatted prefix)


def client_token(value: str | None) -> str | None:
    """Make an untrusted client-provided string safe to audit.

    A valid token is kept as is; anything else (free text, an over-long string) is replaced by
    ``sha256:<16 hex>`` so records stay correlatable without storing what the client sent.
    """
    if value is None or value in _SEEN or _TOKEN.fullmatch(value):
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]


def check_token(name: str, value: str, *, remember: bool = True) -> str:
    """`value` if it is a token, else ValueError naming the field. `remember=False` for values
    that never repeat (request ids): they would only push the repeating names out of _SEEN."""
    if type(value) is str and value in _SEEN:
        return value
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(
            f"audit field {name}: must be a short token (letters, digits, _.:/@+=,%-; "
            "at most 128 characters, no whitespace); free text is never audited"
        )
    if remember:
        if len(_SEEN) >= _MAX_SEEN:
            _SEEN.clear()
        _SEEN.add(value)
    return value


def _opt_token(name: str, value: str | None) -> str | None:
    return None if value is None else check_token(name, value)


def check_number(name: str, value: float | None, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"audit field {name}: must be a finite number")
    if value < 0:
        raise ValueError(f"audit field {name}: must not be negative")


def check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"audit field {name}: must be a non-negative integer")


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What one policy of the chain decided; ``reason`` is a policy-provided code, not text."""

    policy: str
    decision: str
    reason: str | None = None

    def __post_init__(self) -> None:
        check_token("decisions.policy", self.policy)
        check_token("decisions.decision", self.decision)
        _opt_token("decisions.reason", self.reason)

    def to_json(self) -> dict[str, JSONValue]:
        return {"policy": self.policy, "decision": self.decision, "reason": self.reason}

    def encode(self) -> str:
        """``canonical(self.to_json())``, see :meth:`AuditRecord.encode`."""
        return (
            f'{{"decision":"{self.decision}","policy":"{self.policy}",'
            f'"reason":{json_str(self.reason)}}}'
        )


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    # True when the provider reported no usage and the counts were estimated from text length.
    estimated: bool = False

    def __post_init__(self) -> None:
        _check_usage(self.prompt_tokens, self.completion_tokens, self.total_tokens, self.estimated)

    def encode(self) -> str:
        """``canonical(self.to_json())``, see :meth:`AuditRecord.encode`."""
        return _usage_json(
            self.prompt_tokens, self.completion_tokens, self.total_tokens, self.estimated
        )

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated": self.estimated,
        }


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One proxied request, as the audit log sees it (see the module docstring for the rules).

    ``time`` is RFC 3339 UTC (use :func:`utc_time`); ``endpoint`` names the API operation
    (``chat.completions``, ``embeddings``, ...); ``status`` is the HTTP status returned to the app.
    ``outcome`` says how the request ended (``ok``, ``blocked``, ``error``, ``upstream_error``,
    ``client_disconnected``, ``drained``); ``started`` marks a write-ahead record, made durable
    before any byte of a streamed answer reaches the client (its ``status`` is null; the outcome
    record with the same ``request_id`` follows once the stream ends, unless the process was
    killed first).
    """

    time: str
    request_id: str
    endpoint: str
    status: int | None
    latency_ms: float
    pod: str | None = None
    namespace: str | None = None
    pack: str | None = None
    pack_version: str | None = None
    config_hash: str | None = None
    model: str | None = None
    target: str | None = None
    streamed: bool = False
    decisions: tuple[PolicyDecision, ...] = ()
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    outcome: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.time, str) or not _TIME.fullmatch(self.time):
            raise ValueError("audit field time: must be RFC 3339 UTC like 2025-01-31T12:00:00.000Z")
        check_token("request_id", self.request_id, remember=False)
        check_token("endpoint", self.endpoint)
        # The optional tokens (identities from the config and pod, model, target, outcome)
        # repeat from request to request: one pass over them finds each seen before or unset;
        # only a new one is checked (and named, if it fails) field by field.
        for value in _opt_token_values(self):
            if value is not None and not (type(value) is str and value in _SEEN):
                for name in _OPT_TOKENS:
                    _opt_token(name, getattr(self, name))
                break
        # A write-ahead record ("started") has no status yet: the request is not answered.
        if not (self.status is None and self.outcome == "started") and (
            isinstance(self.status, bool)
            or not isinstance(self.status, int)
            or not 100 <= self.status <= 599
        ):
            raise ValueError("audit field status: must be an HTTP status code")
        check_number("latency_ms", self.latency_ms, optional=False)
        check_number("cost_usd", self.cost_usd)
        if not isinstance(self.streamed, bool):
            raise ValueError("audit field streamed: must be a boolean")
        if len(self.decisions) > _MAX_DECISIONS or not all(
            isinstance(d, PolicyDecision) for d in self.decisions
        ):
            raise ValueError(f"audit field decisions: at most {_MAX_DECISIONS} PolicyDecision")
        if self.usage is not None and not isinstance(self.usage, TokenUsage):
            raise ValueError("audit field usage: must be a TokenUsage")
        check_tags(self.tags)

    def to_body(self) -> dict[str, JSONValue]:
        """The JSON object sealed into the chain (all fields present, ``None`` as null)."""
        return {
            "time": self.time,
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "pod": self.pod,
            "namespace": self.namespace,
            "pack": self.pack,
            "pack_version": self.pack_version,
            "config_hash": self.config_hash,
            "model": self.model,
            "target": self.target,
            "streamed": self.streamed,
            "decisions": [d.to_json() for d in self.decisions],
            "usage": None if self.usage is None else self.usage.to_json(),
            "cost_usd": self.cost_usd,
            "tags": dict(sorted(self.tags.items())),
            "outcome": self.outcome,
        }

    def encode(self) -> bytes:
        """``chain.canonical(self.to_body())``, the bytes that are sealed, built in one pass.

        Byte for byte the same (a property test holds them equal): the keys are written in
        sorted order, and no value needs escaping, since every string field passed the token
        or time pattern (ASCII letters, digits and ``_.:/@+=,%-`` only); numbers are spelled
        as ``json.dumps`` spells them (``int.__repr__``, ``float.__repr__``). Sealing runs once
        per request on the event loop; this is a quarter of what ``json.dumps`` with
        ``sort_keys`` costs here.
        """
        tags = tags_json(self.tags)
        usage = "null" if self.usage is None else self.usage.encode()
        return (
            f'{{"config_hash":{json_str(self.config_hash)},"cost_usd":{json_num(self.cost_usd)},'
            f'"decisions":[{",".join([d.encode() for d in self.decisions])}],'
            f'"endpoint":"{self.endpoint}","latency_ms":{json_num(self.latency_ms)},'
            f'"model":{json_str(self.model)},"namespace":{json_str(self.namespace)},'
            f'"outcome":{json_str(self.outcome)},"pack":{json_str(self.pack)},'
            f'"pack_version":{json_str(self.pack_version)},"pod":{json_str(self.pod)},'
            f'"request_id":"{self.request_id}","status":{json_num(self.status)},'
            f'"streamed":{"true" if self.streamed else "false"},"tags":{tags},'
            f'"target":{json_str(self.target)},"time":"{self.time}","usage":{usage}}}'
        ).encode("ascii")

    @classmethod
    def from_body(cls, body: Mapping[str, object]) -> AuditRecord:
        """Validate a plain mapping (as produced by :meth:`to_body`); unknown keys are errors."""
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ValueError(f"audit record: unknown field(s) {', '.join(unknown)}")
        data = dict(body)
        raw_decisions = data.pop("decisions", ())
        raw_usage = data.pop("usage", None)
        raw_tags = data.pop("tags", None) or {}
        if not isinstance(raw_decisions, list | tuple) or not isinstance(raw_tags, Mapping):
            raise ValueError("audit record: decisions must be a list and tags a mapping")
        decisions = tuple(_decision(d) for d in raw_decisions)
        usage = None
        if raw_usage is not None:
            if not isinstance(raw_usage, Mapping) or set(raw_usage) - _USAGE_FIELDS:
                raise ValueError("audit field usage: unknown or malformed usage")
            usage = TokenUsage(**{str(k): v for k, v in raw_usage.items()})
        try:
            return cls(decisions=decisions, usage=usage, tags=dict(raw_tags), **data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(f"audit record: {exc}") from None


def json_str(value: str | None) -> str:
    """A validated token (nothing to escape) or null, as JSON."""
    return "null" if value is None else f'"{value}"'


def json_num(value: float | None) -> str:
    """A validated finite number or null, spelled as ``json.dumps`` spells it."""
    if value is None:
        return "null"
    return float.__repr__(value) if isinstance(value, float) else int.__repr__(value)


def usage_json(
    prompt: int | None, completion: int | None, total: int | None, estimated: bool
) -> str:
    """``TokenUsage(prompt, completion, total, estimated).encode()``, checked the same way,
    without the object."""
    if not (
        type(prompt) is int  # the usual case, checked at once
        and type(completion) is int
        and type(total) is int
        and prompt >= 0
        and completion >= 0
        and total >= 0
        and type(estimated) is bool
    ):
        _check_usage(prompt, completion, total, estimated)
    return _usage_json(prompt, completion, total, estimated)


def _check_usage(
    prompt: int | None, completion: int | None, total: int | None, estimated: bool
) -> None:
    if not isinstance(estimated, bool):
        raise ValueError("audit field usage.estimated: must be a boolean")
    check_count("usage.prompt_tokens", prompt)
    check_count("usage.completion_tokens", completion)
    check_count("usage.total_tokens", total)


def _usage_json(
    prompt: int | None, completion: int | None, total: int | None, estimated: bool
) -> str:
    return (
        f'{{"completion_tokens":{json_num(completion)},'
        f'"estimated":{"true" if estimated else "false"},'
        f'"prompt_tokens":{json_num(prompt)},"total_tokens":{json_num(total)}}}'
    )


def check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > _MAX_TAGS:
        raise ValueError(f"audit field tags: at most {_MAX_TAGS} tags")
    for key, value in tags.items():
        check_token("tags key", key)
        check_token(f"tags.{key}", value)


def tags_json(tags: Mapping[str, str]) -> str:
    """Checked tags (nothing to escape), as a JSON object with sorted keys."""
    if not tags:
        return "{}"
    return "{" + ",".join(f'"{k}":"{v}"' for k, v in sorted(tags.items())) + "}"


class EncodedBody(bytes):
    """A record body in its canonical encoding whose fields were checked as ``AuditRecord``
    checks them: what ``AuditRecord.encode`` returns, made without the object by an encoder
    that is tested byte for byte against it (``policies/audit_body.py``). The writer seals
    it as it is."""

    __slots__ = ()


def _decision(raw: object) -> PolicyDecision:
    if isinstance(raw, PolicyDecision):
        return raw
    if not isinstance(raw, Mapping) or set(raw) - {"policy", "decision", "reason"}:
        raise ValueError("audit field decisions: each must be {policy, decision, reason}")
    return PolicyDecision(
        policy=raw.get("policy"),  # type: ignore[arg-type]
        decision=raw.get("decision"),  # type: ignore[arg-type]
        reason=raw.get("reason"),
    )


_FIELDS = frozenset(AuditRecord.__dataclass_fields__)
_OPT_TOKENS = (
    "pod",
    "namespace",
    "pack",
    "pack_version",
    "config_hash",
    "model",
    "target",
    "outcome",
)
# Their values as one tuple, read in C (one list of the names for both reads).
_opt_token_values = attrgetter(*_OPT_TOKENS)
_USAGE_FIELDS = frozenset(TokenUsage.__dataclass_fields__)
