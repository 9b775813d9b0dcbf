"""The local control plane is a real one: CRDs are served, controllers run, RBAC denies.

These tests guard the foundation every integration and end-to-end test stands on; if one of
them fails, the harness (not the product) is broken.
"""

from __future__ import annotations

import json

import pytest
from localcluster import LocalCluster

from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def test_version_is_the_pinned_release(cluster: LocalCluster) -> None:
    status, body = cluster.get_raw("/version")
    assert status == 200
    assert json.loads(body)["gitVersion"] == "v1.37.2"


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.harness.packgate.dev}
spec:
  group: harness.packgate.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
"""


def test_custom_resource_definition_is_served_and_validated(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.harness.packgate.dev", "--timeout=30s"
    )
    widget = "apiVersion: harness.packgate.dev/v1\nkind: Widget\nmetadata: {name: w}\n"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget + "spec: {size: 3}\n")
    got = json.loads(cluster.kubectl("get", "widget", "w", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["size"] == 3
    rejected = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget + "spec: {size: 0}\n", check=False
    )
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: registry.invalid/app:1}]
"""


def test_controller_manager_creates_replicasets_and_pods(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)

    def pods() -> list[dict[str, object]]:
        out = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json")
        items: list[dict[str, object]] = json.loads(out.stdout)["items"]
        return items

    wait_for(lambda: len(pods()) == 2, what="2 pods from the Deployment")
    replicasets = json.loads(
        cluster.kubectl("get", "replicasets", "-n", namespace, "-o", "json").stdout
    )["items"]
    assert len(replicasets) == 1
    owner = pods()[0]["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert owner["kind"] == "ReplicaSet"


def test_garbage_collector_deletes_dependents(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: "{uid}"}}]
"""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=dependent)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    def gone() -> bool:
        got = cluster.kubectl("get", "configmap", "dependent", "-n", namespace, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    wait_for(gone, what="the dependent ConfigMap to be garbage-collected")


def test_rbac_denies_an_unprivileged_user(cluster: LocalCluster, namespace: str) -> None:
    nobody = cluster.user_kubeconfig("nobody", ["developers"])
    denied = cluster.kubectl("get", "secrets", "-n", namespace, kubeconfig=nobody, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    cluster.kubectl(
        "create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", namespace
    )
    cluster.kubectl(
        "create", "rolebinding", "nobody-read", "--role=read-cm", "--user=nobody", "-n", namespace
    )
    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "configmaps", "-n", namespace, kubeconfig=nobody, check=False
            ).returncode
            == 0
        ),
        what="the RoleBinding to grant access",
    )
    still_denied = cluster.kubectl(
        "get", "secrets", "-n", namespace, kubeconfig=nobody, check=False
    )
    assert still_denied.returncode != 0
