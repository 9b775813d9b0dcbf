"""PII detection quality on held-out labelled data, and the honesty of the split behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packgate_quality import pii_cli
from packgate_quality.pii_eval import (
    HELD_OUT,
    TUNING,
    Row,
    evaluate,
    load_rows,
    sample_text,
    split_rows,
    throughput,
)
from packgate_sidecar import cli
from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, Finding, PiiDetector

BAR = 0.95


@pytest.fixture(scope="module")
def dataset() -> Path:
    path = pii_cli.default_dataset()
    if path is None or not path.is_file():
        pytest.skip("shared/datasets/pii/presidio-synth-v2.json not found (set PACKGATE_DATASETS)")
    return path


@pytest.fixture(scope="module")
def halves(dataset: Path) -> dict[str, list[Row]]:
    return split_rows(load_rows(dataset))


@pytest.mark.parametrize(
    "regions",
    # The default, and a broad list including permissive numbering plans (DE accepts 5-15 digits,
    # which once turned street numbers into phone numbers).
    [("US",), ("US", "GB", "DE", "FR", "IN", "BR", "AU", "IT", "NL", "ES")],
    ids=["US", "ten-regions"],
)
def test_held_out_meets_the_bar_for_every_entity(
    halves: dict[str, list[Row]], regions: tuple[str, ...]
) -> None:
    detector = PiiDetector(BUILTIN_ENTITIES, phone_regions=regions)
    report = evaluate(detector, halves[HELD_OUT], HELD_OUT)
    for entity in BUILTIN_ENTITIES:
        score = report.scores[entity]
        assert score.support > 0, f"{entity}: no held-out examples, the bar would be vacuous"
        assert score.precision >= BAR, f"{entity}: precision {score.precision:.3f}"
        assert score.recall >= BAR, f"{entity}: recall {score.recall:.3f}"


def test_split_keeps_templates_apart_and_covers_every_entity(
    dataset: Path, halves: dict[str, list[Row]]
) -> None:
    held = {r.template_id for r in halves[HELD_OUT]}
    tune = {r.template_id for r in halves[TUNING]}
    assert held and tune and not held & tune
    for half in (HELD_OUT, TUNING):
        entities = {s.entity for r in halves[half] for s in r.spans}
        assert entities == set(BUILTIN_ENTITIES), half
    again = split_rows(load_rows(dataset))  # deterministic
    assert [r.template_id for r in again[HELD_OUT]] == [r.template_id for r in halves[HELD_OUT]]


def test_a_weaker_detector_fails_the_bar(halves: dict[str, list[Row]]) -> None:
    # Without phone detection PHONE recall is zero: the scoring really measures the detector.
    no_phone = PiiDetector([e for e in BUILTIN_ENTITIES if e != "PHONE"])
    report = evaluate(no_phone, halves[HELD_OUT], HELD_OUT, entities=BUILTIN_ENTITIES)
    assert report.scores["PHONE"].recall == 0.0
    # A detector that flags every number as a card is punished on precision.
    noisy = PiiDetector(["CREDIT_CARD"], custom_patterns=[("CREDIT_CARD", r"\d+")])
    report = evaluate(noisy, halves[HELD_OUT], HELD_OUT, entities=["CREDIT_CARD"])
    assert report.scores["CREDIT_CARD"].precision < BAR


def test_overlap_matching_rule() -> None:
    gold = Finding("PHONE", 10, 20)
    row = Row("x" * 40, (gold,), 0)

    class Fixed(PiiDetector):
        __slots__ = ("spans",)

        def __init__(self, spans: list[Finding]) -> None:
            super().__init__([])
            self.spans = spans

        def find(self, text: str) -> list[Finding]:
            return self.spans

    def recall(pred: Finding) -> float:
        return (
            evaluate(Fixed([pred]), [row], "t", entities=["PHONE", "EMAIL"]).scores["PHONE"].recall
        )

    assert recall(Finding("PHONE", 10, 20)) == 1.0
    assert recall(Finding("PHONE", 12, 20)) == 1.0  # 8 of 10 characters
    assert recall(Finding("PHONE", 15, 25)) == 1.0  # half of each
    assert recall(Finding("PHONE", 16, 20)) == 0.0  # too little of the gold span
    assert recall(Finding("PHONE", 10, 40)) == 0.0  # swallows far more than the phone
    assert recall(Finding("EMAIL", 10, 20)) == 0.0  # wrong entity


def test_cli_json_reports_held_out_and_passes(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["quality", "pii", "--dataset", str(dataset), "--json", "--no-throughput"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["passed"] and doc["failures"] == []
    assert set(doc["halves"]) == {HELD_OUT}
    assert set(doc["halves"][HELD_OUT]["entities"]) == set(BUILTIN_ENTITIES)


def test_cli_exit_status_follows_the_thresholds(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["quality", "pii", "--dataset", str(dataset), "--no-throughput",
                   "--min-recall", "1.01"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out and "HELD-OUT" in out
    assert cli.main(["quality", "pii", "--dataset", "/nonexistent.json"]) == 2


def test_throughput_is_measured(halves: dict[str, list[Row]]) -> None:
    text = sample_text(halves[HELD_OUT], 32 * 1024)
    assert len(text) == 32 * 1024
    # The target is >= 5 MB/s; this floor only catches a pathological slowdown on a busy box.
    assert throughput(PiiDetector(BUILTIN_ENTITIES), text, min_seconds=0.2) > 1.0
