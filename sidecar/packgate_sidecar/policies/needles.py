"""Literal strings that every match of a regular expression must contain ("needles").

Why it exists: Python's `re` tries an alternation of dozens of phrases at every position of the
text, which made the content filter cost milliseconds per kilobyte; a substring test (`in`) runs
in C at memory speed. Deriving the needles from the compiled pattern, instead of listing keywords
by hand beside each pattern, keeps them correct when someone edits a term list: a match of the
pattern is impossible unless one of its needles occurs in the text, so the pattern only runs when
one does. When no needle can be derived (an unusual construct, a future `re` internals change),
the answer is None and the caller simply always runs the pattern: slower, never wrong.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

try:  # CPython's own regex parser; its layout is an implementation detail, so guard every use
    _c: Any = importlib.import_module("re._constants")
    _parser: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - another Python
    _parser = None

Needles = frozenset[str]
# Words too frequent to filter anything; a needle made only of one of them is a last resort.
_COMMON = frozenset((
    "a", "an", "and", "the", "to", "of", "in", "on", "for", "is", "be", "i", "you", "it", "all",
    "how", "where", "what", "when", "make", "get", "write", "should", "must", "can", "will",
    "going", "child", "build",
))  # fmt: skip


def needles(regex: re.Pattern[str]) -> Needles | None:
    """Strings of which every match of `regex` contains at least one, or None when unknown.

    With IGNORECASE the needles are lower-cased: test them against the lower-cased text.
    """
    if _parser is None:
        return None
    try:
        found = _required(list(_parser.parse(regex.pattern, regex.flags)))
    except Exception:  # any surprise means "unknown", which is always safe
        return None
    if found is not None and regex.flags & re.IGNORECASE:
        found = frozenset(needle.lower() for needle in found)
    if found is not None:
        # "car bomb" is redundant beside "bomb": a text holding the first holds the second.
        found = frozenset(n for n in found if not any(o != n and o in n for o in found))
    return found


def _quality(needle: str) -> int:
    core = needle.strip().lower()
    return 0 if core in _COMMON else len(core)


def _best(candidates: list[Needles]) -> Needles | None:
    # Each needle costs one substring search, and a set filters as well as its most frequent
    # member: among sets whose needles are all decent (4+ characters, no common word) take the
    # smallest, otherwise the one whose weakest needle is strongest.
    def rank(c: Needles) -> tuple[bool, int, int]:
        weakest = min(map(_quality, c))
        return (weakest >= 4, -len(c) if weakest >= 4 else weakest, weakest)

    return max(candidates, key=rank, default=None)


def _required(items: list[tuple[Any, Any]]) -> Needles | None:
    candidates: list[Needles] = []
    run: list[str] = []
    for op, av in items:
        if op is _c.LITERAL:
            run.append(chr(av))
            continue
        if run:
            candidates.append(frozenset({"".join(run)}))
            run = []
        found: Needles | None = None
        if op is _c.SUBPATTERN:
            # A group with its own flags ("(?i:...)") may match other cases than its literals.
            found = None if av[1] or av[2] else _required(list(av[-1]))
        elif op is _c.ATOMIC_GROUP:
            found = _required(list(av))
        elif op is _c.BRANCH:
            branches = [_required(list(branch)) for branch in av[1]]
            if branches and all(b is not None for b in branches):
                found = frozenset().union(*(b for b in branches if b is not None))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            low, _high, item = av
            if low >= 1:
                found = _required(list(item))
        if found:
            candidates.append(found)
    if run:
        candidates.append(frozenset({"".join(run)}))
    return _best([c for c in candidates if c and all(c)])
