"""Honest measurement of the injection detector: leave-one-source-out and grouped k-fold.

Why this exists: a score on rows the model (or its threshold) saw, or on near-copies of them, says
little about prompts it will meet in production. Two protocols, both repeating the exact training
and calibration procedure of the shipped model (`injection_train.fit`) on each fold:

- leave-one-source-out (the headline): for each source, train and calibrate on all the others
  and score that source. Rows of other sources that are near-duplicates of a held-out row
  (same MinHash group) are dropped from that training too, so a DAN prompt copied into two
  collections is not "unseen". This is the closest the shared data gets to a new distribution:
  deepset's short injections scored by a model that never saw deepset, NotInject scored by a
  model calibrated without NotInject.
- grouped k-fold (in-distribution): every source in training, folds dealt by near-duplicate
  group, so no text is scored by a model that trained on its near-copy.

The hand-written hard negatives are always in training and never scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import injection_train as train
from .injection_data import Row, language

__all__ = ["Rates", "grouped_cv", "leave_one_source_out", "rates_by"]

IntArray = train.IntArray
FloatArray = train.FloatArray


@dataclass
class Rates:
    """Recall and false-positive rate of one slice of rows at one threshold."""

    name: str
    rows: int
    positives: int
    recall: float | None  # None without injections
    fpr: float | None  # None without benign rows


def rates(name: str, scores: FloatArray, labels: FloatArray, threshold: float) -> Rates:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return Rates(
        name,
        len(scores),
        len(pos),
        float(np.mean(pos >= threshold)) if len(pos) else None,
        float(np.mean(neg >= threshold)) if len(neg) else None,
    )


def rates_by(
    key: Callable[[Row], str], rows: Sequence[Row], scores: FloatArray, threshold: float
) -> list[Rates]:
    """Rates per value of `key` (source, language), in first-seen order."""
    labels = np.array([r.label for r in rows], dtype=np.float64)
    keys = [key(r) for r in rows]
    out = []
    for value in dict.fromkeys(keys):
        mask = np.array([k == value for k in keys])
        out.append(rates(value, scores[mask], labels[mask], threshold))
    return out


def by_language(row: Row) -> str:
    return language(row.text)


def leave_one_source_out(
    corpus: train.Corpus,
    groups: IntArray,
    sources: Sequence[str],
    seed: int = train.SEED,
    log: Callable[[str], None] = lambda _: None,
) -> FloatArray:
    """A score per corpus row from the model that never saw its source (NaN: never scored)."""
    out = np.full(len(corpus.rows), np.nan)
    source_of = np.array([r.source for r in corpus.rows])
    for source in sources:
        held = np.flatnonzero(source_of == source)
        if not len(held):
            continue
        touched = np.isin(groups, groups[held])
        docs = np.flatnonzero((source_of != source) & ~touched)
        log(f"leave out {source}: train on {len(docs)} rows, score {len(held)}")
        model = train.fit(corpus, docs, groups, seed=seed)
        out[held] = train.scores(corpus, model, held)
    return out


def grouped_cv(
    corpus: train.Corpus,
    groups: IntArray,
    k: int,
    seed: int = train.SEED,
    log: Callable[[str], None] = lambda _: None,
) -> FloatArray:
    """A score per corpus row from the fold model that never saw its near-duplicate group."""
    scored = np.array([r.source != "hand-written" for r in corpus.rows])
    folds = train.grouped_folds(corpus.rows, groups, k, seed)
    out = np.full(len(corpus.rows), np.nan)
    for fold in range(k):
        test = np.flatnonzero((folds == fold) & scored)
        docs = np.flatnonzero((folds != fold) | ~scored)
        log(f"grouped fold {fold + 1}/{k}: train on {len(docs)} rows, score {len(test)}")
        model = train.fit(corpus, docs, groups, seed=seed + fold)
        out[test] = train.scores(corpus, model, test)
    return out
