"""The policy config models as an OpenAPI v3 *structural* schema, with every default spelled out.

Why: the CRD (`crd.py`) and the field reference (`reference.py`) are generated from the same
pydantic models the sidecar loads, so neither can disagree with what is enforced. pydantic emits
JSON Schema 2020-12; kube-apiserver accepts only a structural subset of OpenAPI v3. This module
bridges the two and refuses (raises `SchemaError`) anything it cannot express structurally,
so a model change that would break the CRD fails the generator instead of `kubectl apply`:

- `$ref`s are inlined; the referring field's keywords (its description) win over the class's.
- `X | None` (anyOf with null) collapses to `X`: the apiserver prunes a null in a non-nullable
  field, which is what the models do with None (the key counts as absent).
- `additionalProperties: false` is dropped (structural schemas forbid it beside properties;
  the apiserver prunes unknown fields instead), `title` is dropped, `const` becomes `enum`.
- `patternProperties` (string-keyed maps with a key pattern) becomes `additionalProperties`
  and `propertyNames` is dropped: OpenAPI v3 cannot constrain map keys, so a model that wants
  its keys checked by the apiserver adds a CEL rule (see `CostAttribution.tags`).
- Fields with a default or a default factory carry `default` (JSON), for the docs and the CRD.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

from .models import PolicyConfig

Schema = dict[str, Any]


class SchemaError(ValueError):
    """The models use a construct that has no structural OpenAPI form."""


# Keywords that mean the same in OpenAPI v3 (as the apiserver reads it) and are copied as they are.
_PASSTHROUGH = frozenset(
    {
        "description",
        "type",
        "enum",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
        "default",
        "nullable",
    }
)
_DROPPED = frozenset({"title"})


def openapi_schema(model: type[BaseModel] = PolicyConfig) -> Schema:
    """`model` as a structural OpenAPI v3 schema; defaulted fields carry `default`."""
    raw = model.model_json_schema(by_alias=True)
    defs: dict[str, Schema] = raw.pop("$defs", {})
    _fill_defaults(model, raw, defs)
    return _convert(raw, defs, "")


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every node of a converted schema with its dotted path (`[]` for list items, `{}` for map
    values), parents before children, properties in declaration order."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


# --- defaults -------------------------------------------------------------------------------


def _fill_defaults(model: type[BaseModel], root: Schema, defs: dict[str, Schema]) -> None:
    """pydantic omits defaults made by a factory (lists, blocks); put every default in, as JSON."""
    for cls in _models_under(model):
        target = root if cls is model else defs.get(cls.__name__)
        if target is None:
            continue
        properties = target.get("properties", {})
        for name, info in cls.model_fields.items():
            if info.is_required():
                continue
            value = info.get_default(call_default_factory=True, validated_data={})
            node = properties.get(info.alias or name)
            if node is None or info.annotation is None:
                continue
            if value is None:
                node.pop("default", None)
            else:
                node["default"] = TypeAdapter(info.annotation).dump_python(
                    value, mode="json", by_alias=True, exclude_none=True
                )


def _models_under(model: type[BaseModel]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    pending: list[Any] = [model]
    while pending:
        current = pending.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            if current in found:
                continue
            found.append(current)
            pending.extend(info.annotation for info in current.model_fields.values())
        elif get_origin(current) in (list, dict, Union, UnionType, Annotated):
            pending.extend(get_args(current))
    return found


# --- conversion -----------------------------------------------------------------------------


def _convert(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    node = _resolve(node, defs, path)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key in _PASSTHROUGH:
            out[key] = copy.deepcopy(value)
        elif key == "const":
            out["enum"] = [value]
        elif key.startswith("x-kubernetes-"):
            out[key] = copy.deepcopy(value)
        elif key == "properties":
            out["properties"] = {
                name: _convert(child, defs, f"{path}.{name}" if path else name)
                for name, child in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is False:
                # A closed object: the apiserver prunes unknown keys and the models reject them.
                continue
            if not isinstance(value, dict):
                raise SchemaError(f"{path}: additionalProperties: {value!r} is not structural")
            out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")
        elif key == "patternProperties":
            if len(value) != 1 or "properties" in node:
                raise SchemaError(
                    f"{path}: patternProperties needs exactly one pattern, no properties"
                )
            (schema,) = value.values()
            out["additionalProperties"] = _convert(schema, defs, f"{path}{{}}")
        elif key == "propertyNames":
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            raise SchemaError(f"{path or '<root>'}: keyword {key!r} has no structural form")
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path or '<root>'}: no type")
    if out.get("default") is None:
        out.pop("default", None)
    return _ordered(out)


_FIRST = ("description", "type")
_LAST = ("x-kubernetes-validations", "required", "properties", "items", "additionalProperties")


def _ordered(node: Schema) -> Schema:
    """Keys in reading order (pydantic sorts them): what it is first, what it holds last."""
    keys = [k for k in _FIRST if k in node]
    keys += sorted(k for k in node if k not in _FIRST and k not in _LAST)
    keys += [k for k in _LAST if k in node]
    out = {k: node[k] for k in keys}
    if "x-kubernetes-validations" in out:
        out["x-kubernetes-validations"] = [
            {k: rule[k] for k in ("rule", "message", "messageExpression") if k in rule}
            | {k: v for k, v in rule.items() if k not in ("rule", "message", "messageExpression")}
            for rule in out["x-kubernetes-validations"]
        ]
    return out


def _resolve(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    """Inline a $ref and collapse `X | None`; the outer node's keywords win over the inner's."""
    node = dict(node)
    inner: Schema | None = None
    if "$ref" in node:
        name = str(node.pop("$ref")).rsplit("/", 1)[-1]
        if name not in defs:
            raise SchemaError(f"{path}: unknown $ref {name}")
        inner = defs[name]
    elif "anyOf" in node:
        options = [option for option in node.pop("anyOf") if option != {"type": "null"}]
        if len(options) != 1:
            raise SchemaError(f"{path}: a union of {len(options)} types is not structural")
        inner = options[0]
    if inner is None:
        return node
    merged = {**_resolve(inner, defs, path), **node}
    rules = _rules(inner) + _rules(node)
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _rules(node: Schema) -> list[Any]:
    return list(node.get("x-kubernetes-validations", []))
