"""Where the audit MAC key comes from.

Why it exists: the MAC is what stops someone who can write the log files from re-sealing an
edited record, so the key must live outside the log (a mounted Secret) and must never be logged.
Sources, in order: ``PACKGATE_AUDIT_KEY_FILE`` (a path; the file holds hex or raw bytes) and
``PACKGATE_AUDIT_KEY`` (hex or raw). Hex is recognised as an even number of at least 32 hex digits;
anything else is used as raw bytes. A key shorter than 16 bytes is refused.

Without either, :func:`load_key` generates a random key for this process and warns: the records
are still hash-chained, so edits, deletions, reordering and torn tails are detected, but nobody
can check the MACs afterwards (the key dies with the process), so an attacker who recomputes
hashes along the rest of the chain would go unnoticed. Configure a key for real deployments.
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import secrets
from pathlib import Path

from packgate_sidecar.audit.chain import key_id

log = logging.getLogger(__name__)

KEY_FILE_ENV = "PACKGATE_AUDIT_KEY_FILE"
KEY_ENV = "PACKGATE_AUDIT_KEY"
MIN_KEY_BYTES = 16
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}){16,}")


class AuditKeyError(ValueError):
    """The configured key is unusable; the message names the source, never the key."""


def decode_key(material: bytes, source: str) -> bytes:
    """Turn key material (hex or raw, surrounding whitespace ignored) into key bytes."""
    text = material.strip()
    key = binascii.unhexlify(text) if _HEX.fullmatch(text.decode("latin-1")) else text
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(f"audit key from {source} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        material = Path(path).read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key file {path}: {exc.strerror}") from None
    return decode_key(material, f"file {path}")


def configured_key() -> bytes | None:
    """The key from the environment, or ``None`` when none is configured."""
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        return read_key_file(path)
    value = os.environ.get(KEY_ENV)
    if value:
        return decode_key(value.encode("utf-8"), f"${KEY_ENV}")
    return None


def load_key() -> bytes:
    """The key the writer seals with; a random per-process key (with a warning) if none is set."""
    key = configured_key()
    if key is not None:
        log.info("audit key loaded (key id %s)", key_id(key))
        return key
    key = secrets.token_bytes(32)
    log.warning(
        "no audit key configured (%s or %s): using a random per-process key (key id %s); "
        "records are hash-chained but their MACs cannot be verified once this process exits",
        KEY_FILE_ENV,
        KEY_ENV,
        key_id(key),
    )
    return key
