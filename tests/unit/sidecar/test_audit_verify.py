"""`packgate audit verify` on real log directories: what an operator sees for each tampering."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit.chain import SegmentData, canonical, verify_segments
from packgate_sidecar.audit.record import AuditRecord, utc_time
from packgate_sidecar.audit.writer import AuditWriter, list_segments
from packgate_sidecar.cli import main

KEY = bytes.fromhex("a7" * 32)
T0 = 1735689600.0


def write_log(directory: Path, runs: int = 3, records: int = 5) -> list[Path]:
    """`runs` writer starts (one segment each) of `records` records: 1 + records lines each."""
    for run in range(runs):
        w = AuditWriter(directory, KEY, clock=lambda: T0)
        w.start()
        for i in range(records):
            w.submit(
                AuditRecord(
                    time=utc_time(T0),
                    request_id=f"run{run}-req{i}",
                    endpoint="embeddings",
                    status=200,
                    latency_ms=3.0,
                    model="text-embedding-3-small",
                )
            )
        w.close()
    return list_segments(directory)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.key"
    path.write_text(KEY.hex() + "\n")
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def edit_field(segs: list[Path]) -> tuple[Path, int, str]:
    segs[1].write_bytes(segs[1].read_bytes().replace(b'"status":200', b'"status":403', 1))
    return segs[1], 2, "edited"


def delete_middle_record(segs: list[Path]) -> tuple[Path, int, str]:
    kept = lines(segs[1])
    del kept[2]
    segs[1].write_bytes(b"".join(kept))
    return segs[1], 3, "deleted"


def delete_whole_segment(segs: list[Path]) -> tuple[Path, int, str]:
    segs[1].unlink()
    return segs[2], 1, "deleted"


def delete_first_segment(segs: list[Path]) -> tuple[Path, int, str]:
    segs[0].unlink()
    return segs[1], 1, "deleted"


def reorder_two_records(segs: list[Path]) -> tuple[Path, int, str]:
    swapped = lines(segs[1])
    swapped[2], swapped[3] = swapped[3], swapped[2]
    segs[1].write_bytes(b"".join(swapped))
    return segs[1], 3, "reordered"


def insert_forged_record(segs: list[Path]) -> tuple[Path, int, str]:
    """Someone with write access but no key adds a record and recomputes its hash."""
    current = lines(segs[1])
    obj = json.loads(current[3])
    obj["body"]["request_id"] = "forged"
    obj["prev"] = json.loads(current[2])["hash"]
    content = {k: v for k, v in obj.items() if k not in ("hash", "mac")}
    obj["hash"] = hashlib.sha256(canonical(content)).hexdigest()
    obj["mac"] = hashlib.sha256(b"no key").hexdigest()
    current.insert(3, canonical(obj) + b"\n")
    segs[1].write_bytes(b"".join(current))
    return segs[1], 4, "inserted"


def truncate_tail(segs: list[Path]) -> tuple[Path, int, str]:
    segs[2].write_bytes(segs[2].read_bytes()[:-100])
    return segs[2], 6, "truncated_tail"


TAMPERINGS: list[Callable[[list[Path]], tuple[Path, int, str]]] = [
    edit_field,
    delete_middle_record,
    delete_whole_segment,
    delete_first_segment,
    reorder_two_records,
    insert_forged_record,
    truncate_tail,
]


def test_intact_log_exits_0_and_says_what_was_checked(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path / "log")
    code, out, err = cli(capsys, str(tmp_path / "log"), "--key-file", str(key_file))
    assert code == 0 and err == ""
    assert out.startswith("OK: 18 records in 3 segment(s), hash chain and MACs intact")


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda t: t.__name__)
def test_each_tampering_is_reported_with_segment_line_and_kind(
    tamper: Callable[[list[Path]], tuple[Path, int, str]],
    tmp_path: Path,
    key_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    segs = write_log(tmp_path / "log")
    segment, line, kind = tamper(segs)
    code, out, _ = cli(capsys, str(tmp_path / "log"), "--key-file", str(key_file))
    # A cut-off last line is what a crash leaves: its own outcome (TORN, exit 3), not TAMPERED.
    verdict, expected = ("TORN", 3) if kind == "truncated_tail" else ("TAMPERED", 1)
    problems = [row for row in out.splitlines() if not row.startswith(verdict)]
    assert code == expected
    assert problems[0].startswith(f"{segment.name}:{line}: {kind}: "), out
    assert len(problems) == 1, out
    assert out.splitlines()[-1].startswith("TORN: " if verdict == "TORN" else "TAMPERED: 1 problem")


def test_a_torn_tail_in_an_older_segment_is_tampering(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash can only tear the newest segment (the next start writes a `recovered` record),
    so a cut-off line anywhere else is reported as tampering."""
    segs = write_log(tmp_path / "log")
    segs[1].write_bytes(segs[1].read_bytes()[:-100])
    code, out, _ = cli(capsys, str(tmp_path / "log"), "--key-file", str(key_file))
    assert code == 1
    assert "truncated_tail" in out and out.splitlines()[-1].startswith("TAMPERED")


