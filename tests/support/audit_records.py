"""Access records and a settable clock for the tests of the audit chain, the writer, its
shipping and the collector's store (they care about sequence, sealing and time, not the body)."""

from __future__ import annotations

from typing import Any

from packgate_sidecar.audit.record import AuditRecord, utc_time

KEY = bytes.fromhex("5f" * 32)  # a fixed audit key
DAY = 86400.0
T0 = 1735689600.0  # 2025-01-01T00:00:00Z


class Clock:
    """The writer's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def writer_record(i: int, now: float = T0, **fields: Any) -> AuditRecord:
    """A typed access record as audit-logger builds it; `fields` add to or replace the base."""
    base: dict[str, Any] = {
        "time": utc_time(now),
        "request_id": f"req-{i}",
        "endpoint": "chat.completions",
        "status": 200,
        "latency_ms": 1.5,
        "pod": "app-7d9f",
        "namespace": "team-a",
        "pack": "default",
        "pack_version": "1.2.0",
        "model": "gpt-4o",
    }
    return AuditRecord(**{**base, **fields})


def access_record(i: int) -> dict[str, Any]:
    return {
        "time": "2025-03-01T12:00:00.000Z",
        "request_id": f"r{i}",
        "endpoint": "chat.completions",
        "status": 200,
        "latency_ms": 1.0,
    }
