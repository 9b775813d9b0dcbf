"""Measured quality of the injection detector against the issue's bars, on unseen data.

The labelled files are measured by stratified 5-fold cross-validation with the real training and
calibration code (inner 5-fold here instead of the shipped 10-fold, to keep the test near 20 s
on two cores); NotInject is held out from training and calibration and scored with the shipped
model. The last test retrains the shipped model and checks it is byte-identical to the file in
the package, so feature or rule changes cannot ship with stale weights.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("numpy", reason="numpy is needed to train (dev/test dependency)")

from packgate_quality import injection_train as train
from packgate_quality.injection_cli import (
    MAX_FPR,
    MIN_RECALL,
    FileResult,
    evaluate,
)
from packgate_sidecar.detect.injection import DEFAULT_MODEL_PATH

pytestmark = pytest.mark.skipif(
    not (train.DEFAULT_DATASETS / train.HELD_OUT_FILE).exists(),
    reason=f"datasets not found at {train.DEFAULT_DATASETS}",
)


@pytest.fixture(scope="module")
def results() -> dict[str, FileResult]:
    found = evaluate(train.DEFAULT_DATASETS, threshold=0.8, folds=5, inner_folds=5, seed=train.SEED)
    return {r.file: r for r in found}


@pytest.mark.parametrize("name", train.LABELLED_FILES)
def test_labelled_files_meet_recall_and_false_positive_bars(
    results: dict[str, FileResult], name: str
) -> None:
    r = results[name]
    assert r.rows > 500 and r.positives > 200
    assert r.recall is not None and r.recall >= MIN_RECALL, f"{name}: recall {r.recall}"
    assert r.fpr <= MAX_FPR, f"{name}: FPR {r.fpr:.3f}"


def test_notinject_false_positive_rate(results: dict[str, FileResult]) -> None:
    r = results[train.HELD_OUT_FILE]
    assert r.rows == 113
    assert r.fpr <= MAX_FPR, f"NotInject FPR {r.fpr:.3f}"


def test_the_shipped_model_is_what_training_produces() -> None:
    rebuilt = train.train_shipped(train.DEFAULT_DATASETS)
    shipped = json.loads(DEFAULT_MODEL_PATH.read_text(encoding="utf-8"))
    assert rebuilt == shipped, "retrain: python -m packgate_quality.injection_train"
