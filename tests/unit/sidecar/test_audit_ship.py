"""The shipper's reading of its own spool: where record N is, what is unacknowledged, the env."""

from __future__ import annotations

from pathlib import Path

import pytest
from packgate_sidecar.audit.chain import parse_line
from packgate_sidecar.audit.ship import ShipConfigError, Shipper, ShipSettings
from packgate_sidecar.audit.writer import AuditWriter, list_segments
from packgate_sidecar.pod_identity import Channel

from tests.support.audit_records import access_record

KEY = bytes(range(32))


def log_with_segments(directory: Path, records: int) -> list[bytes]:
    writer = AuditWriter(directory, KEY, fsync=False, max_segment_bytes=2000)
    writer.start()
    for i in range(records):
        writer.submit(access_record(i))
        writer.flush()
    writer.close()
    return [ln for p in list_segments(directory) for ln in p.read_bytes().splitlines()]


def shipper(directory: Path, spool: int = 10_000) -> Shipper:
    settings = ShipSettings(
        Channel("https://collector.invalid", "ns", "pod", directory / "token", ca_pem="unused"),
        spool_max_bytes=spool,
        batch_bytes=1500,
    )
    return Shipper(settings, directory)


def test_it_finds_any_record_and_reads_on_across_segments(tmp_path: Path) -> None:
    lines = log_with_segments(tmp_path, 30)
    assert len(list_segments(tmp_path)) > 3
    s = shipper(tmp_path)
    for seq in (0, 7, 19, len(lines) - 1):
        s.cursor = s._locate(seq)
        data, count, _ = s._read_batch()
        first = parse_line(data.splitlines()[0])
        assert not isinstance(first, str) and first.seq == seq
        assert data.endswith(b"\n") and count == data.count(b"\n")
    shipped: list[bytes] = []
    s.cursor = s._locate(0)
    while True:
        data, _, _ = s._read_batch()
        if not data:
            break
        shipped += data.splitlines()
        s.cursor.offset += len(data)
    assert shipped == lines


def test_the_spool_counts_unacknowledged_bytes_and_fills(tmp_path: Path) -> None:
    log_with_segments(tmp_path, 30)
    total = sum(p.stat().st_size for p in list_segments(tmp_path))
    s = shipper(tmp_path, spool=total // 2)
    s.cursor = s._locate(0)
    s._spool()
    assert s.unacked_bytes == total and s.spool_full
    s.cursor = s._locate(25)
    s._spool()
    assert 0 < s.unacked_bytes < total // 2 and not s.spool_full
    # The position is remembered on disk, for a restart while the collector is unreachable.
    s._save_cursor()
    assert shipper(tmp_path)._load_cursor() == s.cursor


def test_a_half_set_environment_is_refused_by_name() -> None:
    assert ShipSettings.from_env({}) is None
    with pytest.raises(ShipConfigError, match="must be https"):
        ShipSettings.from_env({"PACKGATE_AUDIT_COLLECTOR_URL": "http://c:8445"})
    with pytest.raises(ShipConfigError, match="PACKGATE_TOKEN_FILE"):
        ShipSettings.from_env(
            {
                "PACKGATE_AUDIT_COLLECTOR_URL": "https://c:8445",
                "POD_NAME": "p",
                "POD_NAMESPACE": "n",
                "PACKGATE_OPERATOR_CA": "pem",
            }
        )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PACKGATE_AUDIT_SPOOL_MAX_BYTES", "64MiB"),
        ("PACKGATE_AUDIT_DRAIN_SECONDS", "-1"),
        ("PACKGATE_AUDIT_SHIP_LINGER_SECONDS", "nan"),
    ],
)
def test_a_bad_number_is_refused_by_name(name: str, value: str) -> None:
    environ = {
        "PACKGATE_AUDIT_COLLECTOR_URL": "https://c:8445",
        "POD_NAME": "p",
        "POD_NAMESPACE": "n",
        "PACKGATE_OPERATOR_CA": "pem",
        "PACKGATE_TOKEN_FILE": "/var/run/token",
        name: value,
    }
    with pytest.raises(ShipConfigError, match=f"{name} must be a number >= 0, got '{value}'"):
        ShipSettings.from_env(environ)
