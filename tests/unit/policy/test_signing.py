"""Config signatures: only the operator's key makes a config enforceable, for exactly the pack
(namespace, name, uid) and generation it was signed for; anything else is refused with a reason."""

from __future__ import annotations

import base64

import pytest
from packgate_policy import load_text, signing

BODY = "pack: {name: gw, version: 1.0.0}\nproviders: {targets: [{id: t, provider: openai}]}\n"
OPERATOR = signing.Signer.generate()
TRUSTED = signing.parse_trusted(OPERATOR.trusted_entry())


def signed(body: str = BODY, ns: str = "team-a", pack: str = "gw", gen: int = 3) -> str:
    return OPERATOR.sign(body, ns, pack, "uid-1", gen)


def test_a_signed_config_verifies_and_is_still_a_plain_config() -> None:
    text = signed()
    result = signing.verify(text, TRUSTED, "team-a", "gw")
    assert (result.namespace, result.pack, result.uid, result.generation) == (
        "team-a",
        "gw",
        "uid-1",
        3,
    )
    assert result.body == BODY
    assert load_text(text).hash == load_text(BODY).hash  # the signature line is a comment


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BODY, "unsigned"),
        (signed().replace("version: 1.0.0", "version: 1.0.1"), "bad-signature"),
        (signed().replace("gen=3", "gen=9"), "bad-signature"),
        (signing.Signer.generate().sign(BODY, "team-a", "gw", "uid-1", 3), "unknown-key"),
        (signed(ns="team-b"), "wrong-pack"),
        (signed(pack="other"), "wrong-pack"),
        ("# packgate-signature: v1 key=zz\n" + BODY, "malformed"),
    ],
)
def test_anything_else_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(signing.SignatureError) as refused:
        signing.verify(text, TRUSTED, "team-a", "gw")
    assert refused.value.reason == reason


def test_a_flipped_signature_bit_is_refused() -> None:
    header, body = signing.split(signed())
    prefix, sig = header.rsplit("sig=", 1)
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 0x01  # a bit of the signature itself: the last base64 character may be padding bits
    flipped = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    tampered = f"{prefix}sig={flipped}\n{body}"
    with pytest.raises(signing.SignatureError) as refused:
        signing.verify(tampered, TRUSTED)
    assert refused.value.reason == "bad-signature"


def test_rollback_is_an_older_generation_of_the_same_pack() -> None:
    current = signing.verify(signed(gen=5), TRUSTED)
    assert not signing.newer_or_same(signing.verify(signed(gen=4), TRUSTED), current)
    assert signing.newer_or_same(signing.verify(signed(gen=5), TRUSTED), current)
    recreated = signing.verify(OPERATOR.sign(BODY, "team-a", "gw", "uid-2", 1), TRUSTED)
    assert signing.newer_or_same(recreated, current)  # a new pack of the same name


def test_trusted_keys_parse_strictly_and_rotation_lists_several() -> None:
    new = signing.Signer.generate()
    both = signing.parse_trusted(
        signing.trusted_env([OPERATOR.trusted_entry(), new.trusted_entry()])
    )
    assert set(both) == {OPERATOR.key_id, new.key_id}
    assert signing.verify(new.sign(BODY, "n", "p", "u", 1), both).pack == "p"
    for bad in ("", "nope", f"{new.key_id}:{OPERATOR.trusted_entry().split(':')[1]}"):
        with pytest.raises(signing.SignatureError):
            signing.parse_trusted(bad)


def test_the_private_key_round_trips_through_pem() -> None:
    again = signing.Signer.from_pem(OPERATOR.private_pem())
    assert again.key_id == OPERATOR.key_id
    with pytest.raises(signing.SignatureError):
        signing.Signer.from_pem(b"not a key")
