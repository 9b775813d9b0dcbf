"""Operator signatures on rendered policy configs: sign, verify, and the signed-text format.

Why: whoever may edit the ConfigMap `packgate-<pack>` in a namespace (usually the app team) could
otherwise rewrite the policy a sidecar enforces. The operator signs every config it renders with
an Ed25519 key only it holds; the injector gives each sidecar the public key (pod env, immutable
once the pod exists), and the sidecar enforces only configs that verify, whether they arrive over
the push channel or from the mounted file. A signature binds the config to its namespace, its
pack (name and uid) and the pack's generation, so a signed config cannot be replayed into another
pack, and a sidecar refuses one older than the config it enforces (a rollback).

The signature is one YAML comment line in front of the config, so a signed config is still a
plain policy config for `packgate policy lint` and `packgate gateway run` outside Kubernetes:

    # packgate-signature: v1 key=<key id> ns=<namespace> pack=<name> uid=<uid> gen=<n> sig=<b64>
    <the rendered config>

Pure: bytes in, bytes out; only `cryptography` (not imported by `packgate_policy` itself, so the
contract package stays pydantic + pyyaml for everything else).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "# packgate-signature: "
VERSION = "v1"
DOMAIN = b"packgate.dev/policy-config/v1\n"
# The env var that carries the trusted public keys into the sidecar: `<key id>:<base64>` items,
# comma-separated (several during a key rotation).
ENV_TRUSTED_KEYS = "PACKGATE_CONFIG_KEYS"

_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_HEADER = re.compile(
    rf"^# packgate-signature: v1 key=(?P<key>[0-9a-f]{{16}}) ns=(?P<ns>{_NAME}) "
    rf"pack=(?P<pack>{_NAME}) uid=(?P<uid>[-0-9a-zA-Z]{{0,64}}) gen=(?P<gen>[0-9]{{1,18}}) "
    r"sig=(?P<sig>[A-Za-z0-9_-]{86})$"
)


class SignatureError(ValueError):
    """A config that must not be enforced; `reason` is a short code for metrics and reports."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Signed:
    """A verified config: where it belongs, which generation, and the config text itself."""

    key_id: str
    namespace: str
    pack: str
    uid: str
    generation: int
    body: str


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _message(key: str, namespace: str, pack: str, uid: str, generation: int, body: str) -> bytes:
    fields = f"key={key}\nns={namespace}\npack={pack}\nuid={uid}\ngen={generation}\n"
    return DOMAIN + fields.encode() + body.encode("utf-8")


class Signer:
    """The operator's half: holds the private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SignatureError("bad-key", f"not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError("bad-key", "the signing key must be an Ed25519 key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def trusted_entry(self) -> str:
        """This key as one item of PACKGATE_CONFIG_KEYS."""
        return trusted_entry(self.public)

    def sign(self, body: str, namespace: str, pack: str, uid: str, generation: int) -> str:
        """`body` with the signature line in front."""
        message = _message(self.key_id, namespace, pack, uid, generation, body)
        signature = base64.urlsafe_b64encode(self._private.sign(message)).decode().rstrip("=")
        header = (
            f"{PREFIX}{VERSION} key={self.key_id} ns={namespace} pack={pack} uid={uid} "
            f"gen={generation} sig={signature}"
        )
        return f"{header}\n{body}"


def trusted_entry(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{key_id(public)}:{base64.b64encode(raw).decode()}"


def parse_trusted(text: str) -> dict[str, Ed25519PublicKey]:
    """PACKGATE_CONFIG_KEYS -> {key id: public key}; raises SignatureError naming the bad item."""
    keys: dict[str, Ed25519PublicKey] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        claimed, _, encoded = item.partition(":")
        try:
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded, validate=True))
        except ValueError:
            raise SignatureError(
                "bad-key", f"{ENV_TRUSTED_KEYS}: {item[:40]!r} is not <key id>:<base64 Ed25519 key>"
            ) from None
        if key_id(public) != claimed:
            raise SignatureError(
                "bad-key", f"{ENV_TRUSTED_KEYS}: key id {claimed!r} does not match its key"
            )
        keys[claimed] = public
    if not keys:
        raise SignatureError("bad-key", f"{ENV_TRUSTED_KEYS} holds no key")
    return keys


def split(text: str) -> tuple[str, str]:
    """(signature line, body); the line is "" when `text` carries none."""
    first, newline, rest = text.partition("\n")
    if first.startswith(PREFIX) and newline:
        return first, rest
    return "", text


def verify(
    text: str,
    trusted: Mapping[str, Ed25519PublicKey],
    namespace: str | None = None,
    pack: str | None = None,
) -> Signed:
    """The verified config in `text`, bound to `namespace`/`pack` when given; else raises."""
    header, body = split(text)
    if not header:
        raise SignatureError("unsigned", "the config carries no packgate operator signature")
    match = _HEADER.match(header)
    if match is None:
        raise SignatureError("malformed", "the packgate signature line is malformed")
    key = match["key"]
    public = trusted.get(key)
    if public is None:
        raise SignatureError(
            "unknown-key", f"the config is signed with key {key}, which this sidecar does not trust"
        )
    generation = int(match["gen"])
    message = _message(key, match["ns"], match["pack"], match["uid"], generation, body)
    try:
        public.verify(base64.urlsafe_b64decode(match["sig"] + "=="), message)
    except (InvalidSignature, ValueError):
        raise SignatureError(
            "bad-signature", "the signature does not match the config: it was altered"
        ) from None
    if namespace is not None and match["ns"] != namespace:
        raise SignatureError(
            "wrong-pack", f"the config was signed for namespace {match['ns']}, not {namespace}"
        )
    if pack is not None and match["pack"] != pack:
        raise SignatureError(
            "wrong-pack", f"the config was signed for PolicyPack {match['pack']}, not {pack}"
        )
    return Signed(key, match["ns"], match["pack"], match["uid"], generation, body)


def newer_or_same(signed: Signed, current: Signed | None) -> bool:
    """False for a rollback: an older generation of the pack (same uid) than the one in force."""
    return current is None or signed.uid != current.uid or signed.generation >= current.generation


def trusted_env(entries: Iterable[str]) -> str:
    return ",".join(dict.fromkeys(e for e in entries if e))
