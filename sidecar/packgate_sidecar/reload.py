"""The config in force, swapped atomically, from a watched file or a push.

Why it exists: a PolicyPack edit must be enforced within about a second without restarting pods,
and a bad edit must never take governance down. `ConfigHolder` keeps one `Active` (the validated
config, its built policy chain and its resolved provider targets); a request takes the current
`Active` once and finishes on it, so a reload never changes the rules under a request in flight.
A new config that fails anywhere (YAML, schema, a missing provider key, an unknown or broken
policy) leaves the last good one in force and is reported in the log, the metrics and `/readyz`.

When the injector gave the sidecar the operator's public key (PACKGATE_CONFIG_KEYS, see
packgate_policy.signing), both sources must carry the operator's signature for this pod's
namespace and pack: an unsigned, altered, foreign or rolled-back config is refused before it is
parsed, counted in `packgate_config_signature_refusals_total`, shown in `/readyz` (`refused`) and
reported to the operator on the next poll; the config in force stays. Without that variable
(`packgate gateway run` on a laptop) plain config files load as before.

Two sources feed it: `FileWatcher` polls the mounted file (the durable source; polling the
resolved content also catches a Kubernetes ConfigMap volume's `..data` symlink swap, which inotify
on the file path would miss), and `ConfigHolder.apply` is the entry point the operator's
propagation channel calls with the rendered document.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packgate_policy import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    PolicyConfig,
    load_mapping,
    load_text,
    signing,
)

from .chain import Chain
from .forward import Upstream, resolve_upstreams
from .logs import describe_exception, get_logger, log
from .metrics import Metrics
from .policy import Policy, PolicyRuntime, Registry

_log = get_logger("reload")


@dataclass
class Active:
    """One loaded config with everything built from it; immutable once in force."""

    loaded: LoadedConfig
    chain: Chain
    upstreams: list[Upstream]
    source: str
    loaded_at: float = field(default_factory=time.time)
    inflight: int = 0
    retired: bool = False

    @property
    def hash(self) -> str:
        return self.loaded.hash

    @property
    def config(self) -> PolicyConfig:
        return self.loaded.config


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    changed: bool
    hash: str | None
    issues: list[ConfigIssue]

    def describe(self) -> str:
        return "; ".join(str(issue) for issue in self.issues)


class ConfigHolder:
    def __init__(
        self,
        registry: Registry,
        runtime: PolicyRuntime,
        metrics: Metrics,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.runtime = runtime
        self.metrics = metrics
        self.environ = os.environ if environ is None else environ
        self.current: Active | None = None
        self.last_error: dict[str, Any] | None = None
        # How many Actives (current or still draining) use each policy instance.
        self._users: dict[int, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # Signature checking: on when the injector gave us the operator's key.
        self.trusted: Mapping[str, Any] | None = None
        self.trust_problem = ""
        self.signed: signing.Signed | None = None
        # The last refusal per source kind ("file", "push"), cleared by the next good config;
        # `on_refusal` callbacks run whenever this changes (the subscriber reports it at once).
        self.refused: dict[str, dict[str, Any]] = {}
        self.on_refusal: list[Callable[[], None]] = []
        keys = self.environ.get(signing.ENV_TRUSTED_KEYS)
        if keys is not None:
            try:
                self.trusted = signing.parse_trusted(keys)
            except signing.SignatureError as exc:
                self.trusted, self.trust_problem = {}, str(exc)  # fail closed: trust nothing
        self._bind_namespace = self.environ.get("POD_NAMESPACE") or None
        self._bind_pack = self.environ.get("PACKGATE_POLICY_PACK") or None
        metrics.set_config(None)

    # --- entry points ------------------------------------------------------------------------

    def apply(self, document: str | bytes | Mapping[str, Any], source: str = "push") -> ApplyResult:
        """Validate and put a config in force: YAML text/bytes or an already parsed mapping
        (for example a PolicyPack spec). Never raises for a bad config; see the result."""
        signed = None
        try:
            if isinstance(document, bytes):
                try:
                    document = document.decode("utf-8")
                except UnicodeDecodeError:
                    raise ConfigError([ConfigIssue("", "the config is not UTF-8 text")]) from None
            if self.trusted is not None:
                try:
                    signed = self._verify(document)
                except signing.SignatureError as exc:
                    return self.refuse(exc, source, document)
                document = signed.body
            if isinstance(document, str):
                loaded = load_text(document, source)
            else:
                loaded = load_mapping(document, source=source)
        except ConfigError as exc:
            return self.reject(exc, source)
        result = self.apply_loaded(loaded, source)
        if result.ok:
            if signed is not None:
                self.signed = signed
            if self.refused.pop(_kind(source), None) is not None:
                self._notify()
        return result

    def _verify(self, document: str | Mapping[str, Any]) -> signing.Signed:
        if self.trust_problem:
            raise signing.SignatureError("bad-key", self.trust_problem)
        if not isinstance(document, str):
            raise signing.SignatureError("unsigned", "a parsed config carries no signature")
        assert self.trusted is not None
        signed = signing.verify(document, self.trusted, self._bind_namespace, self._bind_pack)
        if not signing.newer_or_same(signed, self.signed):
            current = self.signed.generation if self.signed else 0
            raise signing.SignatureError(
                "rollback",
                f"the config is generation {signed.generation} of the pack, older than "
                f"generation {current} in force",
            )
        return signed

    def refuse(
        self, error: signing.SignatureError, source: str, document: str | Mapping[str, Any]
    ) -> ApplyResult:
        """A config without a valid operator signature: kept out, counted, reported."""
        kind = _kind(source)
        digest = hashlib.sha256(str(document).encode()).hexdigest()[:16]
        self.refused[kind] = {
            "source": source,
            "reason": error.reason,
            "message": str(error),
            "digest": digest,
            "at": time.time(),
        }
        self.metrics.signature_refusals.labels(kind, error.reason).inc()
        issue = ConfigIssue("", f"refused: {error}")
        self.last_error = {
            "source": source,
            "at": time.time(),
            "issues": [{"path": "", "message": issue.message, "line": None}],
        }
        log(
            _log,
            40,
            "config refused: not signed by the operator",
            source=source,
            reason=error.reason,
            detail=str(error),
            kept_hash=self.current.hash if self.current is not None else None,
        )
        self._notify()
        return ApplyResult(False, False, None, [issue])

    def _notify(self) -> None:
        for callback in self.on_refusal:
            callback()

    def apply_loaded(self, loaded: LoadedConfig, source: str) -> ApplyResult:
        current = self.current
        if current is not None and current.hash == loaded.hash:
            self.last_error = None
            self._count(source, "unchanged")
            return ApplyResult(True, False, loaded.hash, list(loaded.warnings))
        try:
            upstreams = resolve_upstreams(loaded.config, self.environ)
            chain = Chain.build(
                loaded.config,
                self.registry,
                self.runtime,
                self.metrics,
                previous=current.chain if current is not None else None,
                discard=self._close_later,
            )
        except ConfigError as exc:
            return self.reject(exc, source)
        active = Active(loaded, chain, upstreams, source)
        for entry in chain.entries:
            self._users[id(entry.policy)] = self._users.get(id(entry.policy), 0) + 1
        self.current = active  # the swap: requests that already hold `current` keep theirs
        self.last_error = None
        if current is not None:
            current.retired = True
            if current.inflight == 0:
                self._dispose(current)
        config = loaded.config
        self.metrics.set_config(loaded.hash, config.pack.name, config.pack.version)
        self._count(source, "success")
        log(
            _log,
            20,
            "config loaded",
            source=source,
            hash=loaded.hash,
            pack=config.pack.name,
            version=config.pack.version,
            enabled=config.pack.enabled,
            chain=list(config.policies.chain),
            warnings=[str(w) for w in loaded.warnings],
        )
        return ApplyResult(True, True, loaded.hash, list(loaded.warnings))

    def reject(self, error: ConfigError, source: str) -> ApplyResult:
        issues = list(error.issues)
        self.last_error = {
            "source": source,
            "at": time.time(),
            "issues": [{"path": i.path, "message": i.message, "line": i.line} for i in issues],
        }
        self._count(source, "failure")
        keeping = self.current.hash if self.current is not None else None
        log(
            _log,
            40,
            "config rejected",
            source=source,
            kept_hash=keeping,
            issues=[str(i) for i in issues],
        )
        return ApplyResult(False, False, None, issues)

    # --- request accounting ------------------------------------------------------------------

    def enter(self, active: Active) -> None:
        active.inflight += 1

    def leave(self, active: Active) -> None:
        active.inflight -= 1
        if active.retired and active.inflight == 0:
            self._dispose(active)

    def _dispose(self, active: Active) -> None:
        """A replaced config no request uses any more: close the policies nobody else uses."""
        orphans = []
        for entry in active.chain.entries:
            left = self._users.get(id(entry.policy), 1) - 1
            if left <= 0:
                self._users.pop(id(entry.policy), None)
                orphans.append(entry.policy)
            else:
                self._users[id(entry.policy)] = left
        self._close_later(orphans)

    def _close_later(self, policies: list[Policy]) -> None:
        if not policies:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # applied from plain code (a test, a CLI): close right here
            asyncio.run(_close_all(policies))
            return
        task = loop.create_task(_close_all(policies))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Shutdown: close every policy still open."""
        if self.current is not None:
            self.current.retired = True
            self._dispose(self.current)
            self.current = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- reporting ---------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        current = self.current
        detail: dict[str, Any] = {"ready": current is not None}
        if current is None:
            detail["reason"] = "no valid policy config is loaded"
        else:
            config = current.config
            detail.update(
                config_hash=current.hash,
                pack=config.pack.name,
                version=config.pack.version,
                enabled=config.pack.enabled,
                chain=list(config.policies.chain),
                source=current.source,
                loaded_at=current.loaded_at,
            )
        detail["last_error"] = self.last_error
        if self.trusted is not None:
            detail["signed"] = {
                "required": True,
                "generation": self.signed.generation if self.signed else None,
                "key": self.signed.key_id if self.signed else None,
            }
            detail["refused"] = list(self.refused.values())
        return current is not None, detail

    def not_ready_message(self) -> str:
        message = "The gateway has no valid policy config loaded"
        if self.last_error and self.last_error["issues"]:
            first = self.last_error["issues"][0]
            where = f"{first['path']}: " if first["path"] else ""
            message += f" ({where}{first['message']})"
        return message

    def _count(self, source: str, result: str) -> None:
        kind = _kind(source)
        self.metrics.reloads.labels(kind, result).inc()
        self.metrics.last_reload.labels(result).set(time.time())


