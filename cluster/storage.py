"""Volumes for PersistentVolumeClaims on the local node, kept inside the run's own directory.

Why: the chart's audit collector keeps its chains on a PersistentVolumeClaim, and a claim binds
only when something provides a volume. The local cluster has no cloud disks and no CSI driver,
so this is the smallest provisioner that does the job the way a real one does (like
rancher's local-path-provisioner): a default StorageClass whose provisioner is
`packgate.dev/local`, and a loop that answers each Pending claim of that class with a `local`
PersistentVolume pre-bound to the claim (`claimRef`), backed by a fresh directory under the
node's work directory. kube-controller-manager's persistent-volume controller then binds the
pair, and the kubelet mounts it with the pod's fsGroup applied (a `local` volume, unlike a
`hostPath` one, gets its ownership set), so a non-root collector can write to it.

When a claim is deleted its volume is Released; the loop removes the directory and the
PersistentVolume (reclaim policy Delete). Everything it writes lives under `root`, which the node
removes on stop: nothing is written anywhere else on the machine.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any, Protocol

CLASS = "packgate-local"
PROVISIONER = "packgate.dev/local"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


class Api(Protocol):
    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]: ...


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        # One node: a claim can be answered as soon as it exists.
        "volumeBindingMode": "Immediate",
    }


def volume_for(claim: dict[str, Any], path: Path, node: str) -> dict[str, Any]:
    """The PersistentVolume that answers `claim`: pre-bound to it, on `node`, at `path`."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "storageClassName": CLASS,
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "local": {"path": str(path)},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def wanted(claim: dict[str, Any]) -> bool:
    """A claim of our class that no volume answers yet."""
    spec = claim.get("spec", {})
    return (
        spec.get("storageClassName") == CLASS
        and not spec.get("volumeName")
        and claim.get("status", {}).get("phase") == "Pending"
        and not claim["metadata"].get("deletionTimestamp")
        and spec.get("volumeMode", "Filesystem") == "Filesystem"
    )


def released(volume: dict[str, Any]) -> bool:
    """A volume of ours whose claim is gone."""
    annotations = volume["metadata"].get("annotations") or {}
    return annotations.get(PROVISIONED_BY) == PROVISIONER and volume.get("status", {}).get(
        "phase"
    ) in ("Released", "Failed")


def directory_of(volume: dict[str, Any], root: Path) -> Path | None:
    """The directory to remove with `volume`: only ever one this provisioner made under root."""
    local = volume["spec"].get("local", {}).get("path", "")
    path = Path(local)
    return path if local and path.parent == root and ".." not in path.parts else None


class LocalVolumes:
    """The StorageClass and the provisioning loop; start() and stop()."""

    def __init__(self, api: Api, root: Path, node: str, interval: float = 0.5) -> None:
        self.api, self.root, self.node, self.interval = api, root, node, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        status, body = self.api.request(
            "POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class()
        )
        if status not in (201, 409):
            raise RuntimeError(f"creating StorageClass {CLASS}: HTTP {status}: {body[:300]!r}")
        self._thread = threading.Thread(target=self._run, name="local-volumes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception as exc:  # the loop must outlive a failed round
                self.errors.append(repr(exc))
                del self.errors[:-20]

    def sync(self) -> None:
        """One round: answer Pending claims, reclaim Released volumes."""
        for claim in self._list("/api/v1/persistentvolumeclaims"):
            if wanted(claim):
                self._provision(claim)
        for volume in self._list("/api/v1/persistentvolumes"):
            if released(volume):
                self._reclaim(volume)

    def _list(self, path: str) -> list[dict[str, Any]]:
        status, body = self.api.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        return list(json.loads(body)["items"])

    def _provision(self, claim: dict[str, Any]) -> None:
        meta = claim["metadata"]
        path = self.root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        # The kubelet gives the directory the pod's fsGroup; until then only root may enter.
        path.mkdir(mode=0o700, exist_ok=True)
        status, body = self.api.request(
            "POST", "/api/v1/persistentvolumes", volume_for(claim, path, self.node)
        )
        if status not in (201, 409):
            raise RuntimeError(
                f"creating a volume for {meta['namespace']}/{meta['name']}: {body!r}"
            )

    def _reclaim(self, volume: dict[str, Any]) -> None:
        path = directory_of(volume, self.root)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        self.api.request("DELETE", f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
