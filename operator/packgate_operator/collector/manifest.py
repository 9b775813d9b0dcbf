"""The sealed list of segments the collector removed by retention (``pruned.jsonl``).

Why it exists: a verifier accepts a chain that begins after a removed segment only because this
list names that segment's last hash. Unsealed, the list would let anyone with write access to the
volume delete the oldest records of a chain and add a line that excuses the deletion. So each
line is a sealed record of a small chain of its own: type ``prune``, with the body the sidecar
uses for its own in-chain prune records (``retention_days`` and the segments, each with its name,
first and last seq and last hash), hashed, linked and MACed under the namespace's audit key.
``packgate audit verify`` checks the list like a segment and trusts its hashes only when it
verifies (``packgate_sidecar/audit/verify.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from packgate_sidecar.audit.chain import GENESIS_STATE, JSONValue, parse_line, seal
from packgate_sidecar.audit.record import utc_time
from packgate_sidecar.audit.segments import read_tail, write_all

NAME = "pruned.jsonl"


def append(directory: Path, key: bytes, body: Mapping[str, JSONValue], now: float) -> None:
    """Seal ``body`` as the next record of ``directory``'s list and make it durable."""
    path = directory / NAME
    state = GENESIS_STATE
    if path.exists():
        last, fragment = read_tail(path)
        if fragment:  # a crash mid-append: the segments that line named were not removed yet
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size - len(fragment))
        env = parse_line(last) if last is not None else None
        if env is not None and not isinstance(env, str):
            state = env.state_after
    line, _ = seal(state, "prune", body, key=key, ts=utc_time(now))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
