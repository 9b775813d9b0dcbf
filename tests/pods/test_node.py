"""The local node runs real pods from the packgate image, contained in the run's sandbox.

These guard the harness every real-pod test stands on: a pod is scheduled, started from the
locally built image, resolves and reaches the apiserver through the `kubernetes` Service
(cluster DNS -> ClusterIP -> kube-proxy -> the apiserver inside the sandbox), and its logs come
back through the apiserver -> kubelet path.
"""

from __future__ import annotations

import json

import pytest
from image import BuiltImage
from localcluster import LocalCluster
from node import Node

from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.pods]

# Runs in the pod: read the projected service-account token and ask the apiserver who we are,
# through the Service name every in-cluster client uses.
PROBE = """
import json, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
req = urllib.request.Request(
    "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}',
    headers={"Authorization": "Bearer " + open(sa + "token").read(),
             "Content-Type": "application/json"}, method="POST")
review = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
print(review["status"]["userInfo"]["username"])
"""


def test_pod_from_the_image_reaches_the_apiserver_through_the_kubernetes_service(
    cluster: LocalCluster, node: Node, packgate_image: BuiltImage, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": packgate_image.name,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", PROBE],
                    "securityContext": {"readOnlyRootFilesystem": True},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def phase() -> str:
        got = json.loads(
            cluster.kubectl("get", "pod", "probe", "-n", namespace, "-o", "json").stdout
        )
        return str(got.get("status", {}).get("phase", ""))

    wait_for(lambda: phase() in ("Succeeded", "Failed"), timeout=60, what="the probe pod to finish")
    logs = cluster.kubectl("logs", "probe", "-n", namespace).stdout
    assert phase() == "Succeeded", logs
    assert logs.strip() == f"system:serviceaccount:{namespace}:default"
    got = json.loads(cluster.kubectl("get", "pod", "probe", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["nodeName"] == node.name
    # The image runs as the Dockerfile's non-root user.
    assert got["status"]["containerStatuses"][0]["imageID"]
