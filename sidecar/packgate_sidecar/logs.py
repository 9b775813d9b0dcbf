"""Structured JSON logs for the sidecar: one object per line on stderr.

Why it exists: sidecar logs are read by machines (Loki, Cloud Logging) and by people grepping for
a request id, and they must never carry prompt text or secrets. Every call site passes explicit,
named fields (ids, statuses, counts, policy kinds), never message bodies; exceptions are reduced
to their type and code location because an exception *message* may quote the text that caused it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
import traceback
from typing import Any

import orjson

from .scrub import scrub_text

LOGGER_NAME = "packgate"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        entry = dict(fields) if isinstance(fields, dict) else {}
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = describe_exception(record.exc_info[1])
        return _line(record.created, record.levelname, record.name, record.getMessage(), entry)


# For what orjson refuses (integers beyond 64 bits): one standard encoder for every such line.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
# The gateway writes a line per request: orjson encodes it ten times faster (0.5 us, not 6).
_OPTIONS = orjson.OPT_NON_STR_KEYS


def _line(created: float, level: str, logger: str, event: str, fields: dict[str, Any]) -> str:
    head = _heads.get((level, logger, event))
    if head is None:
        head = _head(level, logger, event)
    if head is None or not _FIXED.isdisjoint(fields):
        return _merged_line(created, level, logger, event, fields)
    # The same bytes as encoding the merged entry, without building it: the fixed keys come
    # first and none of them is among the fields, so the fields' own object is the rest.
    try:
        rest = orjson.dumps(fields, default=str, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _merged_line(created, level, logger, event, fields)
    tail = "," + rest[1:] if len(rest) > 2 else "}"
    # Defence in depth: no field should hold a secret, but none may ever print one.
    return scrub_text('{"ts":"' + _iso(created) + '",' + head + tail)


def _merged_line(
    created: float, level: str, logger: str, event: str, fields: dict[str, Any]
) -> str:
    entry = {"ts": _iso(created), "level": level.lower(), "logger": logger, "event": event}
    entry.update(fields)
    try:
        text = orjson.dumps(entry, default=str, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        text = _ENCODER.encode(entry)
    return scrub_text(text)


# A field named like a fixed key overrides it (as `entry.update` does): the merged path.
_FIXED = frozenset(("ts", "level", "logger", "event"))
# `"level":...,"logger":...,"event":...` by (level, logger, event): call sites log a few fixed
# events, one line per request for the access log. Bounded: an event name made at run time
# (none is, today) would be encoded each time rather than kept.
_heads: dict[tuple[str, str, str], str] = {}


def _head(level: str, logger: str, event: str) -> str | None:
    try:
        encoded = orjson.dumps({"level": level.lower(), "logger": logger, "event": event})
    except orjson.JSONEncodeError:  # not a str subclass orjson takes: the merged path decides
        return None
    head = encoded.decode()[1:-1]
    if len(_heads) < 256:
        _heads[(level, logger, event)] = head
    return head


# The formatted second of the last timestamp: lines come many per second (one per request).
_second: tuple[int, str] = (-1, "")
# ".000Z" to ".999Z": the milliseconds' digits without a format call per line.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _iso(epoch: float) -> str:
    global _second
    whole = int(epoch)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return _second[1] + _MILLIS[int(epoch % 1 * 1000)]


def describe_exception(exc: BaseException | None) -> str:
    """`TypeName at file.py:123`: enough to find the bug, without the message's content."""
    if exc is None:
        return "unknown"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


# The handler `configure` installed: `log` writes its lines straight to it. A LogRecord (caller
# lookup, thread and process names, two passes through the logging machinery) costs more than
# the JSON line itself, and the gateway logs one line per request. On the event loop, the lines
# of one loop iteration go out in one write when it ends (stderr is line-buffered: a write per
# line is a system call per request, tens of microseconds when the log is a file on a disk the
# audit log is fsyncing); elsewhere each line is written at once.
_handler: logging.StreamHandler[Any] | None = None
_pending: list[str] = []
_pending_loop: asyncio.AbstractEventLoop | None = None


def log(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    log_fields(logger, level, event, fields)


def log_fields(
    logger: logging.Logger,
    level: int,
    event: str,
    fields: dict[str, Any],
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """`log` with the fields as one dict: the access log's line per request builds it as a
    literal, which costs less than passing a dozen keywords. A caller that knows it runs on
    `loop` says so: Python 3.11's `get_running_loop` makes a getpid system call each time."""
    global _pending_loop
    if not logger.isEnabledFor(level):
        return
    handler = _handler
    if handler is None or logger.handlers or not logger.name.startswith(LOGGER_NAME + "."):
        logger.log(level, event, extra={"fields": fields})
        return
    line = _line(time.time(), logging.getLevelName(level), logger.name, event, fields) + "\n"
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _write(line)
            return
    if loop is not _pending_loop:
        flush()  # lines a previous loop left (a test's loop, say) go first
        loop.call_soon(flush)
        _pending_loop = loop
    _pending.append(line)


def flush() -> None:
    """Write the lines buffered on the event loop (also run when the loop iteration ends)."""
    global _pending_loop
    _pending_loop = None
    if _pending:
        lines = "".join(_pending)
        _pending.clear()
        _write(lines)


def _write(text: str) -> None:
    handler = _handler
    if handler is None:
        return
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.stream.flush()
    except Exception:  # noqa: S110 - a broken log stream must not fail the request
        pass
    finally:
        handler.release()


def configure(level: str = "info", stream: Any = None) -> None:
    """Send packgate's logs as JSON lines to stderr (or `stream`); idempotent."""
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level.upper())
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    global _handler
    flush()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    _handler = handler


atexit.register(flush)
