"""How a provider key referenced by a Kubernetes Secret reaches the sidecar.

The rendered config never holds a key. A `secret_key_ref.secret` stays a reference; the injector
turns it into an env var on the sidecar container (valueFrom secretKeyRef) whose name is derived
here from the target id, and the sidecar reads that env var. Both sides call this one function so
the names cannot disagree.
"""

from __future__ import annotations

import re

from .models import Target


def secret_env_name(target: Target) -> str:
    """Env var on the sidecar that carries the key of a target whose key lives in a Secret."""
    return "PACKGATE_TARGET_" + re.sub(r"[^A-Z0-9]", "_", target.id.upper()) + "_API_KEY"


def key_env_name(target: Target) -> str | None:
    """The env var the sidecar reads for `target`'s key, or None when it sends no key."""
    ref = target.secret_key_ref
    if ref is None:
        return None
    if ref.env is not None:
        return ref.env
    return secret_env_name(target)
