"""The hub publishes only what the operator signed for that very pack, never an older generation;
anything else found in a packgate ConfigMap is `Damaged` (and rendered again by the operator)."""

from __future__ import annotations

from typing import Any

import pytest
from packgate_operator.hub import Published
from packgate_operator.propagate import Damaged, published_of
from packgate_policy import load_text, signing

BODY = "pack: {name: gw, version: 1.0.0}\nproviders: {targets: [{id: t, provider: openai}]}\n"
OPERATOR = signing.Signer.generate()
TRUSTED = signing.parse_trusted(OPERATOR.trusted_entry())


def configmap(text: str, pack: str = "gw", name: str = "packgate-gw") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "annotations": {"packgate.dev/policy-pack": pack},
        },
        "data": {"policy.yaml": text},
    }


def test_the_operator_s_signed_config_is_published_with_its_own_hash() -> None:
    text = OPERATOR.sign(BODY, "team-a", "gw", "u1", 4)
    item = published_of(configmap(text), TRUSTED)
    assert (item.hash, item.uid, item.generation, item.text) == (
        load_text(BODY).hash,
        "u1",
        4,
        text,
    )


@pytest.mark.parametrize(
    ("cm", "says"),
    [
        (configmap(BODY), "no packgate operator signature"),
        (configmap(OPERATOR.sign(BODY, "team-a", "other", "u1", 4), pack="gw"), "PolicyPack other"),
        (configmap(OPERATOR.sign(BODY, "team-b", "gw", "u1", 4)), "namespace team-b"),
        (configmap(OPERATOR.sign(BODY, "team-a", "gw", "u1", 4), name="packgate-x"), "names no"),
        (configmap(signing.Signer.generate().sign(BODY, "team-a", "gw", "u1", 4)), "not trust"),
    ],
)
def test_anything_else_is_damaged(cm: dict[str, Any], says: str) -> None:
    with pytest.raises(Damaged, match=says):
        published_of(cm, TRUSTED)


def test_an_older_generation_than_the_one_served_is_a_rollback() -> None:
    served = Published("team-a", "gw", "sha256:x", "", "u1", 5)
    with pytest.raises(Damaged, match="rollback"):
        published_of(configmap(OPERATOR.sign(BODY, "team-a", "gw", "u1", 4)), TRUSTED, served)
    # A pack deleted and created again starts over at generation 1 with a new uid.
    assert (
        published_of(
            configmap(OPERATOR.sign(BODY, "team-a", "gw", "u2", 1)), TRUSTED, served
        ).generation
        == 1
    )
