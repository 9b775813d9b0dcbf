"""The second-opinion classifier's wire shapes: what is sent, what is accepted, what is refused."""

from __future__ import annotations

import pytest
from packgate_sidecar.detect.classifier_protocol import ProtocolError, parse_scores, request_body


def test_json_shape_round_trip() -> None:
    assert request_body("json", ["a", "b"]) == {"texts": ["a", "b"]}
    assert parse_scores("json", {"scores": [0.9, 0]}, 2) == [0.9, 0.0]


def test_kserve_request_is_one_bytes_tensor() -> None:
    assert request_body("kserve-v2", ["a", "b"], "prompt") == {
        "inputs": [{"name": "prompt", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]
    }


def test_kserve_class_probabilities_are_read_by_label_column() -> None:
    body = {"outputs": [{"name": "p", "shape": [2, 3], "data": [0.1, 0.7, 0.2, 0.5, 0.1, 0.4]}]}
    assert parse_scores("kserve-v2", body, 2, label_index=1) == [0.7, 0.1]
    assert parse_scores("kserve-v2", body, 2, label_index=2) == [0.2, 0.4]


def test_kserve_named_output_and_flat_scores() -> None:
    body = {
        "outputs": [
            {"name": "logits", "shape": [1, 2], "data": [3.0, -2.0]},
            {"name": "score", "shape": [1], "data": [0.25]},
        ]
    }
    assert parse_scores("kserve-v2", body, 1, output_name="score") == [0.25]


@pytest.mark.parametrize(
    ("protocol", "body", "message"),
    [
        ("json", [0.5], "JSON object"),
        ("json", {"score": [0.5]}, '"scores"'),
        ("json", {"scores": [0.5, 0.5]}, "expected 1 scores, got 2"),
        ("json", {"scores": ["0.5"]}, "scores[0]: expected a number"),
        ("json", {"scores": [True]}, "expected a number"),
        ("json", {"scores": [1.5]}, "outside [0, 1]"),
        ("json", {"scores": [float("nan")]}, "outside [0, 1]"),
        ("kserve-v2", {"outputs": []}, "non-empty"),
        ("kserve-v2", {"outputs": [{"shape": [2], "data": [0.1, 0.2]}]}, "shape [1]"),
        ("kserve-v2", {"outputs": [{"shape": [1, 2], "data": [0.1]}]}, "holds 1 values"),
        ("kserve-v2", {"outputs": [{"shape": [1, 1], "data": [3.0]}]}, "outside [0, 1]"),
    ],
)
def test_malformed_answers_are_errors_not_scores(protocol: str, body: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scores(protocol, body, 1)  # type: ignore[arg-type]


def test_label_index_outside_the_output_is_an_error() -> None:
    body = {"outputs": [{"shape": [1, 2], "data": [0.4, 0.6]}]}
    with pytest.raises(ProtocolError, match="label_index 5"):
        parse_scores("kserve-v2", body, 1, label_index=5)
