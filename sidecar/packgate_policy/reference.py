"""The field reference of docs/policy-config.md, generated from the policy config models.

Why generated: a hand-written table of fields and defaults goes stale the first time someone adds
a field. The tables between the markers in docs/policy-config.md are `render()`; a test fails when
they differ, and `python -m packgate_policy.reference docs/policy-config.md` rewrites them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .schema import Schema, openapi_schema, walk

BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (python -m packgate_policy.reference) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"
REGENERATE = "python -m packgate_policy.reference docs/policy-config.md"


def render() -> str:
    """Markdown: one section per object of the config, one table row per field."""
    schema = openapi_schema()
    out: list[str] = []
    for path, node in walk(schema):
        if "properties" not in node:
            continue
        out.append(f"### `{path}`\n" if path else "### Top level\n")
        if node.get("description"):
            out.append(_cell(node["description"], table=False) + "\n")
        out.append("| field | type | default | description |")
        out.append("|---|---|---|---|")
        required = set(node.get("required", []))
        for name, child in node["properties"].items():
            default = "**required**" if name in required else _default(child)
            row = [
                f"`{name}`",
                _type(child, path, name),
                default,
                _cell(child.get("description", "")),
            ]
            out.append("| " + " | ".join(row) + " |")
        rules = [rule["message"] for rule in _rules(node) if "message" in rule]
        if rules:
            out.append("")
            out.extend(f"Rule: {rule}." for rule in rules)
        out.append("")
    return "\n".join(out)


def _type(node: Schema, parent: str, name: str) -> str:
    kind = node.get("type", "any")
    if "properties" in node:
        child = f"{parent}.{name}" if parent else name
        return f"object ([`{child}`](#{_anchor(child)}))"
    if kind == "array":
        items = node["items"]
        if "properties" in items:
            child = f"{parent}.{name}[]" if parent else f"{name}[]"
            text = f"list of objects ([`{child}`](#{_anchor(child)}))"
        else:
            text = f"list of {_type(items, parent, name)}"
        return text + _bounds(node, "minItems", "maxItems", " items")
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        values = node["additionalProperties"]
        bounds = _bounds(node, "minProperties", "maxProperties", " entries")
        if "properties" in values:
            child = f"{parent}.{name}{{}}" if parent else f"{name}{{}}"
            return f"map of name to object ([`{child}`](#{_anchor(child)})){bounds}"
        return f"map of name to {_type(values, parent, name)}{bounds}"
    if "enum" in node:
        return "one of " + ", ".join(f"`{value}`" for value in node["enum"])
    text = str(kind)
    if kind in ("integer", "number"):
        text += _bounds(node, "minimum", "maximum", "")
    elif kind == "string":
        text += _bounds(node, "minLength", "maxLength", " chars")
    return text


def _bounds(node: Schema, low: str, high: str, unit: str) -> str:
    if low in node and high in node:
        return f", {node[low]}..{node[high]}{unit}"
    if low in node:
        return f", at least {node[low]}{unit}"
    if high in node:
        return f", at most {node[high]}{unit}"
    return ""


def _default(node: Schema) -> str:
    if "default" not in node:
        return "unset"
    value = node["default"]
    if value in ([], {}):
        return "none"
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, dict):
        return "see fields"
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _rules(node: Schema) -> list[dict[str, str]]:
    found = list(node.get("x-kubernetes-validations", []))
    for child in node.get("properties", {}).values():
        if child.get("type") == "array" and "x-kubernetes-validations" in child:
            found.extend(child["x-kubernetes-validations"])
    return found


def _cell(text: str, *, table: bool = True) -> str:
    # `<EMAIL>` in a description would be read as an HTML tag and vanish.
    text = " ".join(text.split()).replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|") if table else text


def _anchor(title: str) -> str:
    """GitHub's heading anchor of "### `title`": lowercase, punctuation other than - and _ gone."""
    return "".join(ch for ch in title.lower() if ch.isalnum() or ch in "-_")


def splice(document: str) -> str:
    """`document` with the text between the markers replaced by `render()`."""
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    return document[:start] + "\n\n" + render() + "\n" + document[end:]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: {REGENERATE}", file=sys.stderr)
        return 2
    path = Path(args[0])
    path.write_text(splice(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
