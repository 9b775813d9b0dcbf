"""How this pod proves itself to the operator's endpoints.

The config push channel and the audit collector authenticate a sidecar the same way: its
projected service-account token, its pod name and namespace, and only the operator's CA for the
endpoint's certificate. Both read those from the injected environment here, so they require the
same variables, refuse the same gaps and trust the same CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

IDENTITY_VARS = ("POD_NAME", "POD_NAMESPACE", "PACKGATE_TOKEN_FILE")
CA_FILE_VAR = "PACKGATE_OPERATOR_CA_FILE"


def channel_from_env(
    environ: Mapping[str, str],
    url_var: str,
    ca_vars: Sequence[str],
    error: type[ValueError],
) -> dict[str, Any] | None:
    """url, namespace, pod, token_file, ca_pem and ca_file for the endpoint named by `url_var`;
    None when it is not set. `ca_vars` are the PEM variables tried in order."""
    url = environ.get(url_var, "").strip()
    if not url:
        return None
    if urlsplit(url).scheme != "https":
        raise error(
            f"{url_var}={url!r}: must be https:// (the endpoint is trusted only when its "
            "certificate verifies against the operator's CA)"
        )
    missing = [name for name in IDENTITY_VARS if not environ.get(name)]
    ca_pem = next((environ[name] for name in ca_vars if environ.get(name)), None)
    ca_file = environ.get(CA_FILE_VAR) or None
    if not (ca_pem or ca_file):
        missing.append(" or ".join([*ca_vars, CA_FILE_VAR]))
    if missing:
        raise error(f"{url_var} is set but these are not: " + ", ".join(missing))
    return {
        "url": url.rstrip("/"),
        "namespace": environ["POD_NAMESPACE"],
        "pod": environ["POD_NAME"],
        "token_file": Path(environ["PACKGATE_TOKEN_FILE"]),
        "ca_pem": ca_pem,
        "ca_file": ca_file,
    }


def operator_ssl_context(ca_file: str | None, ca_pem: str | None) -> ssl.SSLContext:
    # Only the operator's CA: a certificate from any public CA must not be able to push config
    # or receive audit records.
    return ssl.create_default_context(cafile=ca_file, cadata=ca_pem)


def bearer(token_file: Path) -> dict[str, str]:
    """The Authorization header; the file is read each time because kubelet rotates the token."""
    token = token_file.read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"}
