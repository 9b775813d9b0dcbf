"""Prompt-injection scoring for the sidecar's `prompt-injection` policy.

Why this exists: the policy compares a score in [0, 1] with its configured `threshold` on every
request, in the proxy's hot path, so the detector must be cheap (tens of microseconds for a 1 KB
prompt), must not pull numpy or a model runtime into the sidecar, and must see through cheap
obfuscation. The model is a logistic regression over hashed n-gram features plus hand-written
phrase rules (`injection_rules.py`), trained offline by `packgate_quality.injection_train` and
shipped as JSON beside this module. The phrase rules are matched on the whole text; the n-gram
groups are scored on spans (`segments.py`: the text or its windows, and each sentence) and the
highest span counts, so an instruction appended to a benign request is not diluted by it. Its
bias is calibrated so that the seed config's threshold of 0.8 is where every benign source in
training has an out-of-fold false-positive rate of at most 1%. A text scores the maximum over its
normalised variants (plain, base64/hex/percent-decoded, rot13, de-leeted, de-spaced, Morse:
`normalize.py`), so encoding an attack does not lower its score. The per-character work runs in
the compiled core (`_ngramcore.c`, reference `ngram_ref.py`).

Model format 2 (the contract training writes and both cores score):

    {"format": 2,
     "hashing": {"bits": B, "seeds": {"words": Sw, "chars": Sc, "tail": St}},
     "char_sizes": [4],            # character n-gram sizes, 1..16, at most 8 of them
     "bias": b,                    # calibrated: the seed threshold 0.8 is the operating point
     "rules": {name: weight},      # phrase-rule weights (see injection_rules.py)
     "buckets": [i, ...], "weights": [w, ...],   # the non-zero table entries, i < 2**B
     "meta": {...}}                # provenance only, never read by the scorer

- Text: `t` is one normalised variant, `l = t.lower()`. Tokens are the `\\w+` runs of `l`
  (Python `re` semantics: Unicode alphanumerics and `_`). Sentences are
  `re.split(r"[.!?:]\\s+|\\n+", l.strip())`.
- Feature strings, three groups: *words* = every token, every adjacent token pair joined by one
  space, and `"^" + first token` of each sentence; *chars* = every n-gram (n in `char_sizes`) of
  `" " + " ".join(tokens) + " "`; *tail* = the tokens and adjacent pairs of the last sentence, only
  when there is more than one sentence.
- Hashing: a feature string `f` of group `g` goes to bucket
  `fmix64(fnv1a64(seed_g, code points of f)) & (2**B - 1)`: FNV-1a with prime 0x100000001b3
  stepping once per code point (`h = (h ^ cp) * prime mod 2**64`) from the group's seed, then
  MurmurHash3's fmix64. Weights are float32 (a table of 2**B entries, zero where not listed).
- Span n-grams: for a span `(s, e)`, the three groups are those of `l[s:e]` taken as a text of
  its own; each group's *distinct* buckets (collisions within a group count once) contribute
  `sum(w[b]) / sqrt(number of distinct buckets)` (0 for an empty group).
- Score: `logit = bias + sum of the weights of the rules matching t (cased rules) or l + max over
  segments(l) of the span n-grams`; the text's score is `sigmoid(max logit over its variants)`.
  The core's `logit(l, s, e)` / `max_logit(l, spans)` compute span n-grams without copying;
  `pooled_logit(l)` is `max_logit(l, segments(l))` with the spans found in the core too.

Training in bucket space (columns are buckets, not strings) makes the hashed model exact: the
scorer computes precisely the function that was fitted, collisions included.
"""

from __future__ import annotations

import json
import math
from array import array
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import ngram, ngram_ref
from .injection_rules import CASED_RULES, RULES, matched_rules, searched_rules
from .normalize import iter_lowered_variants, warm_up

__all__ = [
    "CASED_RULES",
    "DEFAULT_MODEL_PATH",
    "MODEL_FORMAT",
    "RULES",
    "InjectionScorer",
    "default_scorer",
    "matched_rules",
]

