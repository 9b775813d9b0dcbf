"""The audit-logger policy: one tamper-evident record per request (or per request acted on).

Why it exists: compliance needs to show, after the fact, who sent what kind of request through
which pack and what every policy decided, without the log itself becoming a store of prompts.
Records are `audit.record.AuditRecord`s (short tokens and numbers only: no prompt, completion or
secret can be written; `audit_body.py` makes them from the request, encoded directly), sealed
into the hash chain by `audit.writer.AuditWriter` (on the event loop; written and fdatasynced
by its compiled syncer thread, which never takes the GIL);
`packgate audit verify DIR` checks them.

- `log_all_access: true`: a record for every request; false: only for requests where some
  policy did not simply allow (flag, rewrite, block) or failed.
- `immutable`: packgate always writes the hash-chained, MAC-sealed form; it costs nothing that
  shows next to a provider call, so `immutable: false` does not switch it off (there is no
  weaker format to choose). `stdout: true` also echoes each sealed line to stdout.
- Where: `<data dir>/audit`, the data dir from `--data-dir` or `PACKGATE_DATA_DIR`; without one,
  a temporary directory (logged as a warning: it does not survive the pod). One writer per
  directory per process, shared by reloads (a second writer would fork the chain); a reload
  that changes `retention_days` or `stdout` reconfigures it.
- The MAC key: `PACKGATE_AUDIT_KEY_FILE` or `PACKGATE_AUDIT_KEY` (see `audit/keys.py`).
- Backpressure: audit is a compliance control, so a request that could not be audited is not
  served. Before a request is forwarded the policy checks that the writer runs and its queue has
  room; if not it fails, which blocks the request (fail closed) unless `fail_open` (counted in
  `packgate_policy_fail_open_total`). A record that meets a full queue after the response waits
  for room within the policy's time budget.
- Durability (issue 13): a record that must exist survives a `kill -9` of the sidecar. A
  non-streamed response is handed to the client only after its record is fsynced (`on_finish`
  leaves the record's durability future in `ctx.state`, and the gateway waits for it before sending
  the response, and withholds the response if it fails, unless `fail_open`); a streamed request,
  whose bytes reach the client as they come, gets a write-ahead record (`outcome: started`, see
  `write_ahead`), queued before it goes upstream and durable before the first byte of the answer
  reaches the client, and its outcome record is appended when it ends (lazily: no answer waits
  for it, so it goes to disk with the next record or within the 5 ms linger). Concurrent
  requests share fsyncs (group commit): each request is counted (`AuditWriter.expect`) from
  `on_request` to its last record, and while others are in flight a batch waits up to 5 ms for
  their records (a lone request never waits); `make bench` (`audit_durability`) measures the
  cost.
- Shipping: with `PACKGATE_AUDIT_COLLECTOR_URL` set (the injector sets it), `audit/ship.py`
  ships every sealed record to the audit collector; a spool the collector has not acknowledged
  up to its bound fails requests the same way (closed unless `fail_open`).
- Retention: expired whole segments are pruned when the writer starts, when a new segment
  starts (at least daily under traffic) and by a daily timer.
- Records carry the decisions as `phase:reason` plus numeric details (`request:injection/
  score=0.93`), token usage (marked `estimated` when the provider reported none) and cost from
  cost-attribution (`cost_attribution.attribute`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packgate_policy import AuditLogger, PolicyBlock

from .. import scrub
from ..audit import ship
from ..audit.keys import KEY_ENV, load_key
from ..audit.writer import (
    DURABLE_STATE_KEY,
    STREAMED_STATE_KEY,
    AuditQueueFull,
    AuditWriter,
    AuditWriterError,
)
from ..logs import get_logger, log
from ..policy import ALLOW, Decision, Policy, PolicyRuntime, RequestContext, TextItem
from .audit_body import build_record, decision_reason, encode_record
from .common import settings_as

_log = get_logger("audit")
PRUNE_INTERVAL = 86400.0
# ctx.state key: this request is counted by the writer's expect() until its last record.
_EXPECTED = "audit-logger/expected"
__all__ = [
    "PRUNE_INTERVAL",
    "AuditLoggerPolicy",
    "AuditUnavailable",
    "acted_on",
    "audit_dir",
    "build_record",  # the record's body is audit_body.py's: importers from here keep working
    "decision_reason",
]


class AuditUnavailable(RuntimeError):
    """The audit log cannot take a record now; raised so the chain fails the request closed."""


@dataclass
class _Shared:
    writer: AuditWriter
    users: int = 0
    pruner: asyncio.Task[None] | None = None
    shipper: ship.Shipper | None = None


_writers: dict[Path, _Shared] = {}


@cache
def _fallback_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="packgate-audit-"))
    log(
        _log,
        30,
        "no data dir configured (--data-dir or PACKGATE_DATA_DIR): audit records go to a "
        "temporary directory that does not outlive this process",
        directory=str(path),
    )
    return path


def audit_dir(runtime: PolicyRuntime) -> Path:
    base = runtime.data_dir / "audit" if runtime.data_dir is not None else _fallback_dir()
    return base.resolve()


def _acquire(directory: Path, config: AuditLogger, metrics: object = None) -> _Shared:
    # The MAC key is a configured secret: it must never appear in anything the sidecar returns.
    scrub.register(v for v in (os.environ.get(KEY_ENV),) if v)
    shared = _writers.get(directory)
    if shared is None:
        writer = AuditWriter(
            directory,
            load_key(),
            retention_days=config.retention_days,
            echo_stdout=config.stdout,
        )
        writer.start()  # recovers the chain; a log it cannot continue refuses the config
        shared = _writers[directory] = _Shared(writer)
        settings = ship.ShipSettings.from_env(os.environ)  # ShipConfigError: a broken injection
        if settings is not None:
            shared.shipper = ship.Shipper(settings, directory, metrics)
            writer.on_durable = shared.shipper.notify
    else:
        shared.writer.reconfigure(retention_days=config.retention_days, echo_stdout=config.stdout)
    shared.users += 1
    return shared


async def _release(directory: Path, shared: _Shared) -> None:
    shared.users -= 1
    if shared.users > 0:
        return
    if _writers.get(directory) is shared:
        del _writers[directory]
    if shared.pruner is not None:
        shared.pruner.cancel()
    await shared.writer.aclose()
    if shared.shipper is not None:
        await shared.shipper.drain()  # every record is on disk now: ship what is left


async def _prune_daily(writer: AuditWriter) -> None:
    while True:
        await asyncio.sleep(PRUNE_INTERVAL)
        try:
            await writer.aprune()
        except Exception as exc:
            log(_log, 40, "audit prune failed", error=type(exc).__name__)


def acted_on(ctx: RequestContext) -> bool:
    return any(d.action != "allow" or d.failure is not None for d in ctx.decisions)


class AuditLoggerPolicy(Policy):
    kind = "audit-logger"

    def __init__(self, settings: PolicyBlock, runtime: PolicyRuntime) -> None:
        super().__init__(settings, runtime)
        self.config = settings_as(settings, AuditLogger)
        self.directory = audit_dir(runtime)
        self.metrics = runtime.metrics
        self.shared = _acquire(self.directory, self.config, runtime.metrics)
        self.writer = self.shared.writer
        self.shipper = self.shared.shipper
        if self.shipper is not None:
            self.shipper.fail_open = self.config.fail_open
            with contextlib.suppress(RuntimeError):  # no running loop: the first request starts it
                self.shipper.start()
        self._closed = False

    def _ensure_pruner(self) -> None:
        if self.shared.pruner is None:
            self.shared.pruner = asyncio.get_running_loop().create_task(_prune_daily(self.writer))
        if self.shipper is not None:
            self.shipper.start()

    async def on_request(self, ctx: RequestContext, texts: Sequence[TextItem]) -> Decision:
        self._ensure_pruner()
        if not self.writer.accepting:
            raise AuditUnavailable("the audit log cannot take records (queue full or stopped)")
        if self.shipper is not None and self.shipper.spool_full:
            raise AuditUnavailable("the audit spool is full: the collector has not acknowledged "
                                   f"{self.shipper.unacked_bytes} bytes")  # fmt: skip
        self.writer.expect(1)  # records follow: the writer lets batches wait a moment for them
        ctx.state[_EXPECTED] = True
        return ALLOW

    def write_ahead(self, ctx: RequestContext) -> asyncio.Future[None] | None:
        """Queue a `started` record for a streamed request; the future resolves once it is
        fsynced. The gateway sends no byte of the stream to the client before that (the write
        overlaps the provider's time to first token). Raises if the log cannot take it."""
        if not (self.config.log_all_access or acted_on(ctx)):
            return None
        counted = _EXPECTED in ctx.state
        try:
            durable = self.writer.submit_durable(encode_record(ctx, started=True), counted=counted)
        except (AuditQueueFull, AuditWriterError):
            if not self.config.fail_open:
                raise
            self._count_fail_open("stream")
            return None
        return self._handed_over(durable, "stream")

    async def on_finish(self, ctx: RequestContext) -> None:
        if ctx.state.pop(_EXPECTED, False):
            self.writer.expect(-1)  # its last record is submitted now, or never
        if not self.config.log_all_access and not acted_on(ctx):
            return
        record = encode_record(ctx)
        try:
            # A relayed stream's outcome record hurries nobody: it rides with the next record.
            lazy = STREAMED_STATE_KEY in ctx.state
            durable = self.writer.submit_durable(record, lazy=lazy)
        except AuditQueueFull:
            await self.writer.put_durable(record)  # within the chain's time budget for this hook
            return
        except AuditWriterError as exc:
            if self.config.fail_open:
                raise  # the chain logs and counts the failed hook; the answer still goes out
            durable = asyncio.get_running_loop().create_future()
            durable.set_exception(exc)
        # The gateway holds a whole response until this future resolves (the record is fsynced),
        # and withholds it if the future fails; waiting for the disk is not policy work, so it is
        # outside this hook's time budget.
        ctx.state.setdefault(DURABLE_STATE_KEY, []).append(self._handed_over(durable, "finish"))

    def _handed_over(self, durable: asyncio.Future[None], phase: str) -> asyncio.Future[None]:
        """What the gateway waits on before an answer leaves. Failing closed, the record's own
        future: a record that cannot be made durable withholds the answer (503
        `audit_unavailable`). Failing open, one that resolves either way, counting a failure."""
        if not self.config.fail_open:
            return durable
        opened = durable.get_loop().create_future()

        def settle(done: asyncio.Future[None]) -> None:
            if done.cancelled() or done.exception() is not None:
                self._count_fail_open(phase)
            if not opened.done():
                opened.set_result(None)

        durable.add_done_callback(settle)
        return opened

    def _count_fail_open(self, phase: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.policy_fail_open, self.kind, phase).inc()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await _release(self.directory, self.shared)
