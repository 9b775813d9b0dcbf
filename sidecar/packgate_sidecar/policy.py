"""The contract between the sidecar and one policy: what a policy sees, what it may answer.

Why it exists: every policy kind (prompt injection, PII, content filter, audit, cost) is a small
class written against this API and nothing else, so policies can be built and tested without the
HTTP machinery, and the chain (chain.py) can treat them uniformly: run them in order, time them,
record their decisions, fail closed when one breaks.

A policy has up to four hooks, each optional (the base class does nothing):

- `on_request(ctx, texts)`: every text of the request; answer allow, flag, rewrite or block.
- `on_response(ctx, texts)`: the same for a whole (non-streamed) response body.
- `stream_filter(ctx)`: a fresh `StreamFilter` per streamed text channel; `feed` returns what may
  be sent now (so it can hold back a bounded window), `finish` returns the rest, and raising
  `Blocked` ends the stream with an error event.
- `on_finish(ctx)`: after the response went out; `ctx` then holds status, latency, usage and
  every decision, which is what audit logging and cost attribution need.

Per-text work that depends only on the text and the policy's settings (a score, a redaction)
goes through `Policy.memo` (`Policy.judge` for a whole item), so a message repeated by every turn
of a conversation is judged once.

Policies never see HTTP objects, and must never log or record the texts they are given.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from packgate_policy import PolicyBlock

from .verdicts import Entry, VerdictCache

if TYPE_CHECKING:
    from .metrics import Metrics

_T = TypeVar("_T")
_SCOPES = itertools.count()  # one verdict-cache scope per policy instance
Action = Literal["allow", "flag", "rewrite", "block"]
# Most severe first; used to merge the decisions of one policy over several stream channels.
SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "rewrite": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy decided about one phase of one request.

    `flag` lets the request pass but marks it (e.g. an injection score over the threshold with
    `action: log`); `rewrite` replaces texts by their index in the `texts` the policy was given;
    `reason` and `details` are recorded for audit and must be short tokens and numbers, never
    user text (write "pii:EMAIL,PHONE", not the email address). A stream filter's `summary`
    reports a rewrite as `Decision("rewrite", reason, details=...)`, without `rewrites`.
    """

    action: Action = "allow"
    reason: str = ""
    rewrites: Mapping[int, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def allow(reason: str = "", **details: Any) -> Decision:
        return ALLOW if not reason and not details else Decision("allow", reason, {}, details)

    @staticmethod
    def flag(reason: str, **details: Any) -> Decision:
        return Decision("flag", reason, {}, details)

    @staticmethod
    def rewrite(rewrites: Mapping[int, str], reason: str = "", **details: Any) -> Decision:
        if not rewrites:
            return Decision.allow(reason, **details)
        return Decision("rewrite", reason, dict(rewrites), details)

    @staticmethod
    def block(reason: str, **details: Any) -> Decision:
        return Decision("block", reason, {}, details)


ALLOW = Decision()


class Blocked(Exception):
    """Raised by a stream filter (or any hook) to block; the same as returning Decision.block."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class TextItem:
    """One text a policy may inspect: the text, who wrote it, and where it sits in the body.

    `role` is the author: system, developer, user, assistant, tool, function, or
    tool_definition (descriptions of the tools offered to the model). `path` is a JSON path such
    as `messages[2].content[0].text`, safe to log. The item also carries its text's verdict-cache
    entry once a policy asked for it (`Policy.judge`), so the text is digested and looked up once
    for every policy of the chain.
    """

    __slots__ = ("_cache", "_entry", "path", "role", "text")

    def __init__(self, text: str, role: str, path: str) -> None:
        self.text = text
        self.role = role
        self.path = path
        self._cache: VerdictCache | None = None
        self._entry: Entry | None = None

    def verdicts(self, cache: VerdictCache) -> Entry:
        """This text's entry in `cache`, looked up on first use."""
        entry = self._entry
        if entry is None or self._cache is not cache:
            entry = self._entry = cache.entry(self.text)
            self._cache = cache
        return entry

    @staticmethod
    def all_verdicts(items: Sequence[TextItem], cache: VerdictCache) -> list[Entry]:
        """`verdicts` of each item; those not looked up yet are looked up together."""
        new = [item for item in items if item._cache is not cache]
        if new:
            for item, entry in zip(new, cache.entries([item.text for item in new]), strict=True):
                item._entry = entry
                item._cache = cache
        return [item._entry for item in items]  # type: ignore[misc]

    def _replace(self, *, text: str) -> TextItem:
        return TextItem(text, self.role, self.path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextItem):
            return NotImplemented
        return (self.text, self.role, self.path) == (other.text, other.role, other.path)

    def __hash__(self) -> int:
        return hash((self.text, self.role, self.path))

    def __repr__(self) -> str:
        return f"TextItem(<{len(self.text)} chars>, role={self.role!r}, path={self.path!r})"


class StreamFilter:
    """Per-channel filter of a streamed response; the default passes text through unchanged."""

    # Whether `feed` may raise Blocked. A filter that never blocks may be fed several deltas
    # joined as one text (the stream rewriter joins the deltas of one upstream chunk); one that
    # may block is fed delta by delta, so the deltas before the blocking one still go out.
    may_block = True

    def feed(self, text: str) -> str:
        """Take the next delta; return the text that may be sent now (possibly "")."""
        return text

    def finish(self) -> str:
        """The channel ended: return everything still held back."""
        return ""

    def summary(self) -> Decision | None:
        """What this filter did over the stream, recorded once the stream ends (no texts)."""
        return None


@dataclass(frozen=True)
class PodIdentity:
    """Who runs the sidecar, from the pod's environment (downward API), for records and tags."""

    name: str | None = None
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PodIdentity:
        env = os.environ if environ is None else environ
        labels: dict[str, str] = {}
        raw = env.get("PACKGATE_POD_LABELS")
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {}
            if isinstance(parsed, dict):
                labels.update({str(k): str(v) for k, v in parsed.items()})
        labels_file = env.get("PACKGATE_POD_LABELS_FILE")
        if labels_file:
            labels.update(_read_downward_labels(Path(labels_file)))
        return cls(env.get("POD_NAME") or None, env.get("POD_NAMESPACE") or None, labels)


def _read_downward_labels(path: Path) -> dict[str, str]:
    """Parse a downward-API labels file (`key="value"` per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    labels = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            try:
                labels[key.strip()] = json.loads(value.strip())
            except ValueError:
                labels[key.strip()] = value.strip().strip('"')
    return labels


@dataclass(frozen=True)
class PolicyRuntime:
    """Process-wide things a policy may need when it is built: identity, metrics, a data dir,
    and the per-message verdict cache behind `Policy.memo`."""

    pod: PodIdentity = field(default_factory=PodIdentity)
    metrics: Metrics | None = None
    data_dir: Path | None = None
    verdicts: VerdictCache = field(default_factory=VerdictCache)

    def __post_init__(self) -> None:
        if self.metrics is not None:
            self.metrics.watch_verdicts(self.verdicts.lookups)


@dataclass(slots=True)
class DecisionRecord:
    """One policy's decision in one phase, as kept on the request context."""

    kind: str
    phase: str  # request | response | stream | finish
    action: Action
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    failure: str | None = None  # "error" or "timeout" when the policy itself failed
    fail_open: bool = False


@dataclass(slots=True)
class RequestContext:
    """Everything known about one request, shared by all policies of the chain.

    Filled in as the request goes: `target` and `upstream_model` once a target answered,
    `status`, `latency_ms`, `usage` and `outcome` when the response is done (in `on_finish`).
    `headers` holds only the request's `x-packgate-*` headers (lower-cased names); a policy picks
    the ones its config allows. `state` is scratch space keyed by policy kind.
    """

    request_id: str
    route: str
    method: str = "POST"
    pack: str = ""
    pack_version: str = ""
    config_hash: str = ""
    pod: PodIdentity = field(default_factory=PodIdentity)
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    stream: bool = False
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    target: str | None = None
    upstream_model: str | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    input_chars: int = 0
    output_chars: int = 0
    usage: Mapping[str, Any] | None = None
    status: int | None = None
    outcome: str = "ok"  # ok | error | blocked | upstream_error | client_disconnected
    error_code: str | None = None
    latency_ms: float | None = None
    upstream_latency_ms: float | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def blocked_by(self) -> DecisionRecord | None:
        for record in self.decisions:
            if record.action == "block":
                return record
        return None


class Policy:
    """Base class of a policy; override the hooks the policy needs, leave the rest.

    `kind` names the policy in the chain and in records. Subclasses are built by a factory with
    the policy's config block (`settings`, including `fail_open` and `timeout_ms`, which the chain
    enforces) and the process-wide `runtime`. An instance serves many requests concurrently and
    survives config reloads that leave its block unchanged: keep per-request state in `ctx.state`
    or in the stream filter, never on `self`.
    """

    kind: ClassVar[str] = ""
    # `on_finish` hooks run in chain order, except that those of policies setting this run
    # first: cost-attribution computes the usage and cost that audit-logger records, whatever
    # order the config lists them in.
    finish_first: ClassVar[bool] = False

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        # Names this instance, and so its settings, in the verdict cache (see verdicts.py).
        self._memo_scope = next(_SCOPES)

    def memo(
        self,
        tag: str,
        text: str,
        compute: Callable[[], _T],
        size: Callable[[_T], int] | None = None,
    ) -> _T:
        """`compute()`, the pure per-text work of this policy on `text`, done once per text.

        Later calls with the same `tag` and text return the stored result (keep it immutable)
        while this instance lives, i.e. until this policy's config block changes. `compute` must
        depend on nothing but `text` and this instance's settings.
        """
        return self.runtime.verdicts.get_or_compute(
            (self._memo_scope, tag), text, compute, size, self.kind
        )

    def judge(
        self,
        tag: str,
        item: TextItem,
        judge: Callable[[str], _T],
        size: Callable[[_T], int] | None = None,
    ) -> _T:
        """`judge(item.text)`, memoised like `memo`; the item's cache entry is shared with the
        other policies judging the same item, so its text is digested and looked up once."""
        cache = self.runtime.verdicts
        return cache.lookup(
            item.verdicts(cache), (self._memo_scope, tag), judge, item.text, size, self.kind
        )

    def judge_all(
        self,
        tag: str,
        items: Sequence[TextItem],
        judge: Callable[[str], _T],
        size: Callable[[_T], int] | None = None,
    ) -> list[_T]:
        """`judge` of each item, in order: the items' entries fetched together, the hits counted
        together; a long conversation's earlier turns cost a dict lookup each."""
        if len(items) == 1:  # a one-message phase: the batch's lists cost more than they save
            return [self.judge(tag, items[0], judge, size)]
        cache = self.runtime.verdicts
        return cache.lookup_all(
            TextItem.all_verdicts(items, cache),
            (self._memo_scope, tag),
            judge,
            [item.text for item in items],
            size,
            self.kind,
        )

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        return ALLOW

    async def on_response(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        return ALLOW

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        """A filter for one streamed channel, or None when this policy does not touch streams."""
        return None

    async def on_finish(self, ctx: RequestContext) -> None:
        return None

    async def aclose(self) -> None:
        """Release resources; called once no request uses this instance any more."""
        return None


PolicyFactory = Callable[[PolicyBlock, PolicyRuntime], Policy]


class Registry:
    """Which class implements each policy kind. Kinds without a factory cannot be loaded."""

    def __init__(self, factories: Mapping[str, PolicyFactory] | None = None) -> None:
        self._factories: dict[str, PolicyFactory] = dict(factories or {})

    def register(self, kind: str, factory: PolicyFactory) -> None:
        self._factories[kind] = factory

    def get(self, kind: str) -> PolicyFactory | None:
        return self._factories.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._factories)
