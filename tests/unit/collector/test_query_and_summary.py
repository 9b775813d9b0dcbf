"""Filters shared by the CLI, the page and the API; how a record's decisions are summarised."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from packgate_operator.collector.query import FilterError, parse
from packgate_operator.collector.summary import acting_policies, incidents, outcome

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_filters_are_parsed_and_normalised() -> None:
    f = parse(
        {
            "namespace": "team-a",
            "decision": "blocked",
            "status": "4XX",
            "since": "2h",
            "until": "2025-03-01T11:30:00+00:00",
            "limit": "5",
        },
        NOW,
    )
    assert (f.namespace, f.decision, f.status, f.limit) == ("team-a", "blocked", "4xx", 5)
    assert f.since == "2025-03-01T10:00:00.000Z"
    assert f.until == "2025-03-01T11:30:00.000Z"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"decison": "blocked"}, "unknown filter 'decison'"),
        ({"decision": "denied"}, "decision: 'denied' is not one of"),
        ({"namespace": "Team A"}, "namespace: 'Team A' is not a Kubernetes name"),
        ({"status": "forbidden"}, "status:"),
        ({"since": "yesterday"}, "since: 'yesterday' is neither"),
        ({"since": "2025-03-01T10:00:00"}, "needs a time zone"),
        ({"limit": "0"}, "limit: must be between 1 and 1000"),
    ],
)
def test_bad_filters_name_the_filter(params: dict[str, str], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse(params, NOW)


BLOCKED = {
    "decisions": [
        {
            "policy": "prompt-injection",
            "decision": "block",
            "reason": "request:injection/score=0.97",
        },
        {"policy": "pii-detector", "decision": "allow", "reason": "request"},
    ]
}
FAILED_OPEN = {
    "decisions": [
        {"policy": "content-filter", "decision": "allow", "reason": "request:timeout,fail_open"}
    ]
}


def test_incidents_drop_per_request_numbers_so_series_aggregate() -> None:
    (found,) = incidents(BLOCKED)
    assert (found.kind, found.policy, found.code) == (
        "block",
        "prompt-injection",
        "request:injection",
    )
    (opened,) = incidents(FAILED_OPEN)
    assert (opened.kind, opened.policy) == ("fail_open", "content-filter")
    assert incidents({"decisions": [{"policy": "x", "decision": "allow", "reason": "r"}]}) == []


def test_outcome_and_acting_policies() -> None:
    assert outcome(BLOCKED) == "blocked"
    assert outcome(FAILED_OPEN) == "failed_open"
    assert (
        outcome({"decisions": [{"policy": "pii-detector", "decision": "rewrite"}]}) == "rewritten"
    )
    assert outcome({"decisions": []}) == "allowed"
    assert acting_policies(BLOCKED) == ["prompt-injection"]
    assert acting_policies(FAILED_OPEN) == ["content-filter"]
