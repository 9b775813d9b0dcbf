"""What the audit writer reports to its callers: its exceptions and its counters.

Why it exists: the writer's parts (the disk work, the recovery at start, the loop-side API)
raise and count the same things; a module of their own lets each part use them without
importing the writer. Importers keep using ``packgate_sidecar.audit.writer``, which re-exports
them.
"""

from __future__ import annotations

from dataclasses import dataclass


class AuditWriterError(RuntimeError):
    """The writer is not running: never started, closed, or stopped by an I/O error."""


class AuditRecoveryError(AuditWriterError):
    """The existing log cannot be continued (its last complete record does not verify)."""


class AuditQueueFull(RuntimeError):
    """``submit`` found the queue full; the record was not accepted."""


@dataclass
class AuditStats:
    submitted: int = 0  # accepted into the queue
    written: int = 0  # records durable on disk (fsynced), headers and prune records included
    batches: int = 0  # fsyncs of appended records
    rejected: int = 0  # submit() refused: queue full
    waited: int = 0  # put() calls that had to wait for room
    segments: int = 0  # segments opened by this writer
    pruned: int = 0  # segments deleted by retention
    lost: int = 0  # records still queued when the writer failed
    echo_errors: int = 0  # failed writes of the stdout copy (the file copy is unaffected)
