"""`packgate quality pii`: how well the PII detector does on labelled data it was not tuned on.

Why a command: users deciding whether to trust `pii-detector` (and maintainers changing its rules)
need the numbers reproducibly, from the same split and matching rule every time. The held-out half
is what we report; the tuning half is shown only when asked and is labelled as such, and error
excerpts (useful while tuning) are only ever taken from the tuning half.

Exit status: 0 when every entity meets --min-precision and --min-recall on the held-out half,
1 when one does not, 2 when the data set cannot be found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from packgate_sidecar.detect.pii import BUILTIN_ENTITIES, PiiDetector

from packgate_quality.pii_eval import (
    HELD_OUT,
    TUNING,
    Report,
    evaluate,
    load_rows,
    sample_text,
    split_rows,
    throughput,
)

DATASET = Path("pii") / "presidio-synth-v2.json"
MATCHING = "span overlap >= 50% of the longer span, same entity, one-to-one"


def default_dataset() -> Path | None:
    """`$PACKGATE_DATASETS/pii/...`, else the nearest `shared/datasets` above this file or cwd."""
    env = os.environ.get("PACKGATE_DATASETS")
    if env:
        return Path(env) / DATASET
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in start.parents if start.is_file() else (start, *start.parents):
            candidate = parent / "shared" / "datasets" / DATASET
            if candidate.is_file():
                return candidate
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=Path, help="presidio-synth JSON (default: found under shared/datasets)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--phone-regions",
        default="US",
        help="comma-separated regions for phone validation, as the policy would set (default: US)",
    )
    parser.add_argument(
        "--tuning", action="store_true", help="also score the tuning half (labelled)"
    )
    parser.add_argument(
        "--show-errors",
        type=int,
        default=0,
        metavar="N",
        help="print N misses from the tuning half",
    )
    parser.add_argument("--min-precision", type=float, default=0.95)
    parser.add_argument("--min-recall", type=float, default=0.95)
    parser.add_argument("--no-throughput", action="store_true", help="skip the timing runs")


def run(args: argparse.Namespace) -> int:
    path = args.dataset or default_dataset()
    if path is None or not Path(path).is_file():
        print(f"packgate quality pii: data set not found: {path or DATASET}", file=sys.stderr)
        return 2
    regions = [r.strip() for r in args.phone_regions.split(",") if r.strip()]
    detector = PiiDetector(BUILTIN_ENTITIES, phone_regions=regions)
    halves = split_rows(load_rows(Path(path)))
    reports = [evaluate(detector, halves[HELD_OUT], HELD_OUT)]
    if args.tuning or args.show_errors:
        reports.append(evaluate(detector, halves[TUNING], TUNING, max_errors=args.show_errors))
    speed: dict[str, float] = {}
    if not args.no_throughput:
        for label, size in (("1KB", 1024), ("32KB", 32 * 1024)):
            speed[label] = round(throughput(detector, sample_text(halves[HELD_OUT], size)), 2)
    failures = _failures(reports[0], args.min_precision, args.min_recall)
    doc: dict[str, Any] = {
        "dataset": str(path),
        "matching": MATCHING,
        "phone_regions": regions,
        "thresholds": {"precision": args.min_precision, "recall": args.min_recall},
        "halves": {r.half: _report_dict(r, halves[r.half]) for r in reports},
        "throughput_mb_per_s": speed,
        "failures": failures,
        "passed": not failures,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_text(doc, reports, args.show_errors > 0)
    return 1 if failures else 0


def _failures(report: Report, min_p: float, min_r: float) -> list[str]:
    out = []
    for s in report.scores.values():
        if s.support == 0:
            out.append(f"{s.entity}: no held-out examples")
        if s.precision < min_p:
            out.append(f"{s.entity}: precision {s.precision:.3f} < {min_p}")
        if s.recall < min_r:
            out.append(f"{s.entity}: recall {s.recall:.3f} < {min_r}")
    return out


def _report_dict(report: Report, rows: list[Any]) -> dict[str, Any]:
    scores = list(report.scores.values())
    tp_pred = sum(s.tp_pred for s in scores)
    tp_gold = sum(s.tp_gold for s in scores)
    predicted = sum(s.predicted for s in scores)
    support = sum(s.support for s in scores)
    p = tp_pred / predicted if predicted else 1.0
    r = tp_gold / support if support else 1.0
    return {
        "rows": report.rows,
        "templates": len({row.template_id for row in rows}),
        "entities": {s.entity: s.as_dict() for s in scores},
        "micro": {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
            "support": support,
            "predicted": predicted,
        },
    }


def _print_text(doc: dict[str, Any], reports: list[Report], show_errors: bool) -> None:
    print(f"PII detection quality on {doc['dataset']}")
    print(f"matching: {doc['matching']}; phone regions: {','.join(doc['phone_regions'])}")
    for report in reports:
        half = doc["halves"][report.half]
        label = (
            "HELD-OUT half (reported scores; rules were tuned on the other half, but its "
            "entity values were seen once while the split was being fixed)"
            if report.half == HELD_OUT
            else "tuning half (rules were tuned on it; not a quality claim)"
        )
        print(f"\n{label}: {half['rows']} rows, {half['templates']} templates")
        header = ("entity", "precision", "recall", "f1", "support", "predicted")
        print("{:<12} {:>9} {:>7} {:>6} {:>8} {:>9}".format(*header))
        for row in [*half["entities"].values(), {"entity": "micro avg", **half["micro"]}]:
            print(
                f"{row['entity']:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                f"{row['f1']:>6.3f} {row['support']:>8} {row['predicted']:>9}"
            )
    if show_errors:
        errors = next((r.errors for r in reports if r.half == TUNING), [])
        print(f"\ntuning-half errors ({len(errors)}):")
        for kind, entity, excerpt in errors:
            print(f"  {kind} {entity:<12} {excerpt}")
    if doc["throughput_mb_per_s"]:
        speeds = ", ".join(f"{k}: {v:.1f} MB/s" for k, v in doc["throughput_mb_per_s"].items())
        print(f"\nfind() throughput, all six entities, PII-dense data-set text: {speeds}")
    thresholds = doc["thresholds"]
    if doc["failures"]:
        print(
            f"\nFAIL (min precision {thresholds['precision']}, min recall {thresholds['recall']}):"
        )
        for failure in doc["failures"]:
            print(f"  {failure}")
    else:
        print(
            f"\nPASS: every entity >= {thresholds['precision']} precision and "
            f">= {thresholds['recall']} recall on the held-out half"
        )