DEFAULT_MODEL_PATH = Path(__file__).with_name("injection_model.json")
MODEL_FORMAT = 2
_SATURATED = 6.0  # logit of a score of 0.9975
_MAX_BITS = 24


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class InjectionScorer:
    """Scores texts with one shipped model; load once, share freely (calls hold the GIL).

    `reference=True` scores with the pure-Python reference core instead of the compiled one,
    and matches the phrase rules by plain regex search: the same numbers by definition rather
    than by shortcut, for tests and for checking the fast path.
    """

    def __init__(self, model_path: Path | None = None, *, reference: bool = False) -> None:
        path = model_path or DEFAULT_MODEL_PATH
        self._load(json.loads(path.read_text(encoding="utf-8")), str(path), reference)

    @classmethod
    def from_dict(cls, model: dict[str, Any], *, reference: bool = False) -> InjectionScorer:
        """A scorer over an in-memory model document (used by training and evaluation)."""
        scorer = cls.__new__(cls)
        scorer._load(model, "<model>", reference)
        return scorer

    def _load(self, model: dict[str, Any], origin: str, reference: bool) -> None:
        if model.get("format") != MODEL_FORMAT:
            raise ValueError(f"{origin}: unsupported injection model format {model.get('format')}")
        try:
            hashing = model["hashing"]
            bits = int(hashing["bits"])
            seeds = tuple(int(hashing["seeds"][g]) for g in ("words", "chars", "tail"))
            char_sizes = tuple(int(n) for n in model["char_sizes"])
            buckets = [int(b) for b in model["buckets"]]
            weights = [float(w) for w in model["weights"]]
            self.bias = float(model["bias"])
            self.rule_weights = {str(k): float(v) for k, v in model["rules"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{origin}: malformed injection model ({exc!r})") from None
        if not 1 <= bits <= _MAX_BITS or len(buckets) != len(weights):
            raise ValueError(f"{origin}: malformed injection model (bits or table size)")
        if any(not 0 <= b < 1 << bits for b in buckets):
            raise ValueError(f"{origin}: a bucket id is outside the {bits}-bit table")
        table = array("f", bytes(4 << bits))
        for b, w in zip(buckets, weights, strict=True):
            table[b] = w
        self.table = table
        self.bits = bits
        self.char_sizes = char_sizes
        self.seeds: tuple[int, int, int] = (seeds[0], seeds[1], seeds[2])
        self.meta: dict[str, Any] = dict(model.get("meta", {}))
        self.compiled = ngram.COMPILED and not reference
        core = ngram.Scorer if self.compiled else ngram_ref.Scorer
        self.core = core(table, char_sizes, self.seeds)

    def logit(self, normalised: str, lowered: str | None = None) -> float:
        """Calibrated log-odds for one normalised text (one variant, no decoding); `lowered`
        is `normalised.lower()` when the caller has it already."""
        if lowered is None:
            lowered = normalised.lower()
        rules = matched_rules if self.compiled else searched_rules
        z = self.bias + sum(self.rule_weights.get(r, 0.0) for r in rules(normalised, lowered))
        return z + self.core.pooled_logit(lowered)

    def score(self, text: str) -> float:
        """Injection score in [0, 1]: the worst case over the text's decoded variants.

        A decoded variant usually differs from the base text in a few words, and each of its
        spans that is also a span of the base, over the same characters, has the base's span
        logit, which is at most the base's pooled maximum. When the variant's rules weigh no
        more than the base's, such a span's logit is therefore at most the base's logit, which
        `best` already holds: only the changed spans can raise the maximum, and only they are
        scored (`pooled_logit(..., base=...)`). The result is exactly the maximum over every
        variant scored in full (the reference scorer does score them in full).
        """
        if not text or text.isspace():
            return 0.0
        best = -math.inf
        compiled = self.compiled
        rules = matched_rules if compiled else searched_rules
        weights = self.rule_weights
        pooled = self.core.pooled_logit
        base: str | None = None
        base_rules = 0.0
        for variant, lowered in iter_lowered_variants(text, reference=not compiled):
            matched = 0.0  # summed as sum() does, then added: the same float as before
            for rule in rules(variant, lowered):
                matched += weights.get(rule, 0.0)
            z = self.bias + matched
            if base is None:
                base, base_rules = lowered, z
                best = z + pooled(lowered)
            else:
                z += pooled(lowered, base) if compiled and z <= base_rules else pooled(lowered)
                if z > best:
                    best = z
            # Past this the score is within 0.003 of 1 and no threshold tells the rest apart:
            # stop instead of scoring the remaining decoded readings.
            if best >= _SATURATED:
                break
        return _sigmoid(best)


@lru_cache(maxsize=1)
def default_scorer() -> InjectionScorer:
    """The scorer over the shipped model, loaded on first use and shared afterwards.

    Loading also builds the normaliser's table of Unicode normalisation boundaries (~25 ms),
    so the first non-ASCII prompt does not pay for it: the policy loads this with its config.
    """
    scorer = InjectionScorer()
    warm_up()
    return scorer
