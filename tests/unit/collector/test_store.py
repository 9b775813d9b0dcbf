"""The collector's store on a real directory: chains kept byte for byte, restarts, retention."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest
from packgate_operator.collector import index
from packgate_operator.collector.query import parse
from packgate_operator.collector.store import Batch, PodKey, Store
from packgate_sidecar.audit.verify import verify_path
from packgate_sidecar.audit.writer import AuditWriter, list_segments

KEY = bytes(range(32))
POD = PodKey("team-a", "chat-1", "0f6c1d2e-uid")


def record(i: int, blocked: bool = False) -> dict[str, object]:
    return {
        "time": f"2025-03-01T12:00:{i:02d}.000Z",
        "request_id": f"r{i}",
        "endpoint": "chat.completions",
        "status": 403 if blocked else 200,
        "latency_ms": 1.5,
        "pod": POD.pod,
        "namespace": POD.namespace,
        "pack": "gateway",
        "decisions": [
            {
                "policy": "prompt-injection",
                "decision": "block" if blocked else "allow",
                "reason": "request:injection/score=0.9" if blocked else "request",
            }
        ],
    }


def sidecar_log(directory: Path, n: int) -> list[bytes]:
    writer = AuditWriter(directory, KEY, fsync=False)
    writer.start()
    for i in range(n):
        writer.submit(record(i, blocked=i % 3 == 0))
    writer.close()
    return [line for p in list_segments(directory) for line in p.read_bytes().splitlines()]


def ingest(store: Store, lines: list[bytes], keys: dict[str, bytes] | None) -> object:
    return asyncio.run(store.ingest(Batch(POD, lines, keys, "gateway", 30)))


def test_stored_chain_is_the_sidecar_log_byte_for_byte_and_verifies(tmp_path: Path) -> None:
    from packgate_sidecar.audit.chain import key_id

    lines = sidecar_log(tmp_path / "sidecar", 10)
    store = Store(tmp_path / "store", fsync=False)
    store.open()
    try:
        result = ingest(store, lines[:6], {key_id(KEY): KEY})
        assert len(result.stored) == 6  # type: ignore[attr-defined]
        result = ingest(store, lines[4:], {key_id(KEY): KEY})
        assert result.duplicates == 2 and len(result.stored) == len(lines) - 6  # type: ignore[attr-defined]
    finally:
        store.close()
    chain_dir = tmp_path / "store" / "pods" / "team-a" / f"{POD.pod}_{POD.uid}"
    stored = [line for p in list_segments(chain_dir) for line in p.read_bytes().splitlines()]
    assert stored == lines
    assert [p.name for p in list_segments(chain_dir)] == [
        p.name for p in list_segments(tmp_path / "sidecar")
    ]
    assert verify_path(chain_dir, [KEY]).ok
    meta = json.loads((chain_dir / "meta.json").read_text())
    assert meta == {
        "namespace": "team-a",
        "pod": "chat-1",
        "uid": POD.uid,
        "pack": "gateway",
        "retention_days": 30,
    }


def test_a_restart_cuts_an_unacknowledged_torn_tail_and_rebuilds_the_index(tmp_path: Path) -> None:
    lines = sidecar_log(tmp_path / "sidecar", 8)
    store = Store(tmp_path / "store", fsync=False)
    store.open()
    ingest(store, lines, None)
    store.close()
    chain_dir = tmp_path / "store" / "pods" / "team-a" / f"{POD.pod}_{POD.uid}"
    newest = list_segments(chain_dir)[-1]
    with newest.open("ab") as f:
        f.write(b'{"body":{"half a rec')  # a crash mid-write, never acknowledged
    (tmp_path / "store" / "index.sqlite3").unlink()  # and the index lost
    store = Store(tmp_path / "store", fsync=False)
    store.open()
    try:
        assert store.recovered_tails == 1 and store.reindexed == len(lines)
        assert ingest(store, lines[-2:], None).duplicates == 2  # type: ignore[attr-defined]
        conn = store.reader()
        blocked = index.search(conn, parse({"decision": "blocked"}), None)
        assert [r["request_id"] for r in blocked] == ["r6", "r3", "r0"]  # newest first
        assert index.search(conn, parse({"namespace": "team-b"}), None) == []
        assert index.search(conn, parse({}), ["team-b"]) == []
        one = index.detail(conn, POD.uid, blocked[0]["seq"])
        assert one is not None and one["record"]["decisions"][0]["policy"] == "prompt-injection"
    finally:
        store.close()
    assert verify_path(chain_dir, [KEY]).ok


def test_retention_removes_expired_chains_only(tmp_path: Path) -> None:
    lines = sidecar_log(tmp_path / "sidecar", 3)
    store = Store(tmp_path / "store", fsync=False)
    store.open()
    try:
        ingest(store, lines, None)
        assert asyncio.run(store.prune(time.time())) == []
        removed = asyncio.run(store.prune(time.time() + 31 * 86400))
        assert removed == [f"pods/team-a/{POD.pod}_{POD.uid}"]
        assert index.search(store.reader(), parse({}), None) == []
    finally:
        store.close()


def test_overlapping_batches_at_once_are_stored_once_and_queryable_on_ack(tmp_path: Path) -> None:
    """At-least-once delivery: the same records arrive twice, side by side (a sidecar's retry
    racing its first attempt), possibly in one group commit, before the index has them."""
    from packgate_sidecar.audit.chain import key_id

    lines = sidecar_log(tmp_path / "sidecar", 12)
    keys = {key_id(KEY): KEY}
    store = Store(tmp_path / "store", fsync=True)  # the real commit path: fdatasync, dir fsyncs
    store.open()

    async def both() -> list[object]:
        first = store.ingest(Batch(POD, lines[:8], keys, "gateway", 30))
        second = store.ingest(Batch(POD, lines[4:], keys, "gateway", 30))
        results = list(await asyncio.gather(first, second))
        await store.caught_up()
        return results

    try:
        a, b = asyncio.run(both())
        assert len(a.stored) + len(b.stored) == len(lines)  # type: ignore[attr-defined]
        assert a.duplicates + b.duplicates == 4  # type: ignore[attr-defined]
        assert not a.quarantined and not b.quarantined  # type: ignore[attr-defined]
        # Acknowledged means queryable: every access record is in the index at once.
        found = index.search(store.reader(), parse({}), None)
        assert sorted(r["request_id"] for r in found) == sorted(f"r{i}" for i in range(12))
    finally:
        store.close()
    chain_dir = tmp_path / "store" / "pods" / "team-a" / f"{POD.pod}_{POD.uid}"
    assert [ln for p in list_segments(chain_dir) for ln in p.read_bytes().splitlines()] == lines


def test_a_failed_index_round_is_repaired_on_the_next_start(tmp_path: Path) -> None:
    lines = sidecar_log(tmp_path / "sidecar", 6)
    store = Store(tmp_path / "store", fsync=False)
    store.open()
    try:
        ingest(store, lines[:3], None)
        store.wait_indexed()
        with sqlite3.connect(store.index_path) as other:  # whatever breaks the index (disk full)
            other.execute("DROP TABLE records")
        result = ingest(store, lines[3:], None)
        assert len(result.stored) == len(lines) - 3  # type: ignore[attr-defined]  # acknowledged
        store.wait_indexed()
        assert (tmp_path / "store" / "index.incomplete").exists()
    finally:
        store.close()
    store = Store(tmp_path / "store", fsync=False)
    store.open()
    try:
        assert (
            store.reindexed == len(lines) and not (tmp_path / "store" / "index.incomplete").exists()
        )
        found = index.search(store.reader(), parse({}), None)
        assert sorted(r["request_id"] for r in found) == [f"r{i}" for i in range(6)]
    finally:
        store.close()


def test_what_a_power_cut_takes_from_the_chain_files_comes_back_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acknowledgement makes only the write-ahead log durable; the chain files follow at the
    next checkpoint. The disk as a power cut right after the acknowledgements could leave it:
    the log intact, one chain file cut short and another pod's directory gone entirely."""
    import shutil

    from packgate_operator.collector import store as store_module
    from packgate_sidecar.audit.chain import key_id

    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 3600.0)  # no checkpoint in between
    keys = {key_id(KEY): KEY}
    lines = sidecar_log(tmp_path / "sidecar", 10)
    other = PodKey("team-b", "chat-2", "9a8b-uid")
    store = Store(tmp_path / "store", fsync=True)
    store.open()
    try:
        ingest(store, lines[:4], keys)
        ingest(store, lines[4:], keys)
        asyncio.run(store.ingest(Batch(other, lines, keys, "gateway", 30)))
        # The state on disk at this moment, had the power gone (the page cache lost).
        crashed = tmp_path / "crashed"
        shutil.copytree(tmp_path / "store", crashed)
    finally:
        store.close()
    assert not list((tmp_path / "store" / "wal").iterdir())  # a clean close leaves no log
    chain_dir = crashed / "pods" / "team-a" / f"{POD.pod}_{POD.uid}"
    segment = list_segments(chain_dir)[-1]
    with segment.open("r+b") as f:
        f.truncate(len(lines[0]) + 7)  # the first record survived, a torn piece of the second
    shutil.rmtree(crashed / "pods" / "team-b")
    (crashed / "index.sqlite3").unlink()

    store = Store(crashed, fsync=True)
    store.open()
    try:
        assert store.replayed >= 2 and store.recovered_tails == 0
        found = index.search(store.reader(), parse({}), None)
        access = sum(b'"type":"access"' in line for line in lines)
        assert len(found) == 2 * access == 20  # every acknowledged access record of both pods
        assert ingest(store, lines[-3:], keys).duplicates == 3  # type: ignore[attr-defined]
    finally:
        store.close()
    for directory in (chain_dir, crashed / "pods" / "team-b" / f"{other.pod}_{other.uid}"):
        assert [ln for p in list_segments(directory) for ln in p.read_bytes().splitlines()] == lines
        assert verify_path(directory, [KEY]).ok


def test_retention_checkpoints_first_so_no_log_brings_a_pruned_chain_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from packgate_operator.collector import store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 3600.0)
    lines = sidecar_log(tmp_path / "sidecar", 3)
    store = Store(tmp_path / "store", fsync=True)
    store.open()
    try:
        ingest(store, lines, None)
        asyncio.run(store.prune(time.time() + 31 * 86400))
        shutil.copytree(tmp_path / "store", tmp_path / "crashed")  # a crash right after
    finally:
        store.close()
    again = Store(tmp_path / "crashed", fsync=True)
    again.open()
    again.close()
    assert again.replayed == 0
    assert not (tmp_path / "crashed" / "pods" / "team-a" / f"{POD.pod}_{POD.uid}").exists()
