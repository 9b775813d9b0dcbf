"""Lint one file's text: every problem a policy config or PolicyPack manifest has, with lines.

Why it exists apart from `loading`: a file on a user's disk is not always a bare policy config.
People lint what they `kubectl apply`, so a PolicyPack manifest (or a stream of them) is checked
through its `spec`, with paths and line numbers of the file as written. This module is pure
(text in, result out); `lint_cli` does the reading and printing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .loading import NOT_IN_CHAIN, ConfigError, ConfigIssue, load_mapping, parse_yaml_documents
from .models import POLICY_KINDS

API_VERSION = "packgate.dev/v1alpha1"
KIND = "PolicyPack"
_MANIFEST_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Lines = Mapping[tuple[str | int, ...], int]
_Report = Callable[[str, str, tuple[str | int, ...]], None]


@dataclass(frozen=True)
class DocumentResult:
    """One YAML document of the file: a bare policy config or one PolicyPack manifest."""

    index: int
    line: int | None
    kind: Literal["config", "PolicyPack"]
    issues: list[ConfigIssue] = field(default_factory=list)
    name: str | None = None
    pack: str | None = None
    config_hash: str | None = None

    @property
    def valid(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)


@dataclass(frozen=True)
class LintResult:
    source: str
    documents: list[DocumentResult] = field(default_factory=list)
    # Problems of the file as a whole (unreadable, empty, YAML syntax), before any document.
    file_issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def issues(self) -> list[ConfigIssue]:
        return self.file_issues + [issue for doc in self.documents for issue in doc.issues]

    @property
    def valid(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)


def lint_text(text: str, source: str = "<config>") -> LintResult:
    """Every error and warning of one file's text; never raises for bad input."""
    try:
        documents = parse_yaml_documents(text, source)
    except ConfigError as exc:
        return LintResult(source, file_issues=exc.issues)
    if len(documents) > 1 and not all(_is_manifest(data) for data, _ in documents):
        line = documents[1][1].get(())
        message = (
            f"found {len(documents)} YAML documents; put one policy config per file "
            f"(only a file of {KIND} manifests may hold several)"
        )
        return LintResult(source, file_issues=[ConfigIssue("", message, line)])
    results = []
    for index, (data, lines) in enumerate(documents, start=1):
        lint = _lint_manifest if _is_manifest(data) else _lint_config
        result = lint(index, data, lines, source)
        # In file order, as an editor shows them; pydantic reports in model field order.
        ordered = sorted(result.issues, key=lambda issue: issue.line or 0)
        results.append(dataclasses.replace(result, issues=ordered))
    return LintResult(source, results)


def _is_manifest(data: object) -> bool:
    return isinstance(data, Mapping) and ("apiVersion" in data or "kind" in data)


def _lint_config(index: int, data: Any, lines: Lines, source: str) -> DocumentResult:
    try:
        loaded = load_mapping(data, lines, source)
    except ConfigError as exc:
        issues = exc.issues + _unchained_blocks(data, lines)
        return DocumentResult(index, lines.get(()), "config", issues)
    return DocumentResult(
        index,
        lines.get(()),
        "config",
        loaded.warnings,
        pack=loaded.config.pack.name,
        config_hash=loaded.hash,
    )


def _lint_manifest(
    index: int, data: Mapping[str, Any], lines: Lines, source: str
) -> DocumentResult:
    line = lines.get(())
    issues: list[ConfigIssue] = []

    def error(path: str, message: str, at: tuple[str | int, ...]) -> None:
        issues.append(ConfigIssue(path, message, lines.get(at, line)))

    kind = data.get("kind")
    if kind != KIND:
        # Another kind of object: its spec means something else, so say so and stop.
        error("kind", f"expected {KIND}, got {_quoted(kind)}", ("kind",))
        return DocumentResult(index, line, "PolicyPack", issues)
    if data.get("apiVersion") != API_VERSION:
        error(
            "apiVersion",
            f"expected {API_VERSION}, got {_quoted(data.get('apiVersion'))}",
            ("apiVersion",),
        )
    for key in data:
        if key not in _MANIFEST_KEYS:
            error(str(key), f"unknown key; expected one of {', '.join(_MANIFEST_KEYS)}", (key,))
    name = _check_metadata(data.get("metadata"), error)
    if "spec" not in data:
        error("spec", "required key is missing; the spec is the policy config", ())
        return DocumentResult(index, line, "PolicyPack", issues, name=name)
    spec_lines = {path[1:]: n for path, n in lines.items() if path[:1] == ("spec",)}
    try:
        loaded = load_mapping(data["spec"], spec_lines, source)
    except ConfigError as exc:
        found = exc.issues + _unchained_blocks(data["spec"], spec_lines)
        issues.extend(_under_spec(issue) for issue in found)
        return DocumentResult(index, line, "PolicyPack", issues, name=name)
    issues.extend(_under_spec(issue) for issue in loaded.warnings)
    return DocumentResult(
        index,
        line,
        "PolicyPack",
        issues,
        name=name,
        pack=loaded.config.pack.name,
        config_hash=loaded.hash,
    )


def _unchained_blocks(data: object, lines: Lines) -> list[ConfigIssue]:
    """The not-in-chain warnings of a config that failed to load, read from the raw data, so
    one run of lint shows them next to the errors (a loaded config gets them from `loading`)."""
    if not isinstance(data, Mapping):
        return []
    blocks, policies = data.get("policy"), data.get("policies")
    chain = policies.get("chain") if isinstance(policies, Mapping) else None
    if not isinstance(blocks, Mapping) or not isinstance(chain, list | None):
        return []
    return [
        ConfigIssue(f"policy.{kind}", NOT_IN_CHAIN, lines.get(("policy", kind)), "warning")
        for kind in blocks
        if kind in POLICY_KINDS and kind not in (chain or [])
    ]


def _check_metadata(metadata: object, error: _Report) -> str | None:
    if not isinstance(metadata, Mapping):
        error("metadata", "required mapping with a name is missing", ("metadata",))
        return None
    name = metadata.get("name")
    if name is None:
        if "generateName" not in metadata:
            error("metadata.name", "required key is missing", ("metadata",))
        return None
    if not isinstance(name, str) or len(name) > 253 or not _OBJECT_NAME.match(name):
        error(
            "metadata.name",
            f"{_quoted(name)} must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
            ("metadata", "name"),
        )
        return None
    return name


def _under_spec(issue: ConfigIssue) -> ConfigIssue:
    path = f"spec.{issue.path}" if issue.path else "spec"
    return ConfigIssue(path, issue.message, issue.line, issue.severity)


def _quoted(value: object) -> str:
    return "nothing" if value is None else f'"{value}"'