def test_deleted_segment_is_named(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segs = write_log(tmp_path / "log")
    delete_whole_segment(segs)
    _, out, _ = cli(capsys, str(tmp_path / "log"), "--key-file", str(key_file))
    assert f"segment {segs[1].name} was deleted and not pruned" in out
    assert "6 record(s) missing" in out


def test_a_prune_record_forged_without_the_key_excuses_nothing(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segs = write_log(tmp_path / "log")
    first = lines(segs[0])
    last = json.loads(lines(segs[2])[-1])
    forged = {
        "v": 1,
        "seq": last["seq"] + 1,
        "ts": last["ts"],
        "type": "prune",
        "kid": last["kid"],
        "prev": last["hash"],
        "body": {
            "retention_days": 1,
            "segments": [
                {
                    "name": segs[0].name,
                    "first_seq": 0,
                    "last_seq": 5,
                    "last_hash": json.loads(first[-1])["hash"],
                }
            ],
        },
    }
    forged["hash"] = hashlib.sha256(canonical(forged)).hexdigest()
    forged["mac"] = "0" * 64
    with segs[2].open("ab") as f:
        f.write(canonical(forged) + b"\n")
    segs[0].unlink()
    code, out, _ = cli(capsys, str(tmp_path / "log"), "--key-file", str(key_file))
    assert code == 1
    assert f"{segs[1].name}:1: deleted: " in out and f"{segs[2].name}:7: bad_mac: " in out


def test_json_report(tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    segs = write_log(tmp_path / "log")
    reorder_two_records(segs)
    code, out, _ = cli(capsys, str(tmp_path / "log"), "--key-file", str(key_file), "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["mac_checked"] is True
    assert [(f["kind"], f["segment"], f["line"]) for f in report["findings"]] == [
        ("reordered", segs[1].name, 3)
    ]
    assert report["head"]["seq"] == 17


def test_without_a_key_the_chain_is_checked_and_the_user_is_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PACKGATE_AUDIT_KEY_FILE", raising=False)
    monkeypatch.delenv("PACKGATE_AUDIT_KEY", raising=False)
    segs = write_log(tmp_path / "log")
    code, out, err = cli(capsys, str(tmp_path / "log"))
    assert code == 0 and "hash chain intact" in out and "MACs not checked" in err
    delete_middle_record(segs)
    assert cli(capsys, str(tmp_path / "log"))[0] == 1


def test_key_from_the_sidecar_environment_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PACKGATE_AUDIT_KEY_FILE", raising=False)
    monkeypatch.setenv("PACKGATE_AUDIT_KEY", KEY.hex())
    write_log(tmp_path / "log")
    code, out, _ = cli(capsys, str(tmp_path / "log"))
    assert code == 0 and "hash chain and MACs intact" in out


def test_wrong_key_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", runs=1)
    other = tmp_path / "other.key"
    other.write_text("11" * 32)
    code, out, _ = cli(capsys, str(tmp_path / "log"), "--key-file", str(other))
    assert code == 1 and ": unknown_key: " in out


def test_a_single_segment_file_verifies_on_its_own(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segs = write_log(tmp_path / "log")
    code, out, err = cli(capsys, str(segs[1]), "--key-file", str(key_file))
    assert code == 0 and out.startswith("OK: 6 records in 1 segment(s)")
    assert "chain start not checked" in err


@pytest.mark.parametrize("problem", ["missing", "empty-dir", "bad-key"])
def test_usage_errors_exit_2(
    problem: str, tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    write_log(tmp_path / "log", runs=1)
    args = {
        "missing": [str(tmp_path / "nope"), "--key-file", str(key_file)],
        "empty-dir": [str(tmp_path / "empty"), "--key-file", str(key_file)],
        "bad-key": [str(tmp_path / "log"), "--key-file", str(tmp_path / "no.key")],
    }[problem]
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == "" and err.startswith("packgate audit verify: ")


def test_installed_command_exits_1_on_tampering(tmp_path: Path, key_file: Path) -> None:
    segs = write_log(tmp_path / "log", runs=2)
    edit_field(segs)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "packgate_sidecar.cli",
            "audit",
            "verify",
            str(tmp_path / "log"),
            "--key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and f"{segs[1].name}:2: edited:" in done.stdout


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> list[SegmentData]:
    segs = write_log(tmp_path_factory.mktemp("sealed"), runs=2, records=3)
    return [SegmentData(p.name, p.read_bytes()) for p in segs]


def test_the_sample_for_the_byte_flip_property_is_intact(sealed: list[SegmentData]) -> None:
    assert verify_segments(sealed, [KEY]).ok


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_detected(sealed: list[SegmentData], data: st.DataObject) -> None:
    which = data.draw(st.integers(0, len(sealed) - 1), label="segment")
    original = sealed[which].data
    op = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="op")
    last = len(original) if op == "insert" else len(original) - 1
    at = data.draw(st.integers(0, last), label="offset")
    if op == "replace":
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]), label="byte")
        changed = original[:at] + bytes([byte]) + original[at + 1 :]
    elif op == "delete":
        changed = original[:at] + original[at + 1 :]
    else:
        changed = original[:at] + bytes([data.draw(st.integers(0, 255))]) + original[at:]
    segments = list(sealed)
    segments[which] = SegmentData(sealed[which].name, changed)
    assert not verify_segments(segments, [KEY]).ok
