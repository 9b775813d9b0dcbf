"""The operator's config-signing key: loaded from the Secret the chart mounts, or generated.

Why its own module: run.py only needs "a Signer", and the rules (a configured key must load or
the operator does not start; without one, a key generated once and kept beside the generated TLS
files, so a restarted local operator signs with the same key its sidecars trust) are worth one
place. The signing itself is packgate_policy.signing.
"""

from __future__ import annotations

import os
from pathlib import Path

from packgate_policy import signing

from .settings import Settings, SettingsError, tls_dir_default


def load(settings: Settings) -> signing.Signer:
    if settings.signing_key_file:
        try:
            return signing.Signer.from_pem(Path(settings.signing_key_file).read_bytes())
        except OSError as exc:
            raise SettingsError(f"--signing-key-file: cannot read it ({exc.strerror})") from None
        except signing.SignatureError as exc:
            raise SettingsError(f"--signing-key-file: {exc}") from None
    path = tls_dir_default(settings) / "signing.key"
    if path.exists():
        return signing.Signer.from_pem(path.read_bytes())
    signer = signing.Signer.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_pem())
    return signer


def trusted_env(signer: signing.Signer, settings: Settings) -> str:
    """PACKGATE_CONFIG_KEYS for injected sidecars: our key, then the rotation extras."""
    return signing.trusted_env([signer.trusted_entry(), *settings.extra_trusted_keys])
