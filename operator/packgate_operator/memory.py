"""Keep the operator's memory proportional to the sidecars it serves, and give it back after.

Why: every sidecar holds one TLS long poll open, and asyncio gives each TLS connection a 256 KiB
read buffer (asyncio.sslproto.SSLProtocol.max_size). With 500 sidecars that was about 160 MiB of
buffers that are almost always empty, and glibc kept the freed memory after the polls closed
(measured: 61 -> 219 MiB with 500 polls, still 219 MiB after they closed). A TLS record is at
most 16 KiB, so a 16 KiB buffer reads every record in one call; and `malloc_trim` hands freed
heap back to the system once many connections have gone (measured after both: 61 -> 90 MiB with
500 polls, 70 MiB after they closed). `make bench` and tests/integration/test_operator_memory.py
measure it.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable

TLS_READ_BUFFER = 16 * 1024  # the largest TLS record


def shrink_tls_buffers() -> None:
    """Smaller per-connection TLS read buffers for every asyncio TLS server and client here."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def trim() -> bool:
    """Return freed heap memory to the system (glibc only; False elsewhere)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    return False


async def trim_when_connections_drop(
    connections: Callable[[], int], every: float = 5.0, drop: int = 32
) -> None:
    """Forever: trim once `connections()` has fallen by `drop` since the last peak."""
    peak = connections()
    while True:
        await asyncio.sleep(every)
        now = connections()
        if now > peak:
            peak = now
        elif peak - now >= drop:
            await asyncio.get_running_loop().run_in_executor(None, trim)
            peak = now
