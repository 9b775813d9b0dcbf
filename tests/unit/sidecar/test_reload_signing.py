"""The sidecar enforces only configs the operator signed once it was given the operator's key:
from the file and from a push alike, an unsigned, altered, foreign or rolled-back config is
refused, counted and shown in /readyz, and the last good config stays in force."""

from __future__ import annotations

from pathlib import Path

from packgate_policy import load_text, signing
from packgate_sidecar.chain import builtin_registry
from packgate_sidecar.metrics import Metrics
from packgate_sidecar.policy import PodIdentity, PolicyRuntime
from packgate_sidecar.reload import ConfigHolder, FileWatcher

CONFIG = (
    "pack: {name: gw, version: 1.0.0, enabled: %s}\n"
    "providers: {targets: [{id: t, provider: openai}]}\n"
)
OPERATOR = signing.Signer.generate()


def holder(keys: str | None = None) -> tuple[ConfigHolder, Metrics]:
    metrics = Metrics()
    environ = {"POD_NAMESPACE": "team-a", "PACKGATE_POLICY_PACK": "gw"}
    environ[signing.ENV_TRUSTED_KEYS] = OPERATOR.trusted_entry() if keys is None else keys
    runtime = PolicyRuntime(PodIdentity.from_env({}), metrics, None)
    return ConfigHolder(builtin_registry(), runtime, metrics, environ), metrics


def signed(enabled: str = "true", gen: int = 2, ns: str = "team-a") -> str:
    return OPERATOR.sign(CONFIG % enabled, ns, "gw", "uid-1", gen)


def refusals(metrics: Metrics, source: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "packgate_config_signature_refusals_total", {"source": source, "reason": reason}
    )
    return value or 0.0


def test_signed_configs_load_and_forgeries_are_refused(tmp_path: Path) -> None:
    gate, metrics = holder()
    assert gate.apply(signed(), "push:op").ok
    good = load_text(CONFIG % "true").hash
    calls: list[int] = []
    gate.on_refusal.append(lambda: calls.append(1))

    forged = signed().replace("enabled: true", "enabled: false")
    for text, source, reason in (
        (CONFIG % "false", "push:op", "unsigned"),
        (forged, "push:op", "bad-signature"),
        (signed("false", ns="team-b"), "push:op", "wrong-pack"),
        (signed("false", gen=1), "push:op", "rollback"),
    ):
        result = gate.apply(text, source)
        assert not result.ok and "refused" in result.describe()
        assert gate.current is not None and gate.current.hash == good
        assert refusals(metrics, "push", reason) == 1
    ready, detail = gate.readiness()
    assert ready and detail["refused"][0]["reason"] == "rollback"
    assert len(calls) == 4

    # The mounted file is checked the same way; a good config clears the report of its source.
    path = tmp_path / "policy.yaml"
    path.write_text(CONFIG % "false")
    FileWatcher(path, gate).check()
    assert refusals(metrics, "file", "unsigned") == 1
    assert gate.current.hash == good
    path.write_text(signed("false", gen=3))
    watcher = FileWatcher(path, gate)
    assert watcher.check() is not None and gate.current.hash == load_text(CONFIG % "false").hash
    assert "file" not in gate.refused and gate.signed is not None and gate.signed.generation == 3


def test_a_malformed_trusted_key_refuses_everything() -> None:
    gate, metrics = holder(keys="garbage")
    assert not gate.apply(signed(), "file:x").ok
    assert gate.current is None
    assert refusals(metrics, "file", "bad-key") == 1


def test_without_a_key_plain_files_load_as_before() -> None:
    metrics = Metrics()
    runtime = PolicyRuntime(PodIdentity.from_env({}), metrics, None)
    gate = ConfigHolder(builtin_registry(), runtime, metrics, {})
    assert gate.apply(CONFIG % "true", "file:x").ok
    assert "refused" not in gate.readiness()[1]
