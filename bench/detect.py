"""Detection speed: PII and prompt-injection throughput in MB/s on 1 KB and 32 KB texts.

Why it exists: the detectors run on the request path of every governed call, so their speed
bounds the sidecar's throughput on large prompts (a 32 KB prompt is a few pages of pasted
document). The comparison row is presidio-analyzer, the usual open-source choice, restricted to
what it can do without an NLP model: its pattern recognizers for the same six entity types
(e-mail, phone, US SSN, credit card, IBAN, IP address), run through an AnalyzerEngine whose NLP
engine is a stub that returns no tokens (so no spaCy model is downloaded or loaded). It runs in
its own virtual environment (see peers.py) through bench/presidio_runner.py.

Everything here runs pinned to the SUT core, one text at a time, repeated until a minimum time
has passed; the figure is the median over batches of bytes scanned per second (1 MB = 10^6 B).

The injection scorer's targets (issue 15: p50 at most 50 us per KB, at most 1 ms for 32 KB) are
judged on text drawn from the shipped datasets (`../shared/datasets/prompt-injection/`, training
files only), plain and with obfuscations applied (look-alike letters, invisible characters,
leetspeak, full-width forms, base64, spacing, rot13, combining marks, tag characters:
`packgate_quality.injection_corpus`), cut to 1 KB and 32 KB of UTF-8: the p50 over texts of each
text's median CPU time per call. Dataset text is far heavier than the support prose (trigger words
that wake the phrase rules, non-ASCII text that needs normalising, decoded variants each scored).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import payloads, peers
from .common import BENCH, Cores, Report, Row, Verdict, median, pinned, python_in

SIZES = {"1 KB": 1024, "32 KB": 32 * 1024}
# label -> (UTF-8 bytes, obfuscated, p50 limit in seconds)
CORPUS = {
    "1 KB dataset text": (1024, False, 50e-6),
    "1 KB obfuscated dataset text": (1024, True, 50e-6),
    "32 KB dataset text": (32 * 1024, False, 1e-3),
    "32 KB obfuscated dataset text": (32 * 1024, True, 1e-3),
}
SIX = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IBAN", "IP_ADDRESS")


@dataclass
class Options:
    seconds: float  # per batch
    batches: int
    workdir: Path
    peers: bool


@contextlib.contextmanager
def on_cpu(cpu: str | None) -> Iterator[None]:
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def throughput(call: Callable[[str], Any], text: str, seconds: float, batches: int) -> float:
    """Median MB/s over `batches` batches of at least `seconds` each."""
    size = len(text.encode())
    call(text)  # warm caches (compiled patterns, lazy loads)
    rates = []
    for _ in range(batches):
        count = 0
        started = time.perf_counter()
        while True:
            call(text)
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds and count >= 3:
                break
        rates.append(size * count / elapsed / 1e6)
    return float(median(rates) or 0.0)


def latency_p50(call: Callable[[str], Any], text: str, seconds: float) -> float:
    """Median seconds of one call, over as many calls as fit in `seconds` (at least 21)."""
    call(text)
    samples = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 21 or time.perf_counter() < deadline:
        started = time.perf_counter()
        call(text)
        samples.append(time.perf_counter() - started)
    return float(statistics.median(samples))


def corpus_latency(
    call: Callable[[str], Any], texts: list[str], repeats: int
) -> tuple[float, float]:
    """(p50, p90) over texts of each text's median CPU seconds per call.

    Thread CPU time, not wall time: the call is single-threaded and never waits, so the two
    agree on a quiet core, and on a shared machine CPU time is not inflated by preemption.
    """
    per_text = []
    for text in texts:
        call(text)
        samples = []
        for _ in range(repeats):
            started = time.thread_time()
            call(text)
            samples.append(time.thread_time() - started)
        per_text.append(statistics.median(samples))
    per_text.sort()
    return statistics.median(per_text), per_text[min(len(per_text) - 1, len(per_text) * 9 // 10)]


def _injection_corpus(section: Any, report: Report, opts: Options, score: Any) -> None:
    try:
        from packgate_quality import injection_corpus
    except ImportError as exc:  # numpy missing: the test extra is not installed
        section.add(Row("packgate injection, dataset text", status="skipped", note=str(exc)))
        return
    quick = opts.batches == 1
    for label, (size, obfuscated, limit) in CORPUS.items():
        count = (12 if quick else 120) if size <= 1024 else (2 if quick else 12)
        try:
            texts = injection_corpus.sized_texts(size, count, obfuscated=obfuscated)
        except FileNotFoundError as exc:
            section.add(Row(f"packgate injection score, {label}", status="skipped", note=str(exc)))
            report.verdicts.append(
                Verdict(f"injection scoring p50, {label}", None, limit * 1e6, " us", False)
            )
            continue
        p50, p90 = corpus_latency(score, texts, 3 if quick else 11)
        section.add(
            Row(
                f"packgate injection score, {label} (CPU p50 of {count}, p90 {p90 * 1e3:.2f} ms)",
                {"mb_s": size / p50 / 1e6, "per_text_ms": p50 * 1e3},
            )
        )
        report.verdicts.append(
            Verdict(f"injection scoring p50, {label}", p50 * 1e6, limit * 1e6, " us", False)
        )


def run(report: Report, opts: Options) -> None:
    cores = Cores.detect()
    section = report.section(
        "detect",
        "Detection throughput (one core, MB/s of UTF-8 text)",
        [("mb_s", "MB/s"), ("per_text_ms", "ms per text"), ("findings", "findings")],
    )
    texts = {label: payloads.text_of_size(size) for label, size in SIZES.items()}
    section.notes.append(
        "texts: generated support prose with about one PII entity per 250 characters"
    )
    pii32: float | None = None
    with on_cpu(cores.sut):
        try:
            from packgate_sidecar.detect.pii import PiiDetector

            detector = PiiDetector(list(SIX))
        except Exception as exc:  # the engine may be mid-change; report, don't crash
            section.add(Row("packgate PII", status="pending", note=f"{type(exc).__name__}: {exc}"))
        else:
            for label, text in texts.items():
                rate = throughput(detector.find, text, opts.seconds, opts.batches)
                found = len(detector.find(text))
                section.add(
                    Row(
                        f"packgate PII, 6 entity types, {label}",
                        {"mb_s": rate, "per_text_ms": len(text) / rate / 1e3, "findings": found},
                    )
                )
                if label == "32 KB":
                    pii32 = rate
        try:
            from packgate_sidecar.detect.injection import default_scorer

            scorer = default_scorer()
        except Exception as exc:
            section.add(
                Row("packgate injection", status="pending", note=f"{type(exc).__name__}: {exc}")
            )
        else:
            for label, text in texts.items():
                rate = throughput(scorer.score, text, opts.seconds, opts.batches)
                p50 = latency_p50(scorer.score, text, opts.seconds * opts.batches)
                section.add(
                    Row(
                        f"packgate injection score, {label} support prose",
                        {"mb_s": rate, "per_text_ms": p50 * 1e3},
                    )
                )
            _injection_corpus(section, report, opts, scorer.score)
    _presidio(section, texts, opts, cores)
    report.verdicts.append(
        Verdict(
            "PII throughput, 32 KB, six entity types",
            pii32,
            10.0,
            " MB/s",
            True,
            "" if pii32 else "PII detector not measured",
        )
    )


def _presidio(section: Any, texts: dict[str, str], opts: Options, cores: Cores) -> None:
    if not opts.peers:
        section.add(
            Row(
                "presidio-analyzer (patterns only)",
                status="skipped",
                note="peers not run (--quick or --no-peers)",
            )
        )
        return
    try:
        venv = peers.presidio_venv()
    except (peers.InstallError, OSError, subprocess.TimeoutExpired) as exc:
        section.add(Row("presidio-analyzer (patterns only)", status="skipped", note=str(exc)))
        return
    source = opts.workdir / "detect-texts.json"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps(texts))
    argv = [
        str(python_in(venv)),
        str(BENCH / "presidio_runner.py"),
        str(source),
        str(opts.seconds),
        str(opts.batches),
    ]
    done = subprocess.run(
        pinned(argv, cores.sut), capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        section.add(
            Row(
                "presidio-analyzer (patterns only)",
                status="error",
                note=(done.stderr or done.stdout)[-400:],
            )
        )
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for label, text in texts.items():
        got = result["sizes"][label]
        section.add(
            Row(
                f"presidio-analyzer {peers.PRESIDIO_VERSION}, patterns only, {label}",
                {
                    "mb_s": got["mb_s"],
                    "per_text_ms": len(text) / got["mb_s"] / 1e3,
                    "findings": got["findings"],
                },
            )
        )
    section.notes.append("presidio: " + result["setup"])
