"""The pod registry and the hub behind status counts and propagation: a change wakes every waiting
subscription at once, a sidecar that already runs the current hash waits, counts follow reports."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from packgate_operator.hub import Hub, Published
from packgate_operator.pods import PodRegistry, Report, counts


def pod(
    name: str, uid: str, *, sidecar: bool = True, pack: str = "gw", opted: bool = True
) -> dict[str, Any]:
    annotations = {"packgate.dev/policy-pack": pack}
    if opted:
        annotations["packgate.dev/inject"] = "true"
    if sidecar:
        annotations["packgate.dev/status"] = json.dumps({"pack": pack, "configHash": "h1"})
    init = [{"name": "packgate-sidecar", "image": "x"}] if sidecar else []
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "annotations": annotations},
        "spec": {"initContainers": init, "containers": [{"name": "app"}]},
    }


def test_registry_tracks_opted_in_pods_by_pack() -> None:
    registry = PodRegistry()
    assert registry.update(None, pod("a", "1")) == {("ns", "gw")}
    assert registry.update(None, pod("b", "2", sidecar=False)) == {("ns", "gw")}
    assert registry.update(None, pod("c", "3", opted=False)) == set()
    assert sorted(p.name for p in registry.pods(("ns", "gw"))) == ["a", "b"]
    assert registry.get("1") is not None and registry.get("1").injected_hash == "h1"  # type: ignore[union-attr]
    # An unchanged pod event is not news; moving to another pack touches both.
    assert registry.update("MODIFIED", pod("a", "1")) == set()
    moved = registry.update("MODIFIED", pod("a", "1", pack="other"))
    assert moved == {("ns", "gw"), ("ns", "other")}
    assert registry.update("DELETED", pod("a", "1", pack="other")) == {("ns", "other")}
    assert len(registry) == 1


def test_counts_follow_fresh_reports_of_the_current_hash() -> None:
    registry = PodRegistry()
    for i in range(3):
        registry.update(None, pod(f"p{i}", str(i)))
    registry.update(None, pod("bare", "9", sidecar=False))
    now = time.monotonic()
    reports = {
        "0": Report("h2", now, polling=True),
        "1": Report("h1", now, polling=True),  # still on the old config
        "2": Report("h2", now - 1000, polling=False),  # gone quiet
    }
    result = counts(registry.pods(("ns", "gw")), reports, "h2", now, fresh_seconds=60)
    assert result.as_status() == {"injectedPods": 3, "podsInSync": 1, "podsWithoutSidecar": 1}


async def test_hub_answers_at_once_when_the_sidecar_is_behind() -> None:
    hub = Hub()
    hub.publish(Published("ns", "gw", "h1", "text1"))
    got = await hub.wait("ns", "gw", {"h0"}, 5)
    assert got is not None and got.hash == "h1"


async def test_hub_parks_a_current_sidecar_and_wakes_all_on_change() -> None:
    hub = Hub()
    hub.publish(Published("ns", "gw", "h1", "text1"))
    # Waits far longer than the test may take: only the publish can end them in time.
    waiters = [asyncio.create_task(hub.wait("ns", "gw", {"h1"}, 300)) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    hub.publish(Published("ns", "gw", "h2", "text2"))
    results = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert {r.hash for r in results if r} == {"h2"} and all(results)


async def test_hub_wait_times_out_and_ignores_other_packs() -> None:
    hub = Hub()
    hub.publish(Published("ns", "gw", "h1", "t"))
    waiter = asyncio.create_task(hub.wait("ns", "gw", {"h1"}, 0.2))
    hub.publish(Published("ns", "other", "h9", "t"))
    hub.publish(Published("ns2", "gw", "h9", "t"))
    assert await waiter is None


async def test_a_refused_hash_is_not_sent_again() -> None:
    hub = Hub()
    hub.publish(Published("ns", "gw", "bad", "t"))
    # running h1, was sent "bad" and refused it: nothing new to send.
    assert await hub.wait("ns", "gw", {"h1", "bad"}, 0.1) is None


def test_snapshot_drops_what_vanished_in_that_namespace_only() -> None:
    changed: list[tuple[str, str]] = []
    hub = Hub(on_change=changed.append)
    hub.publish(Published("a", "p1", "h", "t"))
    hub.publish(Published("a", "p2", "h", "t"))
    hub.publish(Published("b", "p3", "h", "t"))
    hub.replace_namespace_snapshot("a", [Published("a", "p1", "h", "t")])
    assert hub.current("a", "p2") is None
    assert hub.current("a", "p1") is not None and hub.current("b", "p3") is not None
    assert changed[-1] == ("a", "p2")


def test_reports_change_counts_only_when_the_hash_changes() -> None:
    changed: list[tuple[str, str]] = []
    hub = Hub(on_change=changed.append)
    hub.report("uid", ("ns", "gw"), "h1", polling=True)
    hub.report("uid", ("ns", "gw"), "h1", polling=False)
    hub.report("uid", ("ns", "gw"), "h1", polling=True)
    assert changed == [("ns", "gw")]
    hub.report("uid", ("ns", "gw"), "h2", polling=True)
    assert len(changed) == 2
    assert hub.subscriptions == 1
