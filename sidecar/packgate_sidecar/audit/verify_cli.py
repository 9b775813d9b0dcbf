"""``packgate audit verify PATH``: tell an operator whether an audit log was tampered with.

Why it exists: tamper evidence is only useful if checking it is one command with a clear answer.
Every problem is printed as ``SEGMENT:LINE: KIND: detail`` (or as JSON with ``--json``). The
exit status says which of four outcomes it is:

- 0 ``OK``: intact;
- 1 ``TAMPERED``: records edited, deleted, reordered, inserted or badly sealed;
- 2: the command could not run (no such path, no segments, unreadable key);
- 3 ``TORN``: intact except that the newest segment ends in a cut-off line, which is what a crash
  (``kill -9``, power loss) mid-write leaves and what the sidecar's next start records as
  ``recovered``. Not proof of tampering, but not proof against it either: cutting the end off a
  log looks the same, so compare the head with an external copy (the shipped records) when it
  matters. Without a key (``--key-file`` or the sidecar's
``PACKGATE_AUDIT_KEY_FILE``/``PACKGATE_AUDIT_KEY``) only the hash chain is checked, and a note says
so. Pass ``--key-file`` more than once to verify across a key rotation (or across namespaces
with different keys, for a collector store).

Given the audit collector's store (or an exported copy of it), every pod chain in it is checked
and each problem is put in one of three classes: tampering (records changed, inserted, reordered
or sealed without the key), gaps (records missing) and torn tails (a last line cut short).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from packgate_sidecar.audit.chain import Finding, VerifyResult
from packgate_sidecar.audit.keys import AuditKeyError, configured_key, read_key_file
from packgate_sidecar.audit.verify import (
    AuditPathError,
    category,
    chain_dirs,
    verify_chain_dir,
    verify_path,
)
from packgate_sidecar.audit.writer import list_segments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        metavar="PATH",
        help="segment directory, one segment file, or a saved copy of the sidecar's stdout "
        "audit lines (keep only those lines, e.g. grep '^{\"body\"')",
    )
    parser.add_argument(
        "--key-file",
        action="append",
        default=[],
        metavar="FILE",
        help="audit key (hex or raw); repeatable. Default: $PACKGATE_AUDIT_KEY_FILE or "
        "$PACKGATE_AUDIT_KEY; without any key only the hash chain is checked",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report on stdout")


OK, TAMPERED, CANNOT_RUN, TORN = 0, 1, 2, 3


def outcome(result: VerifyResult) -> str:
    """``ok``, ``torn`` (only a cut-off last line of the newest segment) or ``tampered``."""
    if result.ok:
        return "ok"
    last = result.last_segment
    if all(f.kind == "truncated_tail" and f.segment == last for f in result.findings):
        return "torn"
    return "tampered"


def run(args: argparse.Namespace) -> int:
    try:
        keys = [read_key_file(path) for path in args.key_file]
        if not keys and (env_key := configured_key()) is not None:
            keys.append(env_key)
        if Path(args.path).is_dir() and not list_segments(Path(args.path)):
            return run_store(args, keys)
        result = verify_path(args.path, keys)
    except (AuditKeyError, AuditPathError) as exc:
        print(f"packgate audit verify: {exc}", file=sys.stderr)
        return CANNOT_RUN
    verdict = outcome(result)
    code = {"ok": OK, "torn": TORN, "tampered": TAMPERED}[verdict]
    if args.json:
        report = {
            "ok": result.ok,
            "outcome": verdict,
            "records": result.records,
            "segments": result.segments,
            "mac_checked": result.mac_checked,
            "head": None
            if result.head is None
            else {"seq": result.head.seq - 1, "hash": result.head.prev},
            "findings": [finding_json(f) for f in result.findings],
            "notes": list(result.notes),
        }
        print(json.dumps(report, indent=2))
        return code
    for finding in result.findings:
        print(finding)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    checked = "hash chain and MACs" if result.mac_checked else "hash chain"
    scope = f"{result.records} records in {result.segments} segment(s)"
    if result.ok:
        head = (
            ""
            if result.head is None
            else (f"; last record seq {result.head.seq - 1} hash {result.head.prev}")
        )
        print(f"OK: {scope}, {checked} intact{head}")
        return 0
    if verdict == "torn":
        print(
            f"TORN: {scope}, {checked} intact up to a cut-off last line (a crash mid-write; "
            "the sidecar records it as recovered on its next start)"
        )
        return TORN
    print(f"TAMPERED: {len(result.findings)} problem(s) in {scope}")
    return TAMPERED


def finding_json(f: Finding) -> dict[str, Any]:
    """One finding in the ``--json`` reports of a log and of a store alike."""
    return {"kind": f.kind, "segment": f.segment, "line": f.line, "seq": f.seq, "detail": f.detail}


def _unreplayed(root: Path) -> list[str]:
    """The collector's write-ahead log files that hold entries (a live collector's newest one, or
    what a crash left): a checkpoint or the next start puts them into the chain files."""
    logs = (root / "wal").glob("wal-*.log") if (root / "wal").is_dir() else []
    return sorted(p.name for p in logs if p.stat().st_size)


def run_store(args: argparse.Namespace, keys: list[bytes]) -> int:
    """Check every chain of a collector store (or export), classifying every finding."""
    root = Path(args.path)
    chains = chain_dirs(root)
    totals = {"tampering": 0, "gap": 0, "torn_tail": 0}
    report: list[dict[str, Any]] = []
    records = 0
    for directory in chains:
        result = verify_chain_dir(directory, keys)
        records += result.records
        name = str(directory.relative_to(root))
        kinds = [category(f.kind) for f in result.findings]
        for kind in kinds:
            totals[kind] += 1
        report.append(
            {
                "chain": name,
                "ok": result.ok,
                "records": result.records,
                "mac_checked": result.mac_checked,
                "findings": [
                    {"class": category(f.kind), **finding_json(f)} for f in result.findings
                ],
            }
        )
    ok = not any(totals.values())
    # Same exit codes as for one log: torn tails alone are TORN, anything else TAMPERED.
    code = OK if ok else TORN if not (totals["tampering"] or totals["gap"]) else TAMPERED
    unreplayed = _unreplayed(root)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "chains": report,
                    "records": records,
                    **totals,
                    "unreplayed": unreplayed,
                },
                indent=2,
            )
        )
        return code
    if unreplayed:
        print(
            f"note: {len(unreplayed)} write-ahead log file(s) in wal/ not replayed: after a crash, "
            "records acknowledged in the last second before it may be only there; start the "
            "collector on this store (it replays them) and verify again"
        )
    for item in report:
        status = "OK" if item["ok"] else "PROBLEMS"
        checked = "MACs checked" if item["mac_checked"] else "hash chain only"
        print(f"{item['chain']}: {status} ({item['records']} records, {checked})")
        for f in item["findings"]:
            print(f"  {f['class'].upper()}: {f['segment']}:{f['line']}: {f['kind']}: {f['detail']}")
    summary = (
        f"{len(chains)} chain(s), {records} records: {totals['tampering']} tampering, "
        f"{totals['gap']} gap(s), {totals['torn_tail']} torn tail(s)"
    )
    print(("OK: " if ok else "PROBLEMS: ") + summary)
    return code
