"""One plain access record, as the sidecar's audit-logger writes it, for tests of the audit chain,
its shipping and the collector's store (they care about sequence and sealing, not the body)."""

from __future__ import annotations

from typing import Any


def access_record(i: int) -> dict[str, Any]:
    return {
        "time": "2025-03-01T12:00:00.000Z",
        "request_id": f"r{i}",
        "endpoint": "chat.completions",
        "status": 200,
        "latency_ms": 1.0,
    }
