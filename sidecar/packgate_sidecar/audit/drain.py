"""Where the audit writer's ready batches go, and how their waiters learn they are durable.

Why it exists: a batch sealed on the event loop is written by one of two consumers, and
settling it (counting it, resolving its futures, waking ``put`` calls waiting for room, failing
everything for good after a failed write or sync) must follow the same rules for both. The
compiled syncer (``native.py``) takes batches of plain lines handed over by an event loop and
reports their completion through an eventfd that loop watches; the writer thread of this module
takes everything else (new segments, pruning, the copy to an echo stream without a descriptor,
batches from threads without an event loop), and first waits for what the syncer holds, so one
order holds across both. The producers' side (sealing, queueing, when a batch is ready) is
``writer.py``; :class:`BatchDrain` is its base, a mixin over the writer's state.

A failed write or sync stops the writer for good (the kernel may have dropped the unsynced
pages): every waiting future fails with :class:`AuditWriterError`, queued records are counted
in ``stats.lost``, and every later call raises.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable

from packgate_sidecar.audit.batch import Batch, Write, settle, wake
from packgate_sidecar.audit.disk import SegmentDisk
from packgate_sidecar.audit.errors import AuditStats, AuditWriterError
from packgate_sidecar.audit.native import SyncerLane


class BatchDrain:
    """The consumers' side of ``AuditWriter`` (see the module docstring). Every method but
    ``_reap``, ``_settle_native``, ``_drain_native`` and the thread's own ``_run`` runs with
    ``_cv`` held."""

    # The writer's state, set by AuditWriter.__init__; guarded by _cv but for the noted ones.
    stats: AuditStats
    on_durable: Callable[[], None] | None  # the shipper's wake-up after each durable batch
    _cv: threading.Condition
    _lock: threading.Lock  # _cv's
    _batch: Batch  # the batch being filled (ready: a consumer may take it)
    _room: list[asyncio.Future[None]]  # put() calls waiting for room
    _sleeping: bool  # the writer thread waits for work (a submit must wake it)
    _closing: bool
    _error: BaseException | None
    _busy: bool  # the writer thread holds a batch: nothing goes to the syncer
    _lane: SyncerLane
    _echo_fd: int | None
    _disk: SegmentDisk  # owned by the writer thread once it runs
    _fsync: bool
    _access_written: int

    # -- the compiled syncer -----------------------------------------------------------------

    def _native_takes(self, batch: Batch) -> bool:
        """Whether the syncer writes this batch: lines only (segments and pruning are the
        writer thread's), no stdout copy to write after it, the thread holding no batch (whose
        ops come first), nothing failed."""
        return (
            self._lane.syncer is not None
            and not self._busy
            and self._echo_fd is not None
            and self._error is None
            and all(isinstance(op, Write) for op in batch.ops)
        )

    def _dispatch(self, batch: Batch) -> None:
        """Hand a ready batch to the syncer (see ``SyncerLane.hand_over``)."""
        try:
            echo = self._echo_fd
            assert echo is not None  # see _native_takes
            flight = self._lane.hand_over(self._disk.fd, batch, self._fsync, echo, self._reap)
        except OSError as exc:  # it failed since the last completion was settled
            self._batch = Batch()
            error = AuditWriterError(f"audit writer failed: {exc}")
            for failed in (batch, *self._fail(exc)):
                settle(failed, error)
            room, self._room = self._room, []
            wake(room, None)  # put() tries again and gets the error
            return
        self._batch = Batch()
        if flight.thread and self._sleeping:  # no event loop watches for it: wake the thread
            self._sleeping = False
            self._cv.notify()

    def _fail(self, exc: BaseException) -> list[Batch]:
        """Stop for good after a failed write or fsync; returns the batches that now fail."""
        self._error = exc
        lost = [*self._lane.drop(), self._batch]
        self._batch = Batch()
        self.stats.lost = self.stats.submitted - self._access_written
        return lost

    def _reap(self) -> None:
        """The syncer's eventfd is readable: settle what it completed (on the event loop)."""
        syncer = self._lane.syncer
        if syncer is not None:
            self._settle_native(*syncer.poll())

    def _settle_native(self, completed: int, errno: int) -> None:
        """Resolve the batches up to ``completed``; with ``errno``, fail every other one."""
        failed: list[Batch] = []
        with self._lock:
            done = self._lane.landed(completed)
            for flight in done:
                if flight.records:
                    self.stats.written += flight.records
                    self._access_written += flight.access
                    self.stats.batches += 1
            if errno and self._error is None:
                failed = self._fail(OSError(errno, os.strerror(errno)))
            if done and self._echo_fd is not None and self._echo_fd >= 0:
                self.stats.echo_errors += self._lane.new_echo_errors()
            room: list[asyncio.Future[None]] = []
            if done or failed:
                room, self._room = self._room, []
        for flight in done:
            settle(flight.batch, None)
        if any(flight.records for flight in done) and self.on_durable is not None:
            self.on_durable()
        if failed:
            error = AuditWriterError(f"audit writer failed: {self._error}")
            for batch in failed:
                settle(batch, error)
        wake(room, None)  # put() tries again: room now, or the error

    def _drain_native(self, *, orphans_only: bool = False) -> None:
        """Wait (without the GIL) for the syncer's batches, or for the last one no event loop
        watches, and settle them; raises the failure that stopped the writer, if any."""
        syncer = self._lane.syncer
        with self._cv:
            ticket = self._lane.last_ticket(orphans_only=orphans_only)
        if syncer is not None and ticket is not None:
            self._settle_native(*syncer.wait(ticket))
        if self._error is not None:
            raise self._error

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        batch = Batch()
        try:
            while True:
                with self._cv:
                    taken = self._take()
                    room, self._room = self._room, []
                wake(room, None)
                if taken is None:  # the syncer's batches that no loop settles, or closing
                    self._drain_native(orphans_only=not self._closing)
                    with self._cv:
                        if self._closing and not self._lane.flights and not self._batch.waiting():
                            return  # everything queued has been written
                    continue
                batch = taken
                self._drain_native()  # what the syncer holds comes first
                self._disk.apply(batch.ops)
                self._disk.echo_out()  # before the loop is woken: after, both contend for the GIL
                settle(batch, None)
                with self._cv:
                    self._busy = False
        except BaseException as exc:
            with self._cv:
                lost = self._fail(exc) if self._error is None else [self._batch]
                self._batch = Batch()
                room, self._room = self._room, []
                self.stats.lost = self.stats.submitted - self._access_written
            error = AuditWriterError(f"audit writer failed: {self._error}")
            for failed in (batch, *lost):
                settle(failed, error)
            wake(room, None)  # put() tries again and gets the error

    def _take(self) -> Batch | None:
        """(With _cv held.) Wait for work: a ready batch the syncer does not take (returned,
        the thread busy with it), or a syncer batch no event loop settles, or closing (None)."""
        while True:
            batch = self._batch
            if batch.ready or (self._closing and batch.waiting()):
                if self._native_takes(batch):
                    self._dispatch(batch)  # left while the thread was busy, or on close
                    continue
                self._batch = Batch()
                self._busy = True
                return batch
            if self._closing or any(flight.thread for flight in self._lane.flights):
                return None
            self._sleeping = True
            self._cv.wait()
            self._sleeping = False

    def _durable(self, access: int) -> None:
        """(On the writer thread.) Lines holding ``access`` access records were fsynced."""
        self._access_written += access
        if self.on_durable is not None:
            self.on_durable()
