"""How this pod proves itself to the operator's endpoints.

The config push channel and the audit collector authenticate a sidecar the same way: its
projected service-account token, its pod name and namespace, and only the operator's CA for the
endpoint's certificate. Both read those from the injected environment here, once, into one
:class:`Channel` their settings embed, so they require the same variables, refuse the same gaps
and trust the same CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

IDENTITY_VARS = ("POD_NAME", "POD_NAMESPACE", "PACKGATE_TOKEN_FILE")
CA_FILE_VAR = "PACKGATE_OPERATOR_CA_FILE"


@dataclass(frozen=True)
class Channel:
    """One operator endpoint and who this pod is to it."""

    url: str  # https://, without a trailing slash
    namespace: str
    pod: str
    token_file: Path
    ca_pem: str | None = None
    ca_file: str | None = None

    def pod_url(self, resource: str) -> str:
        """``{url}/v1/namespaces/{namespace}/pods/{pod}/{resource}``, names quoted."""
        return (
            f"{self.url}/v1/namespaces/{quote(self.namespace, safe='')}"
            f"/pods/{quote(self.pod, safe='')}/{resource}"
        )

    def ssl_context(self) -> ssl.SSLContext:
        return operator_ssl_context(self.ca_file, self.ca_pem)

    def headers(self) -> dict[str, str]:
        return bearer(self.token_file)


def channel_from_env(
    environ: Mapping[str, str],
    url_var: str,
    ca_vars: Sequence[str],
    error: type[ValueError],
) -> Channel | None:
    """The endpoint named by `url_var` and this pod's identity; None when `url_var` is not set.
    `ca_vars` are the PEM variables tried in order."""
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
    return Channel(
        url=url.rstrip("/"),
        namespace=environ["POD_NAMESPACE"],
        pod=environ["POD_NAME"],
        token_file=Path(environ["PACKGATE_TOKEN_FILE"]),
        ca_pem=ca_pem,
        ca_file=ca_file,
    )


def operator_ssl_context(ca_file: str | None, ca_pem: str | None) -> ssl.SSLContext:
    # Only the operator's CA: a certificate from any public CA must not be able to push config
    # or receive audit records.
    return ssl.create_default_context(cafile=ca_file, cadata=ca_pem)


def bearer(token_file: Path) -> dict[str, str]:
    """The Authorization header; the file is read each time because kubelet rotates the token."""
    token = token_file.read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"}
