"""``packgate audit verify`` on a collector store and on an exported copy of it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from packgate_operator.collector.store import Batch, PodKey, Store
from packgate_sidecar.audit.writer import AuditWriter, list_segments
from packgate_sidecar.cli import main

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
                writer.submit(
                    {
                        "time": "2025-03-01T12:00:00.000Z",
                        "request_id": f"r{i}",
                        "endpoint": "chat.completions",
                        "status": 200,
                        "latency_ms": 1.0,
                    }
                )
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
