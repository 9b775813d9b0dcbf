"""strict_json: one unambiguous reading of a body, or a JsonRefused naming the problem."""

from __future__ import annotations

import json

import pytest
from packgate_sidecar.strict_json import MAX_DEPTH, JsonRefused, dumps, loads


def test_a_plain_body_round_trips_to_compact_utf8() -> None:
    raw = '{"a": [1, 2.5, "é\\u00e9", {"b": null}], "c": true}'.encode()
    value = loads(raw)
    assert value == json.loads(raw)
    assert dumps(value) == '{"a":[1,2.5,"éé",{"b":null}],"c":true}'.encode()


@pytest.mark.parametrize(
    ("raw", "code", "named"),
    [
        (b'{"a":1,"a":2}', "duplicate_key", "'a'"),
        (b'{"x":[{"k":1,"k":1}]}', "duplicate_key", "'k'"),
        (b'{"t":NaN}', "invalid_json_number", "NaN"),
        (b'{"t":-Infinity}', "invalid_json_number", "Infinity"),
        (b'{"s":"\\ud83d"}', "lone_surrogate", "s:"),
        (b'{"\\udc00":1}', "lone_surrogate", "a key"),
        (b'{"s":"\\uDBFF"}', "lone_surrogate", "s:"),
        # Brackets inside strings count too: the walk still runs and still finds the problem.
        (b'{"t":"' + b"[" * 100 + b'","s":"\\udfff"}', "lone_surrogate", "s:"),
        (b'{"s":"\xff"}', "invalid_encoding", "offset 6"),
        (b'{"s":', "invalid_json", "not valid JSON"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "json_too_deep", str(MAX_DEPTH)),
        (b"[" * 50_000, "json_too_deep", str(MAX_DEPTH)),
    ],
)
def test_ambiguous_bodies_are_refused_with_a_named_problem(
    raw: bytes, code: str, named: str
) -> None:
    with pytest.raises(JsonRefused) as caught:
        loads(raw)
    assert caught.value.code == code
    assert named in caught.value.message


def test_nesting_up_to_the_limit_and_valid_surrogate_pairs_are_fine() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    assert loads(b'{"e":"\\ud83d\\ude00"}') == {"e": "\U0001f600"}


def test_a_wide_body_with_many_brackets_is_still_checked_and_accepted() -> None:
    wide = {"xs": [[1], [2]] * MAX_DEPTH, "text": "[{" * MAX_DEPTH}
    assert loads(json.dumps(wide).encode()) == wide


def test_dumps_refuses_nan_a_rewrite_cannot_smuggle_one_in() -> None:
    with pytest.raises(ValueError):
        dumps({"t": float("nan")})
