"""`packgate crd`: print or write the PolicyPack CRD generated from the policy config models.

Why a command: the CRD is committed twice (crds/ and the Helm chart's crds/) and must equal what
the models generate. `--output` (repeatable) rewrites the files; `--check` fails when they
differ, for CI and `make`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .crd import REGENERATE, crd_yaml

EXIT_OK = 0
EXIT_STALE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        action="append",
        metavar="FILE",
        help="write the CRD to FILE instead of standard output (repeat for several files)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when any --output FILE differs from the generated CRD",
    )


def run(args: argparse.Namespace) -> int:
    text = crd_yaml()
    outputs: list[str] = args.output or []
    if args.check:
        if not outputs:
            print("packgate crd: --check needs at least one --output FILE", file=sys.stderr)
            return 2
        stale = [name for name in outputs if _read(Path(name)) != text]
        for name in stale:
            print(f"{name}: differs from the generated CRD; run: {REGENERATE}", file=sys.stderr)
        return EXIT_STALE if stale else EXIT_OK
    if not outputs:
        sys.stdout.write(text)
        return EXIT_OK
    for name in outputs:
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return EXIT_OK


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None
