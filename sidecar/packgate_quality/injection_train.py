"""Training and cross-validation of the shipped prompt-injection model.

Why this exists: the sidecar's detector (`packgate_sidecar.detect.injection`) is a logistic
regression whose weights ship as JSON; this module regenerates that file deterministically and
measures it honestly. numpy is used here only (a dev/test dependency); the runtime scorer is pure
Python.

Protocol (what "honestly" means here):
- Training data: the two labelled files (deepset, jailbreak-classification) plus a small file of
  hand-written benign prompts (`injection_hard_negatives.txt`). The NotInject file is never read
  here: it stays held out for the quality command, out of training and calibration alike.
- `fit` = vocabulary (document frequency >= 2), weighted L2 logistic regression (L-BFGS), then
  calibration: an inner stratified k-fold over the *training rows only* yields out-of-fold
  logits; a Platt slope is fitted on them, and the logit at which every labelled file's
  out-of-fold false-positive rate falls to `TARGET_FPR` is mapped to a score of exactly 0.8 (the
  seed config's threshold). Finally the smallest weights are pruned to keep the file small.
- `cross_validate` wraps `fit` in an outer stratified k-fold and scores each held-out fold with the
  real runtime scorer, so every labelled row is scored once by a model that neither trained nor
  calibrated on it.

    python -m packgate_quality.injection_train --out PATH   # regenerate the model
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from packgate_sidecar.detect.injection import (
    CASED_RULES,
    DEFAULT_MODEL_PATH,
    MODEL_FORMAT,
    RULES,
    Features,
    InjectionScorer,
    featurize,
)
from packgate_sidecar.detect.normalize import variants

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SEED = 20240601
CHAR_SIZES = (4,)  # 3- and 5-grams added cost and no cross-validated gain
L2 = 3e-4  # regularisation strength on the mean weighted log-loss
MIN_DF = 2  # an n-gram must occur in two training texts to get a weight
MAX_FEATURES = 20_000  # pruning budget (largest |weight| kept); bounds the shipped file size
TARGET_FPR = 0.02  # calibration target: two thirds of the 0.03 bar, as margin for unseen data
THRESHOLD = 0.8  # the score the calibrated operating point is mapped to
INNER_FOLDS = 10  # many folds, so the inner models are close in size to the final one

DEFAULT_DATASETS = Path(__file__).resolve().parents[2].parent / "shared/datasets/prompt-injection"
LABELLED_FILES = ("deepset-train.jsonl", "jailbreak-classification-train.csv")
HELD_OUT_FILE = "notinject-benign-one.json"
# Benign prompts written for this project around the trigger words the labelled data teaches
# ("ignore", "forget", "bypass", "jailbreak", "act as", "vergiss", ...): they keep the model from
# flagging a word instead of an instruction. Always in training, never scored.
HARD_NEGATIVES = Path(__file__).with_name("injection_hard_negatives.txt")

# Total loss weight of each (file, label) cell, shared equally by its rows. deepset is the small
# file of short prompts and would otherwise be drowned by the long jailbreak prompts; its
# injections and the jailbreak file's benign prompts (role-play, "answer the question about this
# article") look alike, and one threshold serves both files, so those two cells weigh double.
CELL_WEIGHT: dict[tuple[str, int], float] = {
    (LABELLED_FILES[0], 0): 2.0,
    (LABELLED_FILES[0], 1): 4.0,
    (LABELLED_FILES[1], 0): 2.0,
    (LABELLED_FILES[1], 1): 1.0,
    (HARD_NEGATIVES.name, 0): 0.5,
}


@dataclass(frozen=True)
class Row:
    text: str
    label: int  # 1 = injection / jailbreak
    source: str  # file name


def load_labelled(directory: Path) -> list[Row]:
    """The two labelled files, in file order (deepset first)."""
    rows: list[Row] = []
    with (directory / LABELLED_FILES[0]).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                rows.append(Row(str(item["text"]), int(item["label"]), LABELLED_FILES[0]))
    # A real CSV parser: the prompts contain quoted multi-line fields.
    with (directory / LABELLED_FILES[1]).open(encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            label = {"jailbreak": 1, "benign": 0}[rec["type"].strip()]
            rows.append(Row(rec["prompt"], label, LABELLED_FILES[1]))
    return rows


def load_hard_negatives() -> list[Row]:
    lines = HARD_NEGATIVES.read_text(encoding="utf-8").splitlines()
    return [Row(line, 0, HARD_NEGATIVES.name) for line in lines if line.strip()]


def load_held_out(directory: Path) -> list[Row]:
    """NotInject: benign prompts full of attack words; used only for measurement."""
    items = json.loads((directory / HELD_OUT_FILE).read_text(encoding="utf-8"))
    return [Row(str(item["prompt"]), 0, HELD_OUT_FILE) for item in items]


def stratified_folds(rows: Sequence[Row], k: int, seed: int) -> IntArray:
    """Fold id per row, balanced within each (file, label) stratum; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(rows), dtype=np.int64)
    strata: dict[tuple[str, int], list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault((row.source, row.label), []).append(i)
    offset = 0
    for key in sorted(strata):
        members = np.array(strata[key], dtype=np.int64)
        rng.shuffle(members)
        folds[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # rotate so small strata do not all start in fold 0
    return folds


class Corpus:
    """Every row's variants featurised once, as one sparse matrix over a global vocabulary.

    Matrix rows are variants (`doc` maps each to its row, `variant` 0 is the plain text). Values
    follow the runtime scorer: 1/sqrt(group size) for n-gram groups, 1 for rules.
    """

    def __init__(self, rows: Sequence[Row], char_sizes: tuple[int, ...] = CHAR_SIZES) -> None:
        self.rows = list(rows)
        self.char_sizes = char_sizes
        self.names: list[tuple[str, str]] = []  # (group, feature) per column
        index: dict[tuple[str, str], int] = {}
        indptr, cols, vals, doc, variant = [0], [], [], [], []
        for d, row in enumerate(rows):
            for v, text in enumerate(variants(row.text)):
                for group, members, value in _groups(featurize(text, char_sizes)):
                    for name in members:
                        col = index.setdefault((group, name), len(self.names))
                        if col == len(self.names):
                            self.names.append((group, name))
                        cols.append(col)
                        vals.append(value)
                indptr.append(len(cols))
                doc.append(d)
                variant.append(v)
        self.indices = np.array(cols, dtype=np.int64)
        self.data = np.array(vals, dtype=np.float64)
        self.indptr = np.array(indptr, dtype=np.int64)
        self.doc = np.array(doc, dtype=np.int64)
        self.variant = np.array(variant, dtype=np.int64)
        self.labels = np.array([r.label for r in rows], dtype=np.float64)

    def submatrix(self, matrix_rows: IntArray) -> tuple[IntArray, IntArray, FloatArray]:
        """(row id within the subset, column, value) triplets for the given matrix rows."""
        starts, ends = self.indptr[matrix_rows], self.indptr[matrix_rows + 1]
        lengths = ends - starts
        take = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        local = np.repeat(np.arange(len(matrix_rows)), lengths)
        return local, self.indices[take], self.data[take]


def _groups(f: Features) -> list[tuple[str, set[str], float]]:
    out: list[tuple[str, set[str], float]] = [("rules", f.rules, 1.0)]
    for name, members in (("words", f.words), ("chars", f.chars), ("tail", f.tail)):
        if members:
            out.append((name, members, 1.0 / math.sqrt(len(members))))
    return out


@dataclass
class Linear:
    """Weights over a subset of the corpus's columns, plus the calibration mapping."""

    cols: IntArray
    weights: FloatArray
    bias: float
    slope: float = 1.0
    cut: float = 0.0  # raw logit mapped to THRESHOLD


def _sample_weights(rows: Sequence[Row]) -> FloatArray:
    counts: dict[tuple[str, int], int] = {}
    for row in rows:
        counts[(row.source, row.label)] = counts.get((row.source, row.label), 0) + 1
    return np.array([CELL_WEIGHT[(r.source, r.label)] / counts[(r.source, r.label)] for r in rows])


def _train(corpus: Corpus, docs: IntArray, l2: float = L2) -> Linear:
    """Weighted L2 logistic regression on the plain variant of `docs`."""
    matrix_rows = np.flatnonzero(np.isin(corpus.doc, docs) & (corpus.variant == 0))
    local, cols, vals = corpus.submatrix(matrix_rows)
    # Columns within a row are distinct, so a column count is its document frequency.
    keep_cols = np.flatnonzero(np.bincount(cols, minlength=len(corpus.names)) >= MIN_DF)
    remap = np.full(len(corpus.names), -1, dtype=np.int64)
    remap[keep_cols] = np.arange(len(keep_cols))
    mask = remap[cols] >= 0
    local, cols, vals = local[mask], remap[cols[mask]], vals[mask]
    row_docs = corpus.doc[matrix_rows]
    y = corpus.labels[row_docs]
    sw = _sample_weights([corpus.rows[d] for d in row_docs.tolist()])
    sw /= sw.sum()
    n, dim = len(matrix_rows), len(keep_cols)
    sign = 2.0 * y - 1.0

    def loss_grad(theta: FloatArray) -> tuple[float, FloatArray]:
        w, b = theta[:dim], theta[dim]
        z = np.bincount(local, weights=vals * w[cols], minlength=n) + b
        loss = float(np.sum(sw * np.logaddexp(0.0, -sign * z))) + 0.5 * l2 * float(w @ w)
        r = sw * (1.0 / (1.0 + np.exp(-z)) - y)
        grad = np.empty_like(theta)
        grad[:dim] = np.bincount(cols, weights=vals * r[local], minlength=dim) + l2 * w
        grad[dim] = r.sum()
        return loss, grad

    theta = _lbfgs(loss_grad, np.zeros(dim + 1))
    return Linear(keep_cols, theta[:dim], float(theta[dim]))


def _lbfgs(
    fg: Callable[[FloatArray], tuple[float, FloatArray]], x: FloatArray, iters: int = 300
) -> FloatArray:
    """Plain L-BFGS with a backtracking Armijo line search; enough for a convex smooth loss."""
    memory = 10
    f, g = fg(x)
    s_hist: list[FloatArray] = []
    y_hist: list[FloatArray] = []
    for _ in range(iters):
        q = g.copy()
        alphas = []
        for s, yv in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = float(s @ q) / float(yv @ s)
            q -= a * yv
            alphas.append(a)
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        else:
            q /= max(float(np.abs(g).max()), 1e-12)
        for s, yv, a in zip(s_hist, y_hist, reversed(alphas), strict=True):
            q += s * (a - float(yv @ q) / float(yv @ s))
        step, slope = 1.0, -float(g @ q)
        while True:
            x_new = x - step * q
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-8:
                break
            step *= 0.5
        s_vec, y_vec = x_new - x, g_new - g
        if float(s_vec @ y_vec) > 1e-12:
            s_hist, y_hist = [*s_hist, s_vec][-memory:], [*y_hist, y_vec][-memory:]
        converged = abs(f - f_new) <= 1e-9 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if converged or float(np.abs(g).max()) < 1e-7:
            break
    return x


def _doc_logits(corpus: Corpus, model: Linear, docs: IntArray) -> FloatArray:
    """Raw logits, max over each doc's variants (as the runtime scorer does)."""
    full = np.zeros(len(corpus.names))
    full[model.cols] = model.weights
    matrix_rows = np.flatnonzero(np.isin(corpus.doc, docs))
    local, cols, vals = corpus.submatrix(matrix_rows)
    z = np.bincount(local, weights=vals * full[cols], minlength=len(matrix_rows)) + model.bias
    best = np.full(len(corpus.rows), -np.inf)
    np.maximum.at(best, corpus.doc[matrix_rows], z)
    return best[docs]


def _platt_slope(z: FloatArray, y: FloatArray) -> float:
    """Slope of a 1-D logistic fit of labels on logits (Newton's method)."""
    a, c = 1.0, 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(a * z + c)))
        w = np.maximum(p * (1 - p), 1e-9)
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        da, dc = np.linalg.solve(h + 1e-6 * np.eye(2), g)
        a, c = a - float(da), c - float(dc)
        if abs(da) + abs(dc) < 1e-8:
            break
    return max(a, 1e-3)


