"""``packgate audit query``: search the audit collector's records from a terminal.

Why it exists: "what was blocked in my namespace in the last hour" should be one command, not an
exec into a pod. It talks to the collector's read API, normally through a port-forward:

    kubectl -n packgate-system port-forward deploy/packgate-audit-collector 8446:8446
    packgate audit query --namespace team-a --decision blocked --since 1h

It authenticates with a Kubernetes bearer token (``--token``, ``--token-file``,
``$PACKGATE_TOKEN``, or the token of the current kubeconfig user); the collector answers only for
namespaces where that identity may ``get`` PolicyPacks. Exit status: 0 with results (also when
none match), 1 when the collector refused (the message says why), 2 when it could not be reached
or a filter was bad.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8446"
FILTERS = ("namespace", "pack", "pod", "policy", "decision", "status", "since", "until")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("PACKGATE_COLLECTOR_URL", DEFAULT_URL),
        help=f"collector read API (default {DEFAULT_URL}, a kubectl port-forward)",
    )
    parser.add_argument("--token", default=None, help="Kubernetes bearer token")
    parser.add_argument("--token-file", default=None, help="file holding the token")
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("--pack", default=None, help="PolicyPack name")
    parser.add_argument("--pod", default=None)
    parser.add_argument(
        "--policy", default=None, help="a policy that acted (e.g. prompt-injection)"
    )
    parser.add_argument(
        "--decision", default=None, help="blocked, failed_open, rewritten, flagged or allowed"
    )
    parser.add_argument("--status", default=None, help="HTTP status (403) or class (4xx)")
    parser.add_argument("--since", default=None, help="RFC 3339 time or age (15m, 2h, 7d)")
    parser.add_argument("--until", default=None, help="RFC 3339 time or age")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--problems", action="store_true", help="list quarantined records and sequence gaps instead"
    )


def kubeconfig_token() -> str | None:
    """The bearer token of the current kubeconfig user, when it has one."""
    import yaml

    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
        Path.home() / ".kube/config"
    )
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    context_name = config.get("current-context")
    context = next(
        (
            c.get("context") or {}
            for c in config.get("contexts") or []
            if c.get("name") == context_name
        ),
        {},
    )
    user = next(
        (
            u.get("user") or {}
            for u in config.get("users") or []
            if u.get("name") == context.get("user")
        ),
        {},
    )
    token = user.get("token")
    if not token and user.get("tokenFile"):
        try:
            token = Path(user["tokenFile"]).read_text().strip()
        except OSError:
            return None
    return str(token) if token else None


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("PACKGATE_TOKEN") or kubeconfig_token()


def fetch(url: str, token: str) -> tuple[int, Any]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http:// and https:// collector URLs are supported")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - user-given URL
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": {"message": exc.reason}}


def run(args: argparse.Namespace) -> int:
    token = _token(args)
    if not token:
        print(
            "packgate audit query: no token; pass --token/--token-file, set PACKGATE_TOKEN, or "
            "use a kubeconfig user with a token (e.g. `kubectl create token NAME`)",
            file=sys.stderr,
        )
        return 2
    params = {name: getattr(args, name) for name in FILTERS if getattr(args, name)}
    params["limit"] = str(args.limit)
    path = "/api/v1/problems" if args.problems else "/api/v1/records"
    if args.problems:
        params = {"namespace": args.namespace} if args.namespace else {}
    url = args.url.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
    try:
        status, body = fetch(url, token)
    except (OSError, ValueError) as exc:
        print(
            f"packgate audit query: cannot reach the collector at {args.url}: {exc} (is "
            "`kubectl port-forward` running?)",
            file=sys.stderr,
        )
        return 2
    if status != 200:
        message = (body.get("error") or {}).get("message", body) if isinstance(body, dict) else body
        print(f"packgate audit query: refused ({status}): {message}", file=sys.stderr)
        return 2 if status == 400 else 1
    if args.output == "json":
        print(json.dumps(body, indent=2))
    elif args.problems:
        print_problems(body)
    else:
        print_table(body["records"])
    return 0


def print_table(records: list[dict[str, Any]]) -> None:
    columns = (
        "TIME",
        "NAMESPACE",
        "POD",
        "PACK",
        "STATUS",
        "DECISION",
        "POLICIES",
        "ENDPOINT",
        "LATENCY_MS",
    )
    rows = [
        (
            str(r["time"]),
            str(r["namespace"]),
            str(r["pod"]),
            str(r["pack"] or "-"),
            str(r["status"]),
            str(r["decision"]),
            ",".join(r["policies"]) or "-",
            str(r["endpoint"] or "-"),
            f"{r['latency_ms'] or 0:.1f}",
        )
        for r in records
    ]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        )
    if not rows:
        print("(no matching records)")


def print_problems(body: dict[str, Any]) -> None:
    for item in body.get("quarantined", []):
        print(
            f"QUARANTINED {item['received']} {item['namespace']}/{item['pod']} seq "
            f"{item['seq']}: {item['reason']}"
        )
    for item in body.get("gaps", []):
        print(
            f"GAP         {item['received']} {item['namespace']}/{item['pod']} seq "
            f"{item['first']}..{item['last']} missing"
        )
    if not body.get("quarantined") and not body.get("gaps"):
        print("(no quarantined records and no gaps)")
