"""Turn detector findings into redacted text with presidio-anonymizer's operators.

Why presidio-anonymizer: its operators (`replace`, `mask`, `hash`) are the vocabulary users of
Presidio already know, and it rebuilds the text from the spans without us re-implementing offset
bookkeeping. The engine is built once; presidio's per-call overhead is a few tens of
microseconds plus a little per entity, so text without findings skips it entirely.

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
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal, get_args

from presidio_anonymizer import AnonymizerEngine, OperatorConfig, RecognizerResult

from packgate_sidecar.detect.pii import Finding

Action = Literal["redact", "mask", "hash"]
ACTIONS: tuple[str, ...] = get_args(Action)
MASK_CHAR = "*"
_PROCESS_SALT = os.urandom(32)


@cache
def _engine() -> Any:
    return AnonymizerEngine()  # type: ignore[no-untyped-call]


def _operator(action: str, salt: bytes) -> Any:
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
    results = [RecognizerResult(f.entity, f.start, f.end, 1.0) for f in findings]
    # Presidio would merge same-type entities separated by spaces (meant for "James Bond"): two
    # e-mail addresses in a row would become one marker, and one hash of both.
    engine_result = _engine().anonymize(
        text, results, {"DEFAULT": operator}, merge_entities_with_spaces=False
    )
    return str(engine_result.text)
