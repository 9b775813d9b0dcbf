"""The index writer: a thread of its own that applies index changes once records are durable.

Why it exists: an acknowledgement means a record is on disk in its pod's chain. The SQLite index
only serves queries and is rebuilt from the chains for anything it lacks (``store.py``), so it
has no business between the fsync and the acknowledgement. Building and inserting its rows costs
about as much CPU per record as verifying it; done inside the storage thread's group commit it
delayed every acknowledgement by that much, and the next group's fsync waited behind it. Here it
runs beside the storage thread (while that one waits on the disk) instead.

Work is applied in the order it was submitted and committed once per round. A barrier resolves
once everything submitted before it is committed: readers use one so that a query sees every
acknowledged record, and the storage thread waits on one before acknowledging the rare rows that
have no other durable home than the index (sequence gaps) or that a caller expects to see at once
(quarantine, retention).

A round that fails (a full disk, say) is rolled back, logged and reported to ``on_failure``: the
store then marks the index incomplete, and its next start re-reads every chain into it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Work = Callable[[sqlite3.Connection], object]


def sql(statement: str, *params: Any) -> Work:
    """One statement as index work."""
    return lambda conn: conn.execute(statement, params)


def sql_many(statement: str, rows: Sequence[Sequence[Any]]) -> Work:
    """One statement per row as index work."""
    return lambda conn: conn.executemany(statement, rows)


class Indexer:
    def __init__(
        self, conn: sqlite3.Connection, on_failure: Callable[[], object] | None = None
    ) -> None:
        self._conn = conn
        self._on_failure = on_failure
        self._cv = threading.Condition()
        self._queue: list[tuple[Sequence[Work], concurrent.futures.Future[None]]] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="collector-index", daemon=True)
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: Sequence[Work] = ()) -> concurrent.futures.Future[None]:
        """Queue ``work``; the future resolves once it (and all before it) is committed, or
        raises if its own round failed. With no work it is a barrier: it resolves once everything
        queued before it was applied or failed (a failure marks the index incomplete)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cv:
            if self._closing:
                done.set_exception(RuntimeError("the index writer has stopped"))
                return done
            self._queue.append((work, done))
            self._cv.notify()
        return done

    def close(self) -> None:
        """Apply everything queued, then stop."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                round_, self._queue = self._queue, []
            if not round_:
                return
            error: BaseException | None = None
            try:
                for work, _ in round_:
                    for apply in work:
                        apply(self._conn)
                self._conn.commit()
            except Exception as exc:  # the chains hold the records; a restart re-indexes
                error = exc
                self.failures += 1
                log.error("the audit index could not be updated: %s", exc)
                self._conn.rollback()
                if self._on_failure is not None:
                    try:
                        self._on_failure()
                    except OSError as marker:
                        log.error("could not mark the audit index incomplete: %s", marker)
            for work, done in round_:
                # A barrier (no work of its own) only waits for the work before it: whether it
                # shares a round with a failed write is timing, so it never inherits the error.
                if error is None or not work:
                    done.set_result(None)
                else:
                    done.set_exception(error)
