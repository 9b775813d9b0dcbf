"""Operator settings, from flags with environment-variable defaults.

Why both: the Helm chart sets environment variables on the operator Deployment, people running
`packgate operator run` by hand pass flags, and tests build a `Settings` directly. Every setting
has one name in each form (`--sidecar-image` / `PACKGATE_SIDECAR_IMAGE`) and is validated here,
once, so the webhook never meets a malformed default at admission time.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .annotations import AnnotationError, check_resources, parse_quantity

try:
    PACKGATE_VERSION = version("packgate")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    PACKGATE_VERSION = "0.0.0"

# Fixed by the design: the app's OPENAI_BASE_URL points here.
SIDECAR_API_PORT = 41002


class SettingsError(ValueError):
    """A setting has a value the operator cannot work with; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    # -- the injected sidecar --
    sidecar_image: str = f"ghcr.io/packgate/packgate:{PACKGATE_VERSION}"
    sidecar_image_pull_policy: str = "IfNotPresent"
    sidecar_version: str = ""  # empty: the image tag, else the operator's own version
    sidecar_admin_port: int = 41003
    sidecar_cpu_request: str = "50m"
    sidecar_cpu_limit: str = ""  # empty: no limit (CPU limits throttle latency-sensitive proxies)
    sidecar_memory_request: str = "96Mi"
    sidecar_memory_limit: str = "384Mi"
    sidecar_run_as_user: int = 65532
    # A Secret in the pod's namespace that holds keys for `secret_key_ref.env` targets: its key
    # named like the env var is mapped onto the sidecar (optional, so pods start without it).
    default_key_secret: str = ""
    # A Secret in the pod's namespace whose key `audit-key` is the audit log's MAC key; without
    # it each sidecar uses a random per-process key and its records verify as a hash chain only.
    audit_key_secret: str = ""
    # The audit collector's ingest URL (its Service); empty: records stay in the pod.
    audit_collector_url: str = ""
    token_audience: str = "packgate"  # noqa: S105 - an audience, not a secret
    token_expiration_seconds: int = 3600
    # -- the operator's listeners --
    webhook_host: str = "0.0.0.0"  # noqa: S104 - the apiserver reaches the pod IP
    webhook_port: int = 9443
    subscribe_host: str = "0.0.0.0"  # noqa: S104 - sidecars reach it through a Service
    subscribe_port: int = 8444
    # The URL sidecars use to subscribe (the Service); empty: sidecars only read the mounted file.
    subscribe_url: str = ""
    admin_host: str = "0.0.0.0"  # noqa: S104 - probes and Prometheus come from the node/pods
    admin_port: int = 8080
    # -- TLS for the webhook and the subscription endpoint (one certificate serves both) --
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""  # the CA bundle sidecars verify the operator with
    tls_dir: str = ""  # where a generated CA and certificate go when no files are given
    tls_sans: tuple[str, ...] = ("localhost", "127.0.0.1")
    # -- config signatures (packgate_policy.signing) --
    signing_key_file: str = ""  # Ed25519 private key (PEM); empty: generated and kept in tls_dir
    extra_trusted_keys: tuple[str, ...] = ()  # more public keys sidecars trust (key rotation)
    # -- scope and coordination --
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    peering: str = ""  # empty: standalone (one replica); a name: kopf peering between replicas
    poll_wait_seconds: float = 25.0
    status_debounce_seconds: float = 0.3

    @property
    def effective_sidecar_version(self) -> str:
        if self.sidecar_version:
            return self.sidecar_version
        last = self.sidecar_image.rsplit("/", 1)[-1]
        if "@" not in last and ":" in last:
            return last.rsplit(":", 1)[1]
        return PACKGATE_VERSION

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def serves(self, namespace: str) -> bool:
        """Is `namespace` one this operator serves (cluster-wide, or a name or glob listed)?"""
        return not self.namespaces or any(
            fnmatch.fnmatchcase(namespace, p) for p in self.namespaces
        )

    def default_resources(self) -> dict[str, dict[str, str]]:
        resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
        for section, kind, value in (
            ("requests", "cpu", self.sidecar_cpu_request),
            ("limits", "cpu", self.sidecar_cpu_limit),
            ("requests", "memory", self.sidecar_memory_request),
            ("limits", "memory", self.sidecar_memory_limit),
        ):
            if value:
                resources[section][kind] = value
        return {section: values for section, values in resources.items() if values}

    def validate(self) -> Settings:
        for name in ("sidecar_cpu_request", "sidecar_cpu_limit"):
            _quantity(name, getattr(self, name), "cpu")
        for name in ("sidecar_memory_request", "sidecar_memory_limit"):
            _quantity(name, getattr(self, name), "memory")
        try:
            check_resources(self.default_resources(), "settings")
        except AnnotationError as exc:
            raise SettingsError(str(exc)) from None
        for name in ("sidecar_admin_port", "webhook_port", "subscribe_port", "admin_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{_flag(name)}: {port} is not a TCP port")
        if self.sidecar_admin_port == SIDECAR_API_PORT:
            raise SettingsError(
                f"--sidecar-admin-port: {SIDECAR_API_PORT} is the sidecar's API port; pick another"
            )
        if self.sidecar_image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                "--sidecar-image-pull-policy: expected Always, IfNotPresent or Never, "
                f"got {self.sidecar_image_pull_policy!r}"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("--tls-cert-file and --tls-key-file go together; set both")
        if self.subscribe_url and not self.subscribe_url.startswith("https://"):
            raise SettingsError(
                f"--subscribe-url: {self.subscribe_url!r} must be https:// (sidecars verify the "
                "operator's certificate)"
            )
        if self.extra_trusted_keys:
            from packgate_policy import signing

            try:
                signing.parse_trusted(",".join(self.extra_trusted_keys))
            except signing.SignatureError as exc:
                raise SettingsError(f"--extra-trusted-keys: {exc}") from None
        if self.audit_collector_url and not self.audit_collector_url.startswith("https://"):
            raise SettingsError(
                f"--audit-collector-url: {self.audit_collector_url!r} must be https:// (sidecars "
                "send their tokens only to a collector whose certificate verifies)"
            )
        if self.token_expiration_seconds < 600:
            raise SettingsError("--token-expiration-seconds: Kubernetes requires at least 600")
        return self


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def _env(attr: str) -> str:
    return "PACKGATE_" + attr.upper()


