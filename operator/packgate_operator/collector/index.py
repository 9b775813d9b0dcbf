"""A SQLite index over the stored chains, so queries do not read every segment.

Why it exists: the segment files are the record of truth (byte for byte what the sidecars
sealed, checkable with ``packgate audit verify``), but "blocked requests in namespace X in the last
hour" must not scan a year of files. The index holds one row per stored record (identity, time,
outcome, acting policies, status and the record body) plus the quarantine and the reported gaps.
It lives next to the chains on the volume and is rebuilt from the segments for anything it lacks
(see ``store.py``), so losing it loses nothing.

Only the storage thread writes; readers use their own connection (WAL mode lets them read while
it writes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .query import Filters
from .summary import summarise

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  id INTEGER PRIMARY KEY,
  uid TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, type TEXT NOT NULL,
  ts TEXT NOT NULL, namespace TEXT NOT NULL, pod TEXT NOT NULL,
  time TEXT, pack TEXT, status INTEGER, outcome TEXT, policies TEXT, body TEXT,
  mac_checked INTEGER NOT NULL DEFAULT 0,
  UNIQUE (uid, seq)
);
CREATE INDEX IF NOT EXISTS records_time ON records (time DESC, id DESC) WHERE type = 'access';
CREATE INDEX IF NOT EXISTS records_ns ON records (namespace, time DESC) WHERE type = 'access';
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY, uid TEXT NOT NULL, namespace TEXT NOT NULL, pod TEXT NOT NULL,
  seq INTEGER, reason TEXT NOT NULL, received TEXT NOT NULL, line TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
  id INTEGER PRIMARY KEY, uid TEXT NOT NULL, namespace TEXT NOT NULL, pod TEXT NOT NULL,
  first INTEGER NOT NULL, last INTEGER NOT NULL, received TEXT NOT NULL,
  UNIQUE (uid, first)
);
"""
# The columns a reader sees in a listing; the body (decisions, usage, cost) only in the detail.
LIST_COLUMNS = "id, uid, seq, namespace, pod, pack, time, status, outcome, policies, body"


@dataclass(frozen=True, slots=True)
class Row:
    uid: str
    seq: int
    hash: str
    type: str
    ts: str
    namespace: str
    pod: str
    body: dict[str, Any]
    mac_checked: bool
    body_json: str | None = None  # the body as sealed (canonical JSON), when at hand


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # The segments are fsynced before a batch is acknowledged; the index can be rebuilt
        # from them, so it need not pay for a second fsync per batch.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


