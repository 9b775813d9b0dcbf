"""Score the PII detector against labelled data, honestly.

Why a separate pure module: the CLI, the quality test and anyone tuning the detector need the same
loading, split and scoring, and none of them should be able to report numbers on the rows the
rules were tuned on by accident.

Split: rows of one `template_id` are near-duplicates, so whole templates go to one half. A plain
hash split of ~200 templates would put every template of a rare entity (the data set has two SSN
and two IP-address templates) into one half, leaving nothing to measure, so templates are
stratified by the rarest of our entities they contain, ordered by a salted SHA-256 of the template
id, and dealt alternately to held-out and tuning. No score is consulted to make the split.

Matching: a predicted span counts when it has the gold span's entity and they overlap by at least
half of the longer of the two (so both spans are at least half covered); each gold span is matched
at most once. Predictions on text the data set does not label as one of our entities are false
positives, including spans it labels as another type (a street number taken for a phone number).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, Finding, PiiDetector

# Presidio's entity names in the data set -> ours.
ENTITY_MAP = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "US_SSN": "SSN",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
}
SPLIT_SALT = "packgate-pii-split"
HELD_OUT, TUNING = "held-out", "tuning"


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    spans: tuple[Finding, ...]  # gold spans of our entities only
    template_id: int


@dataclass(slots=True)
class Score:
    entity: str
    support: int = 0  # gold spans
    predicted: int = 0
    tp_gold: int = 0  # gold spans that were found
    tp_pred: int = 0  # predictions that matched a gold span

    @property
    def precision(self) -> float:
        return self.tp_pred / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.tp_gold / self.support if self.support else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "entity": self.entity,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "support": self.support,
            "predicted": self.predicted,
        }


@dataclass(slots=True)
class Report:
    half: str
    rows: int
    scores: dict[str, Score]
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, entity, excerpt)


def load_rows(path: Path) -> list[Row]:
    rows = []
    for item in json.loads(path.read_text(encoding="utf-8")):
        spans = tuple(
            sorted(
                (
                    Finding(ENTITY_MAP[s["entity_type"]], s["start_position"], s["end_position"])
                    for s in item["spans"]
                    if s["entity_type"] in ENTITY_MAP
                ),
                key=lambda f: f.start,
            )
        )
        rows.append(Row(item["full_text"], spans, int(item["template_id"])))
    return rows


def _template_hash(template_id: int) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{template_id}".encode()).hexdigest()


def split_rows(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """{HELD_OUT: rows, TUNING: rows}, whole templates per half (see the module docstring)."""
    entities_of: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        entities_of[row.template_id].update(s.entity for s in row.spans)
    templates_with = Counter(e for es in entities_of.values() for e in es)
    strata: dict[str, list[int]] = defaultdict(list)
    for tid, ents in entities_of.items():
        key = min(ents, key=lambda e: (templates_with[e], e)) if ents else ""
        strata[key].append(tid)
    half_of: dict[int, str] = {}
    for tids in strata.values():
        for i, tid in enumerate(sorted(tids, key=_template_hash)):
            half_of[tid] = HELD_OUT if i % 2 == 0 else TUNING
    out: dict[str, list[Row]] = {HELD_OUT: [], TUNING: []}
    for row in rows:
        out[half_of[row.template_id]].append(row)
    return out


def _matches(pred: Finding, gold: Finding) -> bool:
    if pred.entity != gold.entity:
        return False
    overlap = min(pred.end, gold.end) - max(pred.start, gold.start)
    return overlap > 0 and 2 * overlap >= max(pred.end - pred.start, gold.end - gold.start)


def evaluate(
    detector: PiiDetector,
    rows: Iterable[Row],
    half: str,
    entities: Sequence[str] = BUILTIN_ENTITIES,
    max_errors: int = 0,
) -> Report:
    scores = {e: Score(e) for e in entities}
    errors: list[tuple[str, str, str]] = []
    n = 0
    for row in rows:
        n += 1
        gold = [g for g in row.spans if g.entity in scores]
        preds = [p for p in detector.find(row.text) if p.entity in scores]
        used: set[int] = set()
        for g in gold:
            scores[g.entity].support += 1
        for p in preds:
            scores[p.entity].predicted += 1
            hit = next((i for i, g in enumerate(gold) if i not in used and _matches(p, g)), None)
            if hit is None:
                if len(errors) < max_errors:
                    errors.append(("FP", p.entity, _excerpt(row.text, p)))
                continue
            used.add(hit)
            scores[p.entity].tp_pred += 1
            scores[p.entity].tp_gold += 1
        for i, g in enumerate(gold):
            if i not in used and len(errors) < max_errors:
                errors.append(("FN", g.entity, _excerpt(row.text, g)))
    return Report(half, n, scores, errors)


def _excerpt(text: str, span: Finding) -> str:
    left = text[max(0, span.start - 30) : span.start]
    right = text[span.end : span.end + 20]
    return f"{left}[[{text[span.start : span.end]}]]{right}".replace("\n", "\\n")


def sample_text(rows: Sequence[Row], size: int) -> str:
    """`size` characters of data-set text: PII-dense, so a pessimistic throughput input."""
    parts: list[str] = []
    total = 0
    while total < size:
        for row in rows:
            parts.append(row.text)
            total += len(row.text) + 1
            if total >= size:
                break
    return "\n".join(parts)[:size]


def throughput(detector: PiiDetector, text: str, min_seconds: float = 0.3) -> float:
    """MB/s (UTF-8 bytes) of `detector.find` on `text`, best of a few timed rounds."""
    size = len(text.encode("utf-8"))
    detector.find(text)  # warm caches so the first call's compile costs are not counted
    best = 0.0
    deadline = time.perf_counter() + min_seconds
    while True:
        t0 = time.perf_counter()
        detector.find(text)
        elapsed = time.perf_counter() - t0
        best = max(best, size / elapsed / 1e6 if elapsed > 0 else float("inf"))
        if time.perf_counter() >= deadline:
            return best
