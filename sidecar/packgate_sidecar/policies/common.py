"""Small helpers the shipped policies share: typed settings, role sets, reason strings.

Why it exists: each policy is its own small module, but a few rules must be the same in all of
them: a policy gets its own config block type (the chain hands it a `PolicyBlock`), reasons are
short tokens that name entity types and never values, and CPU-heavy scans of very large texts
must not hold the event loop for the whole scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from packgate_policy import PolicyBlock

from ..policy import TextItem

_S = TypeVar("_S", bound=PolicyBlock)
_T = TypeVar("_T")

# Texts written by the application itself (its prompts and tool descriptions), as opposed to
# text that arrives from end users, tools or the model.
APP_ROLES = frozenset({"system", "developer", "tool_definition"})
# Where untrusted input enters a conversation: the end user, tool results (web pages, files,
# e-mails a tool fetched; "function" is the legacy name of a tool result), assistant turns the
# client sends back (the application is trusted, text inside a conversation is not: a forged
# or poisoned earlier turn is read by the model like any other), tool definitions (often served
# by third-party MCP servers) and metadata fields (`user`, `metadata`). Only the system and
# developer prompts, the application's own instructions, are not scored.
UNTRUSTED_ROLES = frozenset(
    {"user", "tool", "function", "assistant", "tool_definition", "metadata"}
)

# Above this many characters in one phase a scan runs in a worker thread, so other requests'
# I/O keeps moving while an 8 MB document is scanned (the GIL is shared, the loop is not held).
OFFLOAD_CHARS = 64 * 1024


def settings_as(settings: PolicyBlock, cls: type[_S]) -> _S:
    """The policy's own settings type; a bare `PolicyBlock` (defaults) is upgraded."""
    if isinstance(settings, cls):
        return settings
    return cls.model_validate(settings.model_dump())


def counted_reason(prefix: str, counts: Mapping[str, int]) -> str:
    """`pii:EMAIL,PHONE` from `{"EMAIL": 2, "PHONE": 1}`: entity types, never values."""
    return prefix + ":" + ",".join(sorted(counts))


def offloaded(size: int) -> bool:
    """Whether a scan of `size` characters runs in a worker thread (OFFLOAD_CHARS) rather than
    inline, which is cheaper than a thread hop. Hot hooks check it themselves, so the usual
    small phase costs no coroutine of its own."""
    return size > OFFLOAD_CHARS


def text_chars(texts: Sequence[TextItem]) -> int:
    return sum([len(item.text) for item in texts])


async def maybe_offload(size: int, work: Callable[[], _T]) -> _T:
    """Run `work` inline when small, in a thread when large (see `offloaded`)."""
    if not offloaded(size):
        return work()
    return await asyncio.to_thread(work)
