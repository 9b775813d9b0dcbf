"""Load a policy config from YAML text, a file or a mapping, with errors a person can act on.

Pydantic knows *what* is wrong; this module says *where*: every problem becomes a `ConfigIssue`
with a dotted path (`policy.pii-detector.entities[2]`), a plain message and, when the input was
YAML, the line it came from. The sidecar, the operator and `packgate policy lint` all load through
here, so the same input gets the same words everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .messages import Loc, message_for, shown
from .models import POLICY_KINDS, PolicyConfig

Path_ = Loc


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str
    line: int | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message}"


class ConfigError(ValueError):
    """A config that must not be used; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue], source: str = "<config>") -> None:
        self.issues = issues
        self.source = source
        super().__init__("; ".join(str(issue) for issue in issues))


@dataclass(frozen=True)
class LoadedConfig:
    config: PolicyConfig
    hash: str
    warnings: list[ConfigIssue] = field(default_factory=list)


# --- YAML with line numbers -----------------------------------------------------------------


def parse_yaml(text: str, source: str = "<config>") -> tuple[Any, dict[Path_, int]]:
    """Parse exactly one YAML document; return it and a map from path to 1-based line."""
    documents = parse_yaml_documents(text, source)
    if len(documents) > 1:
        second_line = documents[1][1].get(())
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    f"found {len(documents)} YAML documents; put one policy config per file",
                    second_line,
                )
            ],
            source,
        )
    return documents[0]


def parse_yaml_documents(text: str, source: str = "<config>") -> list[tuple[Any, dict[Path_, int]]]:
    """Parse every non-empty YAML document, each with its path -> line map (lines of the file).

    Empty documents (a trailing `---`) are skipped, as kubectl skips them; a stream with none
    left is an error, so callers always get at least one document.
    """
    loader = yaml.SafeLoader(text)
    documents: list[tuple[Any, dict[Path_, int]]] = []
    try:
        nodes: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None and not _is_empty(node):
                nodes.append(node)
        if not nodes:
            raise ConfigError(
                [ConfigIssue("", "the file is empty; expected a policy config")], source
            )
        for node in nodes:
            lines: dict[Path_, int] = {}
            _index_lines(node, (), lines, source, set())
            documents.append((loader.construct_document(node), lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        kind = (
            "YAML error"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        message = f"{kind}: {exc.problem or exc.context}"
        start = exc.context_mark.line + 1 if exc.context_mark else line
        if exc.problem and exc.context and start != line:
            # "expected ']'" is noticed lines after the '[' that was never closed: say where.
            message += f" ({exc.context} started on line {start})"
        if "\\t" in message:
            message += " (YAML does not allow tabs for indentation; use spaces)"
        raise ConfigError([ConfigIssue("", message, line)], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"YAML error: {exc}")], source) from None
    finally:
        loader.dispose()
    return documents


def _is_empty(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and node.value == ""


# Aliases let a tiny file expand into a huge tree ("billion laughs"); stop indexing long before.
_MAX_NODES = 100_000


def _index_lines(
    node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str, active: set[int]
) -> None:
    if id(node) in active:
        raise ConfigError(
            [ConfigIssue(_format_path(path), "recursive YAML alias", node.start_mark.line + 1)],
            source,
        )
    if len(lines) >= _MAX_NODES:
        raise ConfigError(
            [ConfigIssue("", f"the document expands to more than {_MAX_NODES} values")], source
        )
    lines[path] = node.start_mark.line + 1
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                issue = ConfigIssue(
                    _format_path((*path, key)), "duplicate key", key_node.start_mark.line + 1
                )
                raise ConfigError([issue], source)
            seen.add(key)
            _index_lines(value_node, (*path, key), lines, source, active)
            # A problem with a whole block is reported where its key is, not at its first child.
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, source, active)
    active.discard(id(node))


# --- validation -----------------------------------------------------------------------------


def load_mapping(
    data: object, lines: Mapping[Path_, int] | None = None, source: str = "<config>"
) -> LoadedConfig:
    """Validate a parsed document (a dict, e.g. a PolicyPack's spec) into a config."""
    lines = lines or {}
    if not isinstance(data, Mapping):
        kind = "nothing" if data is None else shown(data)
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    f"expected a mapping with pack, providers, policies; got {kind}",
                    lines.get(()),
                )
            ],
            source,
        )
    try:
        config = PolicyConfig.model_validate(data)
    except ValidationError as exc:
        issues = [_issue_from(error, lines) for error in exc.errors()]
        raise ConfigError(issues, source) from None
    return LoadedConfig(config, config_hash(config), _warnings(config, lines))


def load_text(text: str, source: str = "<config>") -> LoadedConfig:
    data, lines = parse_yaml(text, source)
    return load_mapping(data, lines, source)


def load_file(path: str | Path) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {exc}")], str(path)) from None
    return load_text(text, str(path))


NOT_IN_CHAIN = "configured but not listed in policies.chain, so it does not run"


def _warnings(config: PolicyConfig, lines: Mapping[Path_, int]) -> list[ConfigIssue]:
    warnings = []
    for kind in POLICY_KINDS:
        if (
            getattr(config.policy, kind.replace("-", "_")) is not None
            and kind not in config.policies.chain
        ):
            warnings.append(
                ConfigIssue(
                    f"policy.{kind}",
                    NOT_IN_CHAIN,
                    lines.get(("policy", kind)),
                    "warning",
                )
            )
    if not config.pack.enabled:
        warnings.append(
            ConfigIssue(
                "pack.enabled",
                "the pack is disabled: the gateway refuses all traffic with 503",
                lines.get(("pack", "enabled")),
                "warning",
            )
        )
    return warnings


def _issue_from(error: ErrorDetails, lines: Mapping[Path_, int]) -> ConfigIssue:
    loc = tuple(error["loc"])
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-1]
    path = _format_path(loc) + (" (key)" if is_key else "")
    return ConfigIssue(path, message_for(error, loc), _nearest_line(loc, lines))


def _format_path(loc: Path_) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _nearest_line(loc: Path_, lines: Mapping[Path_, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# --- identity -------------------------------------------------------------------------------


def canonical_dict(config: PolicyConfig) -> dict[str, Any]:
    """The config as plain data with canonical keys: what a ConfigMap or a round trip holds."""
    return config.model_dump(mode="json", by_alias=True, exclude_none=True)


def config_hash(config: PolicyConfig) -> str:
    """A stable identity of the effective config: equal configs hash equal, defaults included."""
    body = json.dumps(
        config.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def dump_yaml(config: PolicyConfig) -> str:
    return yaml.safe_dump(canonical_dict(config), sort_keys=False)
