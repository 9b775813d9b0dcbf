"""Replica ranking, who reconciles, and merging sidecar reports across replicas (pure parts)."""

from __future__ import annotations

import datetime as dt
import random

from packgate_operator.pods import Report
from packgate_operator.replicas import decode_reports, encode_reports, merge, priority, view

NOW = dt.datetime(2026, 12, 7, 8, 0, 0, tzinfo=dt.UTC)


def peer(prio: int, seconds_ago: float, lifetime: int = 20) -> dict[str, object]:
    seen = (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": prio, "lastseen": seen, "lifetime": lifetime}


def test_an_older_replica_outranks_a_newer_one_and_same_second_starts_differ() -> None:
    assert priority(1_000, random.Random(1)) > priority(1_001, random.Random(1))
    same = {priority(1_000, random.Random(seed)) for seed in range(50)}
    assert len(same) > 40  # random low digits separate pods started in the same second


def test_the_highest_live_priority_reconciles_and_the_other_stands_by() -> None:
    status = {"a": peer(5, 1), "b": peer(3, 1)}
    assert view(status, "a", NOW).active
    assert not view(status, "b", NOW).active
    assert view(status, "b", NOW).leader_exists


def test_a_dead_peer_hands_over_to_the_next_one() -> None:
    status = {"a": peer(5, 30), "b": peer(3, 1)}  # a's entry expired 10 s ago
    assert view(status, "b", NOW).active


def test_equal_priorities_mean_nobody_reconciles_which_readiness_reports() -> None:
    status = {"a": peer(5, 1), "b": peer(5, 1)}
    assert not view(status, "a", NOW).active
    assert not view(status, "a", NOW).leader_exists
    assert not view({}, "a", NOW).leader_exists


def test_reports_round_trip_and_garbage_is_ignored() -> None:
    reports = {"uid-1": (("ns", "pack"), "sha256:aa"), "uid-2": (("ns", "other"), "sha256:bb")}
    assert decode_reports(encode_reports(reports)) == reports
    assert decode_reports("not json") == {}
    assert decode_reports('{"u": ["only", "two"]}') == {}


def test_merge_counts_remote_sidecars_and_prefers_own_reports() -> None:
    own = {"uid-1": Report(hash="sha256:new", seen=10.0, polling=True)}
    remote = {
        "uid-1": (("ns", "p"), "sha256:old"),
        "uid-2": (("ns", "p"), "sha256:new"),
    }
    merged = merge(own, remote, now=50.0)
    assert merged["uid-1"].hash == "sha256:new"
    assert merged["uid-2"] == Report(hash="sha256:new", seen=50.0, polling=True)
