"""The collector's write-ahead log: entries read back intact, a torn end ignored, replay redone."""

from __future__ import annotations

from pathlib import Path

from packgate_operator.collector import wal


def test_entries_stop_at_a_torn_or_corrupt_entry_and_replay_puts_bytes_back(tmp_path: Path) -> None:
    log = wal.Log(tmp_path / "wal")
    first = wal.Entry("ns/pod_uid/audit-000001-20250301.jsonl", 0, b'{"a":1}\n')
    second = wal.Entry("ns/pod_uid/audit-000001-20250301.jsonl", 8, b'{"b":2}\n')
    log.append([first, second])
    log.append([wal.Entry("ns/pod_uid/audit-000001-20250301.jsonl", 16, b'{"c":3}\n')])
    path = log.path
    log.close()
    data = path.read_bytes()
    assert list(wal.entries(path))[:2] == [first, second]

    path.write_bytes(data[:-3])  # a crash mid-append: never acknowledged, so not replayed
    assert list(wal.entries(path)) == [first, second]
    corrupt = data.replace(b'{"b":2}', b'{"b":9}')  # bytes that fail their CRC end the log
    path.write_bytes(corrupt)
    assert list(wal.entries(path)) == [first]

    path.write_bytes(data)
    pods = tmp_path / "pods"
    chain = pods / "ns" / "pod_uid" / "audit-000001-20250301.jsonl"
    assert wal.replay(pods, [path]) == 3  # the directory and file were lost: recreated
    assert chain.read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n'
    assert not path.exists()

    again = tmp_path / "again.log"  # replaying over bytes already there writes nothing
    again.write_bytes(data)
    assert wal.replay(pods, [again]) == 0 and chain.read_bytes().count(b"\n") == 3


def test_a_path_that_leaves_the_store_is_not_replayed(tmp_path: Path) -> None:
    log = wal.Log(tmp_path / "wal")
    log.append([wal.Entry("../../etc_passwd/x", 0, b"x\n")])
    path = log.path
    log.close()
    assert list(wal.entries(path)) == []
