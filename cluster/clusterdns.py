"""Cluster DNS for the local node: `<service>.<namespace>.svc.cluster.local` -> its ClusterIP.

Why: pods find Services by name (the chart tells sidecars to subscribe at
`https://<release>.<namespace>.svc:8444`), and a real cluster always runs a DNS for that. The
local node has no CoreDNS build, so this answers exactly those names from the apiserver's
Service list, on the node address inside the run's network namespace. Every other name gets
NXDOMAIN: nothing is forwarded anywhere, so a pod cannot resolve (or reach) the outside world.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

DOMAIN = "svc.cluster.local"


class ServiceResolver(BaseResolver):  # type: ignore[misc]
    """Answers A queries for Services from a list refreshed at most once a second."""

    def __init__(self, list_services: Callable[[], bytes]) -> None:
        self._list = list_services
        self._lock = threading.Lock()
        self._ips: dict[str, str] = {}
        self._fetched = 0.0

    def _lookup(self, name: str) -> str | None:
        with self._lock:
            if name not in self._ips or time.monotonic() - self._fetched > 1.0:
                items = json.loads(self._list()).get("items", [])
                self._ips = {
                    f"{s['metadata']['name']}.{s['metadata']['namespace']}.{DOMAIN}": ip
                    for s in items
                    if (ip := s.get("spec", {}).get("clusterIP")) and ip != "None"
                }
                self._fetched = time.monotonic()
            return self._ips.get(name)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        ip = self._lookup(name) if name.endswith("." + DOMAIN) else None
        if ip is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=5))
        return reply  # a known name asked for AAAA: NOERROR with no answer


class _QuietLogger:
    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def serve(address: str, list_services: Callable[[], bytes]) -> DNSServer:
    """Start answering on `address`:53 (UDP) in a daemon thread; stop with .stop()."""
    server = DNSServer(
        ServiceResolver(list_services), address=address, port=53, logger=_QuietLogger()
    )
    server.start_thread()
    return server
