"""Structured logs: one JSON object per line, the same whether written by `log` or by logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from packgate_sidecar import logs, scrub
from packgate_sidecar.logs import LOGGER_NAME, configure, get_logger, log


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger(LOGGER_NAME)
    saved = (root.level, root.propagate, list(root.handlers), logs._handler)
    out = io.StringIO()
    configure("info", out)
    yield out
    logs.flush()
    # As the tests that follow expect it (unconfigured, records propagating to pytest's capture).
    root.level, root.propagate, root.handlers, logs._handler = saved


def test_log_writes_one_json_line_with_its_fields(stream: io.StringIO) -> None:
    log(get_logger("access"), logging.INFO, "request", status=200, route="/v1/chat/completions")
    log(get_logger("access"), logging.DEBUG, "hidden", detail="below the level")
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == f"{LOGGER_NAME}.access"
    assert entry["event"] == "request" and entry["status"] == 200
    assert entry["ts"].endswith("Z")


def test_lines_from_log_and_from_the_logging_module_have_the_same_shape(
    stream: io.StringIO,
) -> None:
    logger = get_logger("t")
    log(logger, logging.WARNING, "direct", n=1)
    logger.warning("via logging", extra={"fields": {"n": 1}})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first.keys() == second.keys()
    assert {k: v for k, v in first.items() if k not in ("ts", "event")} == {
        k: v for k, v in second.items() if k not in ("ts", "event")
    }


def test_a_secret_in_a_field_is_scrubbed_from_the_line(stream: io.StringIO) -> None:
    secret = "sk-test-log-secret-0123456789"
    scrub.register([secret])
    log(get_logger("t"), logging.ERROR, "oops", detail=f"Bearer {secret}")
    assert secret not in stream.getvalue() and "[REDACTED]" in stream.getvalue()


async def test_on_the_event_loop_the_lines_of_one_iteration_go_out_together_in_order(
    stream: io.StringIO,
) -> None:
    for n in range(3):
        log(get_logger("access"), logging.INFO, "request", n=n)
    assert stream.getvalue() == ""  # still this loop iteration
    await asyncio.sleep(0)
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]
    log(get_logger("access"), logging.INFO, "request", n=3)
    logs.flush()  # what shutdown and exit do with the last iteration's lines
    assert json.loads(stream.getvalue().splitlines()[-1])["n"] == 3


async def test_a_line_logged_for_a_given_loop_waits_for_its_iteration_too(
    stream: io.StringIO,
) -> None:
    loop = asyncio.get_running_loop()
    logs.log_fields(get_logger("access"), logging.INFO, "request", {"n": 1}, loop)
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert json.loads(stream.getvalue())["n"] == 1


def test_any_field_value_still_makes_one_json_line(stream: io.StringIO) -> None:
    """Tuples, int keys, objects (as str) and integers beyond 64 bits, which the fast encoder
    refuses, all come out as one JSON line."""
    fields = {"attempts": [("t", "200")], "by_code": {404: 1}, "path": logging, "n": 10**30}
    log(get_logger("access"), logging.INFO, "odd", **fields)
    log(get_logger("access"), logging.INFO, "plain", text="déjà")
    odd, plain = (json.loads(line) for line in stream.getvalue().splitlines())
    assert odd["attempts"] == [["t", "200"]] and odd["by_code"] == {"404": 1}
    assert odd["path"] == str(logging) and odd["n"] == 10**30
    assert plain["text"] == "déjà"


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    fields=st.dictionaries(
        st.sampled_from(["ts", "level", "logger", "event", "status", "route", "n"]) | st.text(),
        _values,
        max_size=6,
    ),
    event=st.text(max_size=12),
    created=st.floats(min_value=0, max_value=4e9),
)
@example(fields={}, event="request", created=1.9999)
@example(fields={"n": 10**30}, event="e", created=0.0)
@example(fields={"ts": "x", "status": 200}, event="request", created=5.5)
def test_a_line_is_the_encoding_of_its_merged_entry(
    fields: dict[str, Any], event: str, created: float
) -> None:
    """The line is spliced from the fields' own encoding after fixed keys; it must be exactly
    the line of the merged entry (fixed keys first, a field of the same name in their place)."""
    for level in ("INFO", "WARNING"):
        assert logs._line(created, level, "packgate.access", event, fields) == (
            logs._merged_line(created, level, "packgate.access", event, fields)
        )
        assert logs._iso(created)[-5:] == f".{int(created % 1 * 1000):03d}Z"
