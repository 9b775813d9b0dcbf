"""Turn detector findings into redacted text with presidio-anonymizer's operators.

Why presidio-anonymizer: its operators (`replace`, `mask`, `hash`) are the vocabulary users of
Presidio already know, and each value is rewritten by presidio's own operator. The findings of
`PiiDetector.find` are sorted and never overlap, so the text is rebuilt here from the spans in one
pass: presidio's engine adds conflict resolution, per-entity validation and result bookkeeping
that cost 92 us for the five entities of the bench prompt (4 us through the operators alone),
on a fresh prompt the largest single cost of the seed chain after detection. Overlapping or unsorted
spans (never produced by the detector) still go through the engine and its conflict rules.

Actions:
- `redact`: `<ENTITY>` markers (`<EMAIL>`, `<PHONE>`, ...), readable for the model downstream.
- `mask`: every character of the value becomes `*`, keeping the text's length and layout.
- `hash`: salted SHA-256 hex digest. Presidio's default is a fresh random salt per entity, which
  would make the same e-mail hash differently on every occurrence and in every stream chunk; we
  pass one salt instead: a per-process random one unless the caller supplies its own (for hashes
  that must be stable across replicas). A salt is needed at all because an unsalted hash of a
  phone number or SSN is reversed by enumerating the small space of possible values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any, Literal, get_args

from presidio_anonymizer import AnonymizerEngine, OperatorConfig, RecognizerResult
from presidio_anonymizer.operators import Hash, Mask, Replace

from packgate_sidecar.detect.pii import Finding

Action = Literal["redact", "mask", "hash"]
ACTIONS: tuple[str, ...] = get_args(Action)
MASK_CHAR = "*"
_PROCESS_SALT = os.urandom(32)


@cache
def _engine() -> Any:
    return AnonymizerEngine()  # type: ignore[no-untyped-call]


_OPERATORS = {"replace": Replace(), "mask": Mask(), "hash": Hash()}


@lru_cache(maxsize=64)
def _operator(action: str, salt: bytes) -> Any:
    """The operator config of `action`, one per action and salt: `_replace` copies its params
    before adding to them, and the engine gets a copy of its own, so it is never changed."""
    if action == "redact":
        # Without new_value presidio's replace writes "<ENTITY_TYPE>".
        return OperatorConfig("replace", {})
    if action == "mask":
        # chars_to_mask is capped at the value's length by presidio: mask all of it.
        return OperatorConfig(
            "mask", {"masking_char": MASK_CHAR, "chars_to_mask": 1 << 30, "from_end": False}
        )
    if action == "hash":
        return OperatorConfig("hash", {"hash_type": "sha256", "salt": salt})
    raise ValueError(f"unknown PII action {action!r}; expected one of {', '.join(ACTIONS)}")


def anonymize(
    text: str,
    findings: Sequence[Finding],
    action: Action,
    *,
    hash_salt: bytes | None = None,
) -> str:
    """Return `text` with every finding replaced according to `action`.

    `findings` must lie inside `text` and not overlap (as `PiiDetector.find` returns them).
    `hash_salt` (at least 16 bytes) only matters for `hash`; it defaults to a per-process salt.
    """
    operator = _operator(action, _PROCESS_SALT if hash_salt is None else hash_salt)
    if not findings:
        return text
    if _ordered(findings, len(text)):
        return splice(text, findings, _replace(text, findings, operator))
    results = [RecognizerResult(f.entity, f.start, f.end, 1.0) for f in findings]
    # Presidio would merge same-type entities separated by spaces (meant for "James Bond"): two
    # e-mail addresses in a row would become one marker, and one hash of both.
    engine_result = _engine().anonymize(
        text,
        results,
        # A copy: presidio-anonymizer 2.2.366 copies the params before it adds the entity type,
        # but the dependency allows releases that may not.
        {"DEFAULT": OperatorConfig(operator.operator_name, dict(operator.params))},
        merge_entities_with_spaces=False,
    )
    return str(engine_result.text)


def replacements(
    text: str,
    findings: Sequence[Finding],
    action: Action,
    *,
    hash_salt: bytes | None = None,
) -> tuple[str, ...] | None:
    """What `anonymize` puts in place of each finding, in order (`splice` puts them there), or
    None when the findings are not ordered and disjoint (then only `anonymize` applies them).

    For callers that keep a redaction for long (the verdict cache): the replacements are a
    fraction of the text, and each distinct one is kept once (`sys.intern`: every "<EMAIL>" is
    the same string).
    """
    operator = _operator(action, _PROCESS_SALT if hash_salt is None else hash_salt)
    if not _ordered(findings, len(text)):
        return None
    return tuple(sys.intern(r) for r in _replace(text, findings, operator))


def splice(text: str, findings: Sequence[Finding], replaced: Sequence[str]) -> str:
    """`text` with each of the ordered, disjoint `findings` replaced by its `replaced` string."""
    pieces: list[str] = []
    at = 0
    for finding, new in zip(findings, replaced, strict=True):
        pieces.append(text[at : finding.start])
        pieces.append(new)
        at = finding.end
    pieces.append(text[at:])
    return "".join(pieces)


def _replace(text: str, findings: Sequence[Finding], operator: Any) -> list[str]:
    """Each finding's value rewritten by presidio's own operator."""
    apply = _OPERATORS[operator.operator_name]
    out = []
    for finding in findings:
        params = {**operator.params, "entity_type": finding.entity}
        apply.validate(params=params)
        out.append(apply.operate(params=params, text=text[finding.start : finding.end]))
    return out


def _ordered(findings: Sequence[Finding], length: int) -> bool:
    """Whether the spans are non-empty, in order, inside the text and disjoint (as the detector
    returns them): then presidio's conflict resolution has nothing to do."""
    at = 0
    for finding in findings:
        if not at <= finding.start < finding.end <= length:
            return False
        at = finding.end
    return True
