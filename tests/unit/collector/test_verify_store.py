"""``packgate audit verify`` on a collector store and on an exported copy of it."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from packgate_operator.collector.store import Batch, PodKey, Store
from packgate_sidecar.audit.chain import key_id, parse_line, seal
from packgate_sidecar.audit.writer import AuditWriter, list_segments
from packgate_sidecar.cli import main

from tests.support.audit_records import access_record

KEY = bytes(range(32))


def build_store(root: Path, pods: int = 2, records: int = 6) -> Path:
    store = Store(root, fsync=False)
    store.open()
    try:
        for n in range(pods):
            pod = PodKey("team-a", f"chat-{n}", f"uid-{n}")
            writer = AuditWriter(root.parent / f"sidecar-{n}", KEY, fsync=False)
            writer.start()
            for i in range(records):
                writer.submit(access_record(i))
            writer.close()
            lines = [
                ln for p in list_segments(writer.directory) for ln in p.read_bytes().splitlines()
            ]
            asyncio.run(store.ingest(Batch(pod, lines, None)))
    finally:
        store.close()
    return root


def verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    key_file = path.parent / "key"
    key_file.write_bytes(KEY.hex().encode())
    code = main(["audit", "verify", str(path), "--key-file", str(key_file), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_store_and_export_verify_and_problems_are_classified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = build_store(tmp_path / "store")
    code, report = verify(store, capsys)
    assert code == 0 and report["ok"] and len(report["chains"]) == 2  # type: ignore[arg-type]

    export = tmp_path / "export"
    shutil.copytree(store / "pods", export)
    chain0, chain1 = sorted(p for p in (export / "team-a").iterdir())
    seg0 = list_segments(chain0)[-1]
    lines = seg0.read_bytes().splitlines(keepends=True)
    seg0.write_bytes(b"".join(lines[:2] + lines[3:]))  # a record deleted: a gap
    seg1 = list_segments(chain1)[-1]
    data = seg1.read_bytes()
    edited = data.replace(b'"status":200', b'"status":500', 1)  # a record changed: tampering
    seg1.write_bytes(edited + b'{"body":{"cut sh')  # and a torn last line
    code, report = verify(export, capsys)
    assert code == 1
    assert (report["tampering"], report["gap"], report["torn_tail"]) == (1, 1, 1)
    classes = {f["class"] for c in report["chains"] for f in c["findings"]}  # type: ignore[attr-defined]
    assert classes == {"tampering", "gap", "torn_tail"}


def pruned_chain(root: Path) -> Path:
    """A stored chain whose first segment retention has removed (sealed list under KEY)."""
    now = time.time()
    clock = [now - 40 * 86400]  # the first records are 40 days old, past a 30-day retention
    writer = AuditWriter(root.parent / "sidecar", KEY, fsync=False, clock=lambda: clock[0])
    writer.start()
    for i in range(6):
        if i == 3:
            writer.flush()
            clock[0] = now  # a new day: a new segment
        writer.submit(access_record(i))
    writer.close()
    lines = [ln for p in list_segments(writer.directory) for ln in p.read_bytes().splitlines()]
    store = Store(root, fsync=False)
    store.open()
    try:
        pod = PodKey("team-a", "chat-0", "uid-0")
        asyncio.run(store.ingest(Batch(pod, lines, {key_id(KEY): KEY}, "gateway", 30)))
        removed = asyncio.run(store.prune(keys={"team-a": KEY}))
    finally:
        store.close()
    chain = root / "pods" / "team-a" / "chat-0_uid-0"
    assert removed == [
        str((chain / p.name).relative_to(root)) for p in [*list_segments(writer.directory)][:1]
    ]
    return chain


def test_an_edited_or_forged_retention_list_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = pruned_chain(tmp_path / "store")
    code, report = verify(tmp_path / "store", capsys)
    assert code == 0 and report["ok"], report  # the shortened chain verifies: the list excuses it
    listed = chain / "pruned.jsonl"
    sealed = listed.read_bytes()
    entry = json.loads(sealed)
    assert entry["type"] == "prune" and entry["body"]["retention_days"] == 30

    # Edited: the list now claims a longer retention (its hash no longer holds).
    listed.write_bytes(sealed.replace(b'"retention_days":30', b'"retention_days":31'))
    code, report = verify(tmp_path / "store", capsys)
    findings = report["chains"][0]["findings"]  # type: ignore[index]
    assert code == 1
    assert {(f["segment"], f["class"]) for f in findings} == {
        ("pruned.jsonl", "tampering"),  # the list itself
        (list_segments(chain)[0].name, "gap"),  # and it no longer excuses the missing start
    }

    # Forged: a line linked and hashed like the genuine one, but not sealed with the key.
    segments = list_segments(chain)
    body = {"retention_days": 30, "segments": [{"name": segments[0].name, "last_hash": "f" * 64}]}
    state = parse_line(sealed.rstrip(b"\n"))
    assert not isinstance(state, str)
    forged, _ = seal(state.state_after, "prune", body, key=b"not the audit key" * 2, ts=entry["ts"])
    listed.write_bytes(sealed + forged)
    code, report = verify(tmp_path / "store", capsys)
    kinds = {(f["segment"], f["kind"]) for f in report["chains"][0]["findings"]}  # type: ignore[index]
    assert code == 1 and ("pruned.jsonl", "unknown_key") in kinds

    # Unsealed, as the list used to be written: it excuses nothing either.
    listed.write_text(json.dumps({"name": "x", "last_hash": "0" * 64}) + "\n")
    code, report = verify(tmp_path / "store", capsys)
    assert code == 1 and report["gap"] == 1 and report["tampering"] == 1


def test_a_store_left_by_a_crash_names_its_unreplayed_log_until_the_collector_replays_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from packgate_operator.collector import store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 3600.0)
    writer = AuditWriter(tmp_path / "sidecar", KEY, fsync=False)
    writer.start()
    for i in range(4):
        writer.submit(access_record(i))
    writer.close()
    lines = [ln for p in list_segments(writer.directory) for ln in p.read_bytes().splitlines()]
    store = Store(tmp_path / "store", fsync=True)
    store.open()
    try:
        asyncio.run(store.ingest(Batch(PodKey("team-a", "chat-0", "uid-0"), lines, None)))
        shutil.copytree(tmp_path / "store", tmp_path / "crashed")
    finally:
        store.close()
    segment = list_segments(tmp_path / "crashed" / "pods" / "team-a" / "chat-0_uid-0")[-1]
    with segment.open("r+b") as f:  # the power cut took the unsynced end of the chain file
        f.truncate(segment.stat().st_size - 10)
    code, report = verify(tmp_path / "crashed", capsys)
    assert code != 0 and report["torn_tail"] == 1 and len(report["unreplayed"]) == 1  # type: ignore[arg-type]
    reopened = Store(tmp_path / "crashed", fsync=True)
    reopened.open()
    reopened.close()
    code, report = verify(tmp_path / "crashed", capsys)
    assert code == 0 and report["ok"] and report["unreplayed"] == []
