"""Request and response bodies of the prompt-injection second-opinion classifier.

Why this exists: the `prompt-injection` policy can ask an in-cluster classifier (a Prompt Guard or
DeBERTa model behind the user's own model server) about texts its local model is unsure of. Two
wire shapes are supported, and this module is the whole of what each means, as pure functions so
that a malformed answer is an error with a clear message and never a silently wrong score:

- `json` (packgate's own): `POST {"texts": ["...", ...]}` answered by `{"scores": [0.97, 0.01]}`,
  one number in [0, 1] per text, in order; higher means more likely an injection.
- `kserve-v2` (the KServe / Open Inference Protocol v2 `infer` call): one BYTES input tensor of
  shape [n] named `input_name`; the answer's output tensor (`output_name`, or the first) holds
  either n scores (shape [n]) or n rows of class probabilities (shape [n, k], row-major, flat
  `data`) of which column `label_index` is the injection class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["ProtocolError", "parse_scores", "request_body"]

Protocol = Literal["json", "kserve-v2"]


class ProtocolError(ValueError):
    """The classifier answered, but not in the configured shape."""


def request_body(protocol: Protocol, texts: Sequence[str], input_name: str = "text") -> Any:
    """The JSON document to POST for `texts`."""
    if protocol == "json":
        return {"texts": list(texts)}
    return {
        "inputs": [
            {"name": input_name, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}
        ]
    }


def parse_scores(
    protocol: Protocol,
    body: Any,
    count: int,
    output_name: str | None = None,
    label_index: int = 1,
) -> list[float]:
    """One score in [0, 1] per text sent, in order, from the decoded JSON `body`."""
    if not isinstance(body, dict):
        raise ProtocolError(f"expected a JSON object, got {type(body).__name__}")
    if protocol == "json":
        scores = body.get("scores")
        if not isinstance(scores, list):
            raise ProtocolError('expected "scores": a list of numbers')
        if len(scores) != count:
            raise ProtocolError(f"expected {count} scores, got {len(scores)}")
        return [_score(value, f"scores[{i}]") for i, value in enumerate(scores)]
    return _kserve_scores(body, count, output_name, label_index)


def _kserve_scores(
    body: dict[str, Any], count: int, output_name: str | None, label_index: int
) -> list[float]:
    outputs = body.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError('expected "outputs": a non-empty list of tensors')
    if output_name is None:
        tensor = outputs[0]
    else:
        named = [o for o in outputs if isinstance(o, dict) and o.get("name") == output_name]
        if not named:
            raise ProtocolError(f'no output tensor named "{output_name}"')
        tensor = named[0]
    if not isinstance(tensor, dict):
        raise ProtocolError("an output tensor is not an object")
    shape, data = tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise ProtocolError('output "shape" must be a list of integers')
    if not isinstance(data, list):
        raise ProtocolError('output "data" must be a list')
    if shape == [count] or shape == [count, 1]:
        columns, column = 1, 0
    elif len(shape) == 2 and shape[0] == count:
        columns, column = shape[1], label_index
        if column >= columns:
            raise ProtocolError(f"label_index {label_index} is outside an output of shape {shape}")
    else:
        raise ProtocolError(f"expected an output of shape [{count}] or [{count}, k], got {shape}")
    if len(data) != count * columns:
        raise ProtocolError(f"output data holds {len(data)} values for shape {shape}")
    return [
        _score(data[i * columns + column], f"data[{i * columns + column}]") for i in range(count)
    ]


def _score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    score = float(value)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ProtocolError(f"{where}: score {score} is outside [0, 1]")
    return score
