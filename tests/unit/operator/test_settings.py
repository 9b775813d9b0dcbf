"""Settings come from flags or PACKGATE_* variables, and a bad value stops the operator at start
with the setting's name rather than failing at admission time."""

from __future__ import annotations

import argparse

import pytest
from packgate_operator import settings as settings_mod
from packgate_operator.settings import Settings, SettingsError


def test_defaults_are_valid_and_cluster_wide() -> None:
    settings = Settings().validate()
    assert settings.clusterwide
    assert settings.default_resources() == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"memory": "384Mi"},
    }


def test_environment_sets_every_kind_of_value() -> None:
    settings = settings_mod.from_env(
        {
            "PACKGATE_SIDECAR_IMAGE": "registry.local/packgate:1.2.3",
            "PACKGATE_WEBHOOK_PORT": "9999",
            "PACKGATE_NAMESPACES": "team-a, team-b",
            "PACKGATE_POLL_WAIT_SECONDS": "5",
            "PACKGATE_SIDECAR_CPU_LIMIT": "1",
        }
    )
    assert settings.webhook_port == 9999
    assert settings.namespaces == ("team-a", "team-b")
    assert not settings.clusterwide
    assert settings.poll_wait_seconds == 5.0
    assert settings.effective_sidecar_version == "1.2.3"
    assert settings.default_resources()["limits"]["cpu"] == "1"


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKGATE_ADMIN_PORT", "7000")
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    assert settings_mod.from_args(parser.parse_args([])).admin_port == 7000
    args = parser.parse_args(["--admin-port", "7001", "--tls-sans", "a.svc,10.0.0.1"])
    settings = settings_mod.from_args(args)
    assert settings.admin_port == 7001
    assert settings.tls_sans == ("a.svc", "10.0.0.1")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PACKGATE_SIDECAR_CPU_REQUEST": "fast"}, "--sidecar-cpu-request"),
        ({"PACKGATE_WEBHOOK_PORT": "nine"}, "PACKGATE_WEBHOOK_PORT"),
        ({"PACKGATE_SIDECAR_ADMIN_PORT": "41002"}, "the sidecar's API port"),
        ({"PACKGATE_SUBSCRIBE_URL": "http://op:8444"}, "must be https://"),
        ({"PACKGATE_TLS_CERT_FILE": "/x.crt"}, "go together"),
        ({"PACKGATE_SIDECAR_MEMORY_REQUEST": "1Gi"}, "above its limit"),
        ({"PACKGATE_SIDECAR_IMAGE_PULL_POLICY": "Sometimes"}, "Always, IfNotPresent or Never"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_mod.from_env(env)


def test_version_falls_back_when_image_has_a_digest() -> None:
    settings = Settings(sidecar_image="reg/packgate@sha256:abc")
    assert settings.effective_sidecar_version == settings_mod.PACKGATE_VERSION
    assert Settings(sidecar_version="9.9.9").effective_sidecar_version == "9.9.9"
