"""Prometheus metrics of the operator, and the small HTTP server for /healthz and /metrics.

Why a registry of its own: tests run several operators in one process, and the sidecar has its
own metrics; a private CollectorRegistry per operator keeps their numbers apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.injections = Counter(
            "packgate_operator_injections",
            "Admission decisions on opted-in pods (dry runs excluded).",
            ["result"],
            registry=r,
        )
        self.reconciles = Counter(
            "packgate_operator_reconciles", "PolicyPack reconciliations.", ["result"], registry=r
        )
        self.pushes = Counter(
            "packgate_operator_config_pushes",
            "Configs sent to sidecars over their subscriptions.",
            registry=r,
        )
        self.subscription_rejections = Counter(
            "packgate_operator_subscription_rejections",
            "Subscription requests refused.",
            ["reason"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "packgate_operator_subscriptions", "Sidecar subscriptions open now.", registry=r
        )
        self.tampered = Counter(
            "packgate_operator_configmaps_tampered",
            "Packgate ConfigMaps found holding a config the operator did not sign; restored.",
            ["namespace", "pack"],
            registry=r,
        )
        self.config_refusals = Gauge(
            "packgate_operator_pods_refusing_config",
            "Injected pods whose sidecar refused a config not signed by the operator.",
            ["namespace", "pack"],
            registry=r,
        )
        self.pods_orphaned = Gauge(
            "packgate_operator_pods_without_pack",
            "Opted-in pods naming a PolicyPack that does not exist (deleted or never created).",
            ["namespace", "pack"],
            registry=r,
        )
        self.packs = Gauge(
            "packgate_operator_packs", "PolicyPacks with a rendered config.", registry=r
        )
        self.pods_without_sidecar = Gauge(
            "packgate_operator_pods_without_sidecar",
            "Opted-in pods running without the packgate sidecar (drift).",
            ["namespace", "pack"],
            registry=r,
        )
        self.pods_injected = Gauge(
            "packgate_operator_pods_injected",
            "Pods running the packgate sidecar.",
            ["namespace", "pack"],
            registry=r,
        )
        self.pods_in_sync = Gauge(
            "packgate_operator_pods_in_sync",
            "Injected pods whose sidecar reported the pack's current config hash.",
            ["namespace", "pack"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def admin_app(
    metrics: Metrics, alive: Callable[[], bool], ready: Callable[[], Awaitable[bool]]
) -> web.Application:
    """/healthz: the operator's tasks all run (liveness); /readyz: it serves (readiness)."""

    async def healthz(_: web.Request) -> web.Response:
        if alive():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="an operator task stopped\n")

    async def readyz(_: web.Request) -> web.Response:
        if alive() and await ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready\n")

    async def serve_metrics(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", serve_metrics),
        ]
    )
    return app
