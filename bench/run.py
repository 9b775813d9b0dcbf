"""`make bench`: run every measurement, print one table, write it as JSON.

Why one entry point: the issue asks for numbers measured side by side in one run on one machine
(ratios hold where absolute numbers drift), with the targets judged against that same run. Each
measurement lives in its own module and adds rows to one report; a measurement whose
prerequisite is missing (a policy not registered yet, an operator that does not start, a peer
that cannot be installed) becomes a row marked pending or skipped with the reason, never a
crash and never a silently missing line.

    .venv/bin/python bench/run.py                      # everything (about 20-30 minutes)
    .venv/bin/python bench/run.py --quick              # tiny configuration, no peers (~1 min)
    .venv/bin/python bench/run.py --only proxy,detect --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import audit_durability, audit_ship, chat, detect, kube, proxy
from bench.common import (
    BENCH,
    Report,
    Row,
    log,
    render,
    render_markdown,
    report_from_json,
    write_json,
)

MODULES = ("proxy", "detect", "chat", "admission", "reload", "memory", "audit_durability", "audit")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration, no peers")
    parser.add_argument(
        "--only", default=",".join(MODULES), help=f"comma-separated subset of {','.join(MODULES)}"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results/latest.json")
    parser.add_argument("--rounds", type=int, default=None, help="proxy rounds (default 5)")
    parser.add_argument(
        "--duration", type=float, default=None, help="measured seconds per proxy run (default 4)"
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run LiteLLM and presidio rows (default: on unless --quick)",
    )
    parser.add_argument(
        "--setups",
        default=None,
        help="proxy setups to run (direct is always run), e.g. floor,packgate-seed",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy the seed-chain sidecar during an extra json c32 run, stacks next to --out "
        "(default: on unless --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the table of a finished run and write its .md next to it",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(MODULES)
    if unknown:
        parser.error(f"unknown --only entries: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        finished = report_from_json(data)
        print(render(finished))
        args.render.with_suffix(".md").write_text(render_markdown(finished, data["command"]))
        return 0
    quick: bool = args.quick
    peers = (not quick) if args.peers is None else bool(args.peers)
    profile = (not quick) if args.profile is None else bool(args.profile)
    only = args.only.split(",")
    report = Report(quick=quick)
    work = Path(tempfile.mkdtemp(prefix="packgate-bench-"))
    log(f"work directory {work}")

    steps: dict[str, Callable[[], None]] = {
        "proxy": lambda: proxy.run(
            report,
            proxy.Options(
                rounds=args.rounds or (1 if quick else 5),
                duration=args.duration or (0.8 if quick else 4.0),
                warmup=0.3 if quick else 1.0,
                workdir=work,
                peers=peers,
                setups=args.setups.split(",") if args.setups else None,
                profile_dir=args.out.parent / "profile" if profile else None,
            ),
        ),
        "detect": lambda: detect.run(
            report,
            detect.Options(
                seconds=0.15 if quick else 1.0, batches=1 if quick else 5, workdir=work, peers=peers
            ),
        ),
        "chat": lambda: chat.run(
            report,
            chat.Options(requests=20 if quick else 200, big_runs=1 if quick else 5, workdir=work),
        ),
        "admission": lambda: kube.admission(report, kube.Options(work, quick)),
        "reload": lambda: kube.reload(report, kube.Options(work, quick)),
        "memory": lambda: kube.operator_memory(report, kube.Options(work, quick)),
        "audit_durability": lambda: audit_durability.run(
            report,
            proxy.Options(
                rounds=1 if quick else 3,
                duration=0.8 if quick else 3.0,
                warmup=0.3 if quick else 1.0,
                workdir=work,
                peers=False,
            ),
        ),
        "audit": lambda: audit_ship.run(report, audit_ship.Options(work, quick)),
    }
    try:
        for name in MODULES:
            if name not in only:
                continue
            began = time.monotonic()
            log(f"== {name}")
            try:
                steps[name]()
            except Exception as exc:  # one broken measurement must not lose the others
                traceback.print_exc()
                section = report.section(name, f"{name} (failed)", [])
                section.add(Row(name, status="error", note=f"{type(exc).__name__}: {exc}"[:500]))
            log(f"== {name} took {time.monotonic() - began:.0f}s")
    finally:
        kube.shutdown()
    command = (
        "make bench"
        if not argv and not sys.argv[1:]
        else ("bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    )
    print(render(report))
    write_json(args.out, report.to_json(command))
    markdown = args.out.with_suffix(".md")
    markdown.write_text(render_markdown(report, command))
    log(f"wrote {args.out} and {markdown}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
