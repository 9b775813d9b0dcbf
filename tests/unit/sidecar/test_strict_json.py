"""strict_json: one unambiguous reading of a body, or a JsonRefused naming the problem."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packgate_sidecar import strict_json
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


def test_dumps_never_writes_nan_a_rewrite_cannot_smuggle_one_in() -> None:
    # A request body cannot hold one (loads refuses them); a provider's answer parsed leniently
    # may, and is still written as strict JSON.
    for value in (float("nan"), float("inf"), -float("inf")):
        assert loads(dumps({"t": value})) == {"t": None}


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1.5e309"])
def test_a_number_too_large_for_a_double_is_refused(number: bytes) -> None:
    with pytest.raises(JsonRefused) as caught:
        loads(b'{"temperature":' + number + b"}")
    assert caught.value.code == "invalid_json_number"
    assert "too large" in caught.value.message


def test_dumps_writes_what_the_fast_encoder_refuses_as_the_standard_one_does() -> None:
    huge = 10**30  # beyond 64 bits: orjson refuses it, the standard encoder writes it
    assert (
        dumps({"seed": huge, "s": "é"})
        == '{"seed":1000000000000000000000000000000,"s":"é"}'.encode()
    )
    with pytest.raises(UnicodeEncodeError):
        dumps({"s": "\ud800"})  # a lone surrogate cannot be UTF-8: refused as before


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",))), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_dumps_is_read_back_as_the_same_value_by_the_standard_and_the_strict_parser(
    value: object,
) -> None:
    written = dumps(value)
    assert json.loads(written) == value
    assert loads(written) == value


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a:":1,"a:":2}',
        b'{"a":"x:y","a":"z"}',
        b'{"k":{"a":"::","b":1},"k":0}',
        b'{"\\u003a":1,":":2}',  # the same key, once escaped
        b'{"\\u003A":1,"\\u003a":2}',
        b'[{"a":"\\u003a"},{"b":1,"b":":"}]',
    ],
)
def test_a_duplicate_key_is_found_whatever_colons_the_strings_hold(raw: bytes) -> None:
    with pytest.raises(JsonRefused) as caught:
        loads(raw)
    assert caught.value.code == "duplicate_key"


def test_colons_in_keys_and_strings_and_wide_integers_read_as_the_standard_library_reads() -> None:
    raw = b'{"a:b":"c::d","\\u003a":[":",{"t":"1:2"}],"n":123456789012345678901234567890}'
    value = loads(raw)
    assert value == json.loads(raw)
    assert value["n"] == 123456789012345678901234567890
    assert type(value["n"]) is int


# Raw JSON text with object members written one by one, so an object may repeat a key; keys
# and strings draw on colons, escapes and non-ASCII text, numbers on wide integers.
_keys = st.sampled_from(
    ["a", "b", ":", "a:", "é", "\\u003a", "\\u00e9", 'x\\"y', "\\u0061", "\\/", "/", ""]
)
_scalars = st.one_of(
    st.sampled_from(
        [
            "null",
            "true",
            "1",
            "-0",
            "2.5e3",
            "18446744073709551616",
            "-9223372036854775809",
            "9223372036854775807",
            "1234567890123456789.5",
            "1e400",
            '":"',
            '"\\ud83d\\ude00"',
            '"\\ud800"',
            '"\\udc00x"',
            '"\\\\ud800"',
            '"a\\"b\\\\"',
            '"\\u"',
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(st.sampled_from(list(':ab\\u003a é"\\\\'))).map(json.dumps),
    _keys.map(lambda key: f'"{key}"'),
)
raw_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(_keys, inner), max_size=4).map(
            lambda members: "{" + ",".join(f'"{k}":{v}' for k, v in members) + "}"
        )
        # JSON whitespace between tokens, and deep nesting around the limit.
        | st.tuples(_keys, inner).map(lambda m: '{ "' + m[0] + '" :\t' + m[1] + "\n}")
        | st.tuples(st.integers(MAX_DEPTH - 2, MAX_DEPTH + 1), inner).map(
            lambda d: "[" * d[0] + d[1] + "]" * d[0]
        )
    ),
    max_leaves=12,
)


def _reading(read: Callable[[], object]) -> tuple[str, object]:
    try:
        return ("value", read())
    except JsonRefused as refused:
        return (refused.code, None)


@settings(max_examples=1000, deadline=None)
@given(raw_documents)
def test_the_fast_reading_agrees_with_the_standard_library_with_hooks(text: str) -> None:
    raw = text.encode()
    assert _reading(lambda: loads(raw)) == _reading(lambda: strict_json._strict(raw, "it"))


def test_the_compiled_proof_is_the_one_in_use() -> None:
    assert strict_json._quick is strict_json._quick_compiled


@given(raw_documents)
def test_the_python_proof_agrees_with_the_standard_library_with_hooks(text: str) -> None:
    """The fallback used where the extension is missing (`_quick_ref`) reads the same way."""
    raw = text.encode()
    quick = strict_json._quick_ref(raw)
    if quick is not strict_json._UNSURE:
        assert _reading(lambda: quick) == _reading(lambda: strict_json._strict(raw, "it"))


def test_objects_with_many_keys_are_read_right_either_way() -> None:
    many = {f"k{n}": n for n in range(300)}
    assert loads(json.dumps(many).encode()) == many
    doubled = json.dumps(many)[:-1] + ', "k299": 1}'
    with pytest.raises(JsonRefused) as caught:
        loads(doubled.encode())
    assert caught.value.code == "duplicate_key"
    assert loads(b'{"a":"x\\"y","a\\"":1}') == {"a": 'x"y', 'a"': 1}
