"""The compiled core the detectors use (n-gram scoring, lexicons, character classes and
translation tables, decoder signals), or its Python reference.

Why this exists: one place decides which implementation runs. `pip install` (and so `make venv`
and the image build) compiles `_ngramcore`; when it is missing (a checkout used without
installing it), detection still works, identically but about a hundred times slower, and a
warning says so once, so a slow sidecar is never a silent mystery. `COMPILED` tells tests and
benchmarks which one they measure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import compiled

__all__ = [
    "COMPILED",
    "CharClasses",
    "Lexicon",
    "Scorer",
    "Translator",
    "count_tokens",
    "lower",
    "signals",
]

if TYPE_CHECKING:
    from . import ngram_ref as _core

    COMPILED: bool
else:
    try:
        from . import _ngramcore as _core

        COMPILED = True
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        from . import ngram_ref as _core

        COMPILED = False
        compiled.missing("scoring core", exc, "the pure-Python reference runs, ~100x slower")

CharClasses = _core.CharClasses
Lexicon = _core.Lexicon
Scorer = _core.Scorer
Translator = _core.Translator
count_tokens = _core.count_tokens
lower = _core.lower
signals = _core.signals