def insert(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    values: list[tuple[Any, ...]] = []
    for r in rows:
        if r.type != "access":
            values.append(
                (r.uid, r.seq, r.hash, r.type, r.ts, r.namespace, r.pod, r.ts)
                + (None,) * 5
                + (int(r.mac_checked),)
            )
            continue
        word, acting = summarise(r.body)
        values.append(
            (
                r.uid,
                r.seq,
                r.hash,
                r.type,
                r.ts,
                r.namespace,
                r.pod,
                str(r.body.get("time") or r.ts),
                r.body.get("pack"),
                r.body.get("status"),
                word,
                "," + ",".join(acting) + ",",
                r.body_json or json.dumps(r.body, separators=(",", ":")),
                int(r.mac_checked),
            )
        )
    conn.executemany(
        "INSERT OR IGNORE INTO records (uid, seq, hash, type, ts, namespace, pod, time, pack,"
        " status, outcome, policies, body, mac_checked) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        values,
    )


def stored_hash(conn: sqlite3.Connection, uid: str, seq: int) -> str | None:
    row = conn.execute("SELECT hash FROM records WHERE uid = ? AND seq = ?", (uid, seq)).fetchone()
    return None if row is None else str(row[0])


def max_seq(conn: sqlite3.Connection, uid: str) -> int:
    row = conn.execute("SELECT MAX(seq) FROM records WHERE uid = ?", (uid,)).fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def where(filters: Filters, namespaces: Sequence[str] | None) -> tuple[str, list[Any]]:
    """SQL conditions for ``filters``, limited to ``namespaces`` (None: all)."""
    clauses, args = ["type = 'access'"], []  # type: list[str], list[Any]
    if namespaces is not None:
        clauses.append(f"namespace IN ({','.join('?' * len(namespaces))})")
        args += list(namespaces)
    for name in ("namespace", "pack", "pod"):
        value = getattr(filters, name)
        if value:
            clauses.append(f"{name} = ?")
            args.append(value)
    if filters.policy:
        clauses.append("policies LIKE ?")
        args.append(f"%,{filters.policy},%")
    if filters.decision:
        clauses.append("outcome = ?")
        args.append(filters.decision)
    if filters.status:
        if filters.status.endswith("xx"):
            low = int(filters.status[0]) * 100
            clauses.append("status BETWEEN ? AND ?")
            args += [low, low + 99]
        else:
            clauses.append("status = ?")
            args.append(int(filters.status))
    if filters.since:
        clauses.append("time >= ?")
        args.append(filters.since)
    if filters.until:
        clauses.append("time <= ?")
        args.append(filters.until)
    if filters.after:
        clauses.append("id > ?")
        args.append(filters.after)
    return " AND ".join(clauses), args


def search(
    conn: sqlite3.Connection, filters: Filters, namespaces: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Matching access records, newest first."""
    sql, args = where(filters, namespaces)
    rows = conn.execute(
        f"SELECT {LIST_COLUMNS} FROM records WHERE {sql} ORDER BY time DESC, id DESC LIMIT ?",  # noqa: S608 - placeholders only
        [*args, filters.limit],
    ).fetchall()
    return [listing(row) for row in rows]


def listing(row: sqlite3.Row) -> dict[str, Any]:
    body = json.loads(row["body"] or "{}")
    return {
        "id": row["id"],
        "pod_uid": row["uid"],
        "seq": row["seq"],
        "namespace": row["namespace"],
        "pod": row["pod"],
        "pack": row["pack"],
        "time": row["time"],
        "status": row["status"],
        "decision": row["outcome"],
        "policies": [p for p in (row["policies"] or "").split(",") if p],
        "endpoint": body.get("endpoint"),
        "model": body.get("model"),
        "latency_ms": body.get("latency_ms"),
        "request_id": body.get("request_id"),
    }


def detail(conn: sqlite3.Connection, uid: str, seq: int) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {LIST_COLUMNS}, hash, ts, mac_checked FROM records"  # noqa: S608 - fixed text
        " WHERE uid = ? AND seq = ? AND type = 'access'",
        (uid, seq),
    ).fetchone()
    if row is None:
        return None
    out = listing(row)
    out.update(
        record=json.loads(row["body"] or "{}"),
        sealed={"hash": row["hash"], "ts": row["ts"], "mac_checked": bool(row["mac_checked"])},
    )
    return out


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        "records": int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]),
        "quarantined": int(conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]),
        "gaps": int(conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]),
    }


def problems(
    conn: sqlite3.Connection, table: str, namespaces: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The quarantine or the gaps, newest first (``table`` is one of the two fixed names)."""
    assert table in ("quarantine", "gaps")
    sql, args = "1", []  # type: str, list[Any]
    if namespaces is not None:
        sql = f"namespace IN ({','.join('?' * len(namespaces))})"
        args = list(namespaces)
    columns = (
        "id, uid, namespace, pod, seq, reason, received"
        if table == "quarantine"
        else ("id, uid, namespace, pod, first, last, received")
    )
    rows = conn.execute(
        f"SELECT {columns} FROM {table} WHERE {sql} ORDER BY id DESC LIMIT 500",  # noqa: S608 - fixed names
        args,
    ).fetchall()
    return [dict(row) for row in rows]