def _cut_for_fpr(z: FloatArray, rows: Sequence[Row], target: float) -> float:
    """Lowest raw logit at which each labelled file's benign false-positive rate is <= target."""
    cut = -math.inf
    for source in LABELLED_FILES:
        benign = np.array([r.source == source and r.label == 0 for r in rows])
        if not benign.any():
            continue
        scores = np.sort(z[benign])[::-1]
        allowed = math.floor(target * len(scores))
        # Scores at or above the cut are positives: sit just above the first disallowed one.
        cut = max(cut, float(np.nextafter(scores[allowed], np.inf)))
    return cut


def fit(corpus: Corpus, docs: IntArray, seed: int = SEED, inner: int = INNER_FOLDS) -> Linear:
    """Train on `docs`, calibrate on inner out-of-fold logits of the same docs, prune."""
    sub_rows = [corpus.rows[d] for d in docs.tolist()]
    folds = stratified_folds(sub_rows, inner, seed + 1)
    oof = np.zeros(len(docs))
    for k in range(inner):
        part = _train(corpus, docs[folds != k])
        oof[folds == k] = _doc_logits(corpus, part, docs[folds == k])
    model = _train(corpus, docs)
    model.slope = _platt_slope(oof, corpus.labels[docs])
    model.cut = _cut_for_fpr(oof, sub_rows, TARGET_FPR)
    if len(model.weights) > MAX_FEATURES:
        keep = np.sort(np.argsort(-np.abs(model.weights), kind="stable")[:MAX_FEATURES])
        model.cols, model.weights = model.cols[keep], model.weights[keep]
    return model