def _quantity(attr: str, value: str, kind: str) -> None:
    if not value:
        return
    try:
        parse_quantity(value)
    except AnnotationError as exc:
        raise SettingsError(f"{_flag(attr)} ({_env(attr)}): {kind} {exc}") from None


_DOCS: dict[str, str] = {
    "sidecar_image": "image of the injected sidecar",
    "sidecar_image_pull_policy": "imagePullPolicy of the sidecar",
    "sidecar_version": "version recorded in packgate.dev/status (default: the image tag)",
    "sidecar_admin_port": "sidecar port for /readyz, /healthz and /metrics",
    "sidecar_cpu_request": "default sidecar CPU request (pods override by annotation)",
    "sidecar_cpu_limit": "default sidecar CPU limit; empty for none",
    "sidecar_memory_request": "default sidecar memory request",
    "sidecar_memory_limit": "default sidecar memory limit; empty for none",
    "sidecar_run_as_user": "UID the sidecar runs as",
    "default_key_secret": (
        "Secret in the pod's namespace whose keys feed secret_key_ref.env targets "
        "(key = env var name); empty: the sidecar gets no such env"
    ),
    "audit_key_secret": (
        "Secret in the pod's namespace whose key audit-key holds the audit MAC key; "
        "empty: a random key per sidecar process (records verify as a hash chain only)"
    ),
    "audit_collector_url": "URL sidecars ship audit records to (the collector); empty: none",
    "token_audience": "audience of the projected token sidecars subscribe with",
    "token_expiration_seconds": "lifetime of that token (the kubelet rotates it)",
    "webhook_host": "address the admission webhook listens on",
    "webhook_port": "port of the admission webhook (HTTPS)",
    "subscribe_host": "address the sidecar subscription endpoint listens on",
    "subscribe_port": "port of the sidecar subscription endpoint (HTTPS)",
    "subscribe_url": "URL sidecars subscribe to (the operator Service); empty: no push",
    "admin_host": "address of /healthz and /metrics",
    "admin_port": "port of /healthz and /metrics (HTTP); 0 disables",
    "tls_cert_file": "serving certificate (PEM) for the webhook and subscriptions",
    "tls_key_file": "its private key",
    "tls_ca_file": "CA bundle of that certificate, given to sidecars",
    "tls_dir": "where to generate a CA and certificate when no files are given",
    "tls_sans": "comma-separated DNS names and IPs of a generated certificate",
    "signing_key_file": (
        "Ed25519 private key (PEM) the operator signs rendered configs with; empty: one is "
        "generated in --tls-dir and kept there"
    ),
    "extra_trusted_keys": (
        "comma-separated <key id>:<base64> public keys injected sidecars also trust "
        "(during a signing-key rotation)"
    ),
    "namespaces": "comma-separated namespaces to serve; empty: cluster-wide",
    "peering": "kopf peering name for several replicas; empty: standalone",
    "poll_wait_seconds": "how long a sidecar subscription waits for a change",
    "status_debounce_seconds": "delay that batches PolicyPack status count updates",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        env_value = os.environ.get(_env(f.name))
        # A string default goes through `type` like a flag value, so a bad environment value
        # is reported by argparse as a bad value of the flag.
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=env_value if env_value is not None else default,
            type=_split if isinstance(default, tuple) else type(default),
            help=f"{_DOCS.get(f.name, f.name)} (env {_env(f.name)})",
        )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def from_args(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    try:
        return Settings(**values).validate()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(str(exc)) from None


def from_env(environ: Mapping[str, str]) -> Settings:
    """Settings from environment variables alone (what the Helm chart sets)."""
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(_env(f.name))
        if raw is None:
            continue
        default = getattr(defaults, f.name)
        try:
            values[f.name] = _split(raw) if isinstance(default, tuple) else type(default)(raw)
        except ValueError:
            raise SettingsError(
                f"{_env(f.name)}: {raw!r} is not a valid {type(default).__name__}"
            ) from None
    return replace(defaults, **values).validate()


def tls_dir_default(settings: Settings) -> Path:
    return Path(settings.tls_dir) if settings.tls_dir else Path("/tmp/packgate-operator-tls")  # noqa: S108