def _kind(source: str) -> str:
    return source.split(":", 1)[0] if source.startswith(("file", "push")) else "push"


async def _close_all(policies: list[Policy]) -> None:
    for policy in policies:
        try:
            await policy.aclose()
        except Exception as exc:
            log(
                _log,
                40,
                "policy close failed",
                kind=policy.kind,
                error=describe_exception(exc),
            )


class FileWatcher:
    """Polls the config file's content (following symlinks) and applies each new version."""

    def __init__(self, path: str | Path, holder: ConfigHolder, interval: float = 0.5) -> None:
        self.path = Path(path)
        self.holder = holder
        self.interval = interval
        self.source = f"file:{self.path}"
        self._seen: str | None = None

    def check(self) -> ApplyResult | None:
        """Apply the file if its content changed since the last check; None when unchanged."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            seen = f"unreadable:{exc.errno}"
            if seen == self._seen:
                return None
            self._seen = seen
            issue = ConfigIssue("", f"cannot read {self.path}: {exc.strerror or exc}")
            return self.holder.reject(ConfigError([issue], str(self.path)), self.source)
        seen = hashlib.sha256(data).hexdigest()
        if seen == self._seen:
            return None
        self._seen = seen
        return self.holder.apply(data, self.source)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception as exc:  # the watcher must outlive any single bad read
                log(_log, 40, "config watch failed", error=describe_exception(exc))
