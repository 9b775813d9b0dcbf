"""The local provisioner's decisions (cluster/storage.py): which claims get a volume, what that
volume is, and which volumes it reclaims. The binding itself is the controller-manager's and
is exercised on the real node (tests/pods/test_collector_pods.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage import (
    CLASS,
    PROVISIONED_BY,
    PROVISIONER,
    directory_of,
    released,
    volume_for,
    wanted,
)


def claim(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "data", "namespace": "ns", "uid": "1234abcd-0000"},
        "spec": {
            "storageClassName": CLASS,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}},
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def test_only_pending_unanswered_claims_of_our_class_get_a_volume() -> None:
    assert wanted(claim())
    assert not wanted(claim(storageClassName="fast-ssd"))
    assert not wanted(claim(volumeName="pvc-1"))
    assert not wanted(claim(volumeMode="Block"))
    bound = claim()
    bound["status"]["phase"] = "Bound"
    assert not wanted(bound)


def test_the_volume_is_pre_bound_to_the_claim_on_the_node() -> None:
    pv = volume_for(claim(), Path("/run-dir/volumes/ns-data-1234abcd"), "node-a")
    assert pv["spec"]["claimRef"]["uid"] == "1234abcd-0000"
    assert pv["spec"]["capacity"] == {"storage": "10Gi"}
    assert pv["spec"]["local"] == {"path": "/run-dir/volumes/ns-data-1234abcd"}
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["node-a"]
    assert pv["metadata"]["annotations"][PROVISIONED_BY] == PROVISIONER


def test_released_volumes_are_ours_and_only_their_own_directory_goes(tmp_path: Path) -> None:
    root = tmp_path / "volumes"

    def volume(path: str, annotations: dict[str, str], phase: str = "Released") -> Any:
        return {
            "metadata": {"name": "pvc-1", "annotations": annotations},
            "spec": {"local": {"path": path}},
            "status": {"phase": phase},
        }

    ours = {PROVISIONED_BY: PROVISIONER}
    assert released(volume(f"{root}/ns-data", ours))
    assert not released(volume(f"{root}/ns-data", ours, phase="Bound"))
    assert not released(volume(f"{root}/ns-data", {PROVISIONED_BY: "someone-else"}))
    assert directory_of(volume(f"{root}/ns-data", ours), root) == root / "ns-data"
    for elsewhere in ("/var/lib/data", f"{root}", f"{root}/a/b", f"{root}/../x", ""):
        assert directory_of(volume(elsewhere, ours), root) is None
