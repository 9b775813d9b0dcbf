"""The `packgate` command line: one entry point, subcommands loaded on demand.

Why lazy: `packgate policy lint` must start fast and must not import aiohttp or kopf, while
`packgate operator run` needs kopf. Each subcommand lives in its own module and exposes
`add_arguments(parser)` and `run(args) -> int`; this table is the only place that lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol, cast

# (group, command, module, help). A group of None makes a top-level command.
COMMANDS: list[tuple[str | None, str, str, str]] = [
    ("gateway", "run", "packgate_sidecar.run", "run the policy-enforcing OpenAI-compatible proxy"),
    ("policy", "lint", "packgate_policy.lint_cli", "validate policy config files"),
    (None, "crd", "packgate_policy.crd_cli", "print the PolicyPack CustomResourceDefinition"),
    (None, "scan", "packgate_sidecar.scan_cli", "run a policy config over JSON lines of text"),
    ("audit", "verify", "packgate_sidecar.audit.verify_cli", "verify a tamper-evident audit log"),
    ("audit", "query", "packgate_sidecar.audit.query_cli", "search the audit collector's records"),
    ("audit", "collector", "packgate_operator.collector.run", "run the audit collector"),
    ("operator", "run", "packgate_operator.run", "run the operator (kopf) and its webhook"),
    ("quality", "pii", "packgate_quality.pii_cli", "measure PII detection quality"),
    ("quality", "injection", "packgate_quality.injection_cli", "measure injection quality"),
]


class _Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


class _Incomplete(Exception):
    """The command line names no complete command yet."""


class _ProbeParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Incomplete(message)


def _build_parser(
    cls: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser = cls(prog="packgate", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for group, name, module, help_text in COMMANDS:
        if group is None:
            sub = top.add_parser(name, help=help_text, description=help_text)
        else:
            if group not in groups:
                gp = top.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest="subcommand", required=True, metavar="SUB")
            sub = groups[group].add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    # Parse once to find the command, then let its module add its own arguments and parse again.
    # --help is held back from the first pass so that it lists the command's own arguments.
    probe = [arg for arg in argv if arg not in ("-h", "--help")]
    try:
        known, _ = _build_parser(_ProbeParser).parse_known_args(probe)
    except _Incomplete:
        parser.parse_args(argv)  # prints the help or the usage error of the incomplete line
        return 2
    command = cast(_Command, importlib.import_module(known._module))
    sub = _find_subparser(parser, known)
    command.add_arguments(sub)
    args = parser.parse_args(argv)
    return command.run(args)


def _find_subparser(
    parser: argparse.ArgumentParser, known: argparse.Namespace
) -> argparse.ArgumentParser:
    path = [known.command] + ([known.subcommand] if getattr(known, "subcommand", None) else [])
    current = parser
    for name in path:
        action = next(a for a in current._actions if isinstance(a, argparse._SubParsersAction))
        current = action.choices[name]
    return current


if __name__ == "__main__":
    sys.exit(main())