def export(corpus: Corpus, model: Linear, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document the runtime loads: calibration folded into weights and bias."""
    a = model.slope
    groups: dict[str, dict[str, float]] = {"words": {}, "chars": {}, "tail": {}, "rules": {}}
    for col, w in zip(model.cols.tolist(), model.weights.tolist(), strict=True):
        group, name = corpus.names[col]
        value = float(f"{a * w:.4g}")
        if value:
            groups[group][name] = value
    bias = a * (model.bias - model.cut) + math.log(THRESHOLD / (1 - THRESHOLD))
    return {
        "format": MODEL_FORMAT,
        "char_sizes": list(corpus.char_sizes),
        "bias": round(bias, 6),
        **{group: dict(sorted(weights.items())) for group, weights in groups.items()},
        "meta": {**meta, "calibration_slope": round(a, 6), "threshold": THRESHOLD},
    }


def cross_validate(
    rows: Sequence[Row], k: int = 5, seed: int = SEED, inner: int = INNER_FOLDS
) -> list[float]:
    """Out-of-fold runtime scores for every row (k-fold outer, `inner`-fold calibration).

    The hard negatives join every training fold; only `rows` are scored.
    """
    extra = load_hard_negatives()
    corpus = Corpus([*rows, *extra])
    always = np.arange(len(rows), len(rows) + len(extra))
    folds = stratified_folds(rows, k, seed)
    scores = [0.0] * len(rows)
    for fold in range(k):
        train_docs = np.concatenate([np.flatnonzero(folds != fold), always])
        model = fit(corpus, train_docs, seed=seed + fold, inner=inner)
        scorer = InjectionScorer.from_dict(export(corpus, model, {}))
        for d in np.flatnonzero(folds == fold).tolist():
            scores[d] = scorer.score(rows[d].text)
    return scores


def train_shipped(datasets: Path) -> dict[str, Any]:
    """The shipped model: all labelled rows plus the hard negatives, calibrated by inner k-fold."""
    rows = [*load_labelled(datasets), *load_hard_negatives()]
    corpus = Corpus(rows)
    model = fit(corpus, np.arange(len(rows)))
    meta = {
        "trained_on": [*LABELLED_FILES, HARD_NEGATIVES.name],
        "rows": len(rows),
        "held_out": HELD_OUT_FILE,
        "seed": SEED,
        "l2": L2,
        "min_df": MIN_DF,
        "inner_folds": INNER_FOLDS,
        "target_fpr": TARGET_FPR,
        "rules": sorted({*RULES, *CASED_RULES}),
    }
    return export(corpus, model, meta)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the shipped injection model.")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH, help="model JSON path")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args(argv)
    model = train_shipped(args.datasets)
    text = json.dumps(model, ensure_ascii=False, separators=(",", ":"))
    args.out.write_text(text + "\n", encoding="utf-8")
    n = sum(len(model[g]) for g in ("words", "chars", "tail", "rules"))
    print(f"wrote {args.out} ({n} weights, {args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
