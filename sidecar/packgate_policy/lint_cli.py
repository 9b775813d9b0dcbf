"""`packgate policy lint FILE...`: check policy configs and PolicyPack manifests before they ship.

Why a command: a config error found at `kubectl apply` or, worse, at sidecar reload is found
late. This prints one compiler-style line per problem (`FILE:LINE: error: PATH: MESSAGE`) so
editors and CI can jump to it, or `--json` for tools. Exit status: 0 when every file is valid
(warnings allowed), 2 when any is not. It imports neither aiohttp nor kopf, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .lint import LintResult, lint_text
from .loading import ConfigIssue

EXIT_OK = 0
EXIT_INVALID = 2
STDIN = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="policy config or PolicyPack manifest (YAML); '-' reads standard input",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document describing every file"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="do not print the summary on standard error"
    )


def run(args: argparse.Namespace) -> int:
    results = [_lint_one(name) for name in args.files]
    if args.json:
        print(json.dumps(to_json(results), indent=2))
    else:
        for result in results:
            for issue in result.issues:
                print(format_issue(result.source, issue))
    if not args.quiet:
        print(_summary(results), file=sys.stderr)
    return EXIT_OK if all(result.valid for result in results) else EXIT_INVALID


def _lint_one(name: str) -> LintResult:
    if name == STDIN:
        return lint_text(sys.stdin.read(), "<stdin>")
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        return LintResult(name, file_issues=[ConfigIssue("", f"cannot read the file: {reason}")])
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return LintResult(name, file_issues=[ConfigIssue("", f"cannot read the file: {reason}")])
    return lint_text(text, name)


def format_issue(source: str, issue: ConfigIssue) -> str:
    where = f"{source}:{issue.line}" if issue.line is not None else source
    path = f"{issue.path}: " if issue.path else ""
    return f"{where}: {issue.severity}: {path}{issue.message}"


def to_json(results: list[LintResult]) -> dict[str, Any]:
    return {
        "valid": all(result.valid for result in results),
        "files": [
            {
                "file": result.source,
                "valid": result.valid,
                "documents": [
                    {
                        "document": doc.index,
                        "line": doc.line,
                        "kind": doc.kind,
                        "name": doc.name,
                        "pack": doc.pack,
                        "valid": doc.valid,
                        "config_hash": doc.config_hash,
                    }
                    for doc in result.documents
                ],
                "issues": [_issue_json(issue, None) for issue in result.file_issues]
                + [
                    _issue_json(issue, doc.index)
                    for doc in result.documents
                    for issue in doc.issues
                ],
            }
            for result in results
        ],
    }


def _issue_json(issue: ConfigIssue, document: int | None) -> dict[str, Any]:
    return {
        "document": document,
        "line": issue.line,
        "severity": issue.severity,
        "path": issue.path,
        "message": issue.message,
    }


def _summary(results: list[LintResult]) -> str:
    issues = [issue for result in results for issue in result.issues]
    errors = sum(issue.severity == "error" for issue in issues)
    warnings = len(issues) - errors
    invalid = sum(not result.valid for result in results)
    files = _plural(len(results), "file")
    counts = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if invalid:
        return f"packgate policy lint: {files} checked, {invalid} invalid ({counts})"
    return f"packgate policy lint: {files} checked, all valid ({counts})"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
