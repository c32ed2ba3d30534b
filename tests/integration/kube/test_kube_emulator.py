"""Emulator-only behaviour: watch churn and resume, 410 Expired, bookmarks, persistence,
and the built-in controllers (StatefulSet, Deployment) with the pod status helper."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from mailfleet_sandbox.kube import ApiServer

CM = "/api/v1/namespaces/default/configmaps"


async def _until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return value


async def _watch(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(url) as resp:
        assert resp.status == 200
        return [json.loads(line) async for line in resp.content if line.strip()]


async def test_watch_under_churn_resumes_exactly_once_in_order(kube_api: ApiServer) -> None:
    """1,000 objects changed by several writers: a watcher that reconnects from its last
    resourceVersion sees every change exactly once, in resourceVersion order."""
    async with aiohttp.ClientSession(kube_api.url) as session:
        async with session.get(CM) as resp:
            start_rv = (await resp.json())["metadata"]["resourceVersion"]

        async def writer(w: int) -> None:
            for i in range(w, 1000, 4):
                body = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"churn-{i}"}, "data": {"v": "0"}}
                async with session.post(CM, json=body) as resp:
                    assert resp.status == 201
                if i % 3 == 0:
                    async with session.patch(f"{CM}/churn-{i}", data=json.dumps(
                            {"data": {"v": "1"}}), headers={
                            "Content-Type": "application/merge-patch+json"}) as resp:
                        assert resp.status == 200

        writers = asyncio.gather(*(writer(w) for w in range(4)))
        seen: list[tuple[int, str, str]] = []
        rv = start_rv
        expected = 1000 + len(range(0, 1000, 3))
        while len(seen) < expected:
            # short watches force many reconnects from the last seen resourceVersion
            events = await _watch(session, f"{CM}?watch=true&resourceVersion={rv}"
                                  "&timeoutSeconds=1&allowWatchBookmarks=true")
            for ev in events:
                rv = ev["object"]["metadata"]["resourceVersion"]
                if ev["type"] != "BOOKMARK":
                    seen.append((int(rv), ev["type"], ev["object"]["metadata"]["name"]))
        await writers
    assert len(seen) == expected
    assert len({s[0] for s in seen}) == expected, "an event was delivered twice"
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert sum(1 for s in seen if s[1] == "ADDED") == 1000


async def test_too_old_resource_version_is_410_and_bookmarks_are_sent() -> None:
    """Once the kept history no longer covers a resourceVersion, a watch from it gets an
    ERROR event with Status 410 Expired; allowWatchBookmarks brings BOOKMARK events that
    carry a resourceVersion to resume from."""
    async with ApiServer(history=5, bookmark_interval=0.2) as api, \
            aiohttp.ClientSession(api.url) as session:
        for i in range(10):
            api.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"old-{i}", "namespace": "default"}})
        events = await _watch(session, f"{CM}?watch=true&resourceVersion=2&timeoutSeconds=1")
        assert events[0]["type"] == "ERROR"
        assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
        now = api.store.rv
        events = await _watch(session, f"{CM}?watch=true&resourceVersion={now}"
                              "&allowWatchBookmarks=true&timeoutSeconds=1")
        marks = [e for e in events if e["type"] == "BOOKMARK"]
        assert marks and int(marks[-1]["object"]["metadata"]["resourceVersion"]) >= now


async def test_continue_token_expires_with_the_history() -> None:
    """A continue token is served from the history (current objects with later events
    undone); once compacted past its version it is 410 Expired, as after an etcd
    compaction."""
    async with ApiServer(history=5) as api, aiohttp.ClientSession(api.url) as session:
        for i in range(3):
            api.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"page-{i}", "namespace": "default"}})
        async with session.get(f"{CM}?limit=1") as resp:
            token = (await resp.json())["metadata"]["continue"]
        async with session.get(f"{CM}?limit=1&continue={token}") as resp:
            assert resp.status == 200
        for i in range(10):
            api.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"churn-{i}", "namespace": "default"}})
        async with session.get(f"{CM}?limit=1&continue={token}") as resp:
            body = await resp.json()
            assert (resp.status, body["reason"]) == (410, "Expired")


async def test_sqlite_keeps_objects_across_restart(tmp_path: Path) -> None:
    """With a SQLite file the sandbox survives a restart: objects, uids and the
    resourceVersion counter continue; watch history does not (older versions get 410)."""
    db = tmp_path / "kube.db"
    async with ApiServer(db_path=db) as api:
        made = api.create({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "kept", "namespace": "default"},
                           "data": {"a": "b"}})
        rv = int(made["metadata"]["resourceVersion"])
    async with ApiServer(db_path=db) as api:
        got = api.get("v1", "ConfigMap", "kept", "default")
        assert got["metadata"]["uid"] == made["metadata"]["uid"] and got["data"] == {"a": "b"}
        again = api.create({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "next", "namespace": "default"}})
        assert int(again["metadata"]["resourceVersion"]) > rv


def _sts(replicas: int, image: str = "sender:1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "pool", "namespace": "default"},
            "spec": {"replicas": replicas, "serviceName": "pool",
                     "selector": {"matchLabels": {"app": "pool"}},
                     "template": {"metadata": {"labels": {"app": "pool"}},
                                  "spec": {"containers": [{"name": "s", "image": image}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "spool"}, "spec": {
                         "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}}]}}


async def _ready_all(api: ApiServer, selector: str = "app=pool") -> None:
    for pod in api.list("v1", "Pod", "default", selector):
        if pod["status"].get("phase") != "Running":
            await api.set_pod_status("default", pod["metadata"]["name"], phase="Running",
                                     ready=True, pod_ip="127.0.0.10")


def _pods(api: ApiServer) -> list[str]:
    return sorted(p["metadata"]["name"] for p in api.list("v1", "Pod", "default", "app=pool"))


async def test_statefulset_ordinals_pvcs_scaling_and_rolling_update(kube_api: ApiServer) -> None:
    """A StatefulSet makes pods name-0..N-1 one at a time (OrderedReady: the next only when
    the previous is Running and Ready), a PVC per pod from volumeClaimTemplates, scales
    down from the highest ordinal, replaces pods highest ordinal first on a template
    change, and reports replica counts and observedGeneration in status."""
    api = kube_api
    api.create(_sts(3))
    await _until(lambda: _pods(api) == ["pool-0"])
    await api.settle()
    assert _pods(api) == ["pool-0"]  # waits for pool-0 to be ready
    for _ in range(3):
        await _ready_all(api)
        await api.settle()
    assert _pods(api) == ["pool-0", "pool-1", "pool-2"]
    claims = sorted(c["metadata"]["name"] for c in api.list("v1", "PersistentVolumeClaim",
                                                             "default"))
    assert claims == ["spool-pool-0", "spool-pool-1", "spool-pool-2"]
    status = api.get("apps/v1", "StatefulSet", "pool", "default")["status"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"],
            status["observedGeneration"]) == (3, 3, 3, 1)
    old_uids = {p["metadata"]["name"]: p["metadata"]["uid"]
                for p in api.list("v1", "Pod", "default", "app=pool")}
    api.patch("apps/v1", "StatefulSet", "pool",
              {"spec": {"template": {"spec": {"containers": [{"name": "s",
                                                              "image": "sender:2"}]}}}},
              "default")
    replaced: list[str] = []
    for _ in range(10):
        await api.settle()
        for pod in api.list("v1", "Pod", "default", "app=pool"):
            name = pod["metadata"]["name"]
            if pod["metadata"]["uid"] != old_uids[name] and name not in replaced:
                replaced.append(name)
        await _ready_all(api)
        if len(replaced) == 3:
            break
    assert replaced == ["pool-2", "pool-1", "pool-0"]
    images = {p["spec"]["containers"][0]["image"]
              for p in api.list("v1", "Pod", "default", "app=pool")}
    assert images == {"sender:2"}
    api.patch("apps/v1", "StatefulSet", "pool", {"spec": {"replicas": 1}}, "default")
    await _until(lambda: _pods(api) == ["pool-0"])
    await api.settle()
    status = api.get("apps/v1", "StatefulSet", "pool", "default")["status"]
    assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == \
        (1, 1, 3)


async def test_deployment_through_replicaset_and_gc(kube_api: ApiServer) -> None:
    """A Deployment creates a ReplicaSet which creates pods; status counts follow pod
    readiness; deleting the Deployment garbage-collects the ReplicaSet and its pods."""
    api = kube_api
    api.create({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                             "containers": [{"name": "w", "image": "web:1"}]}}}})
    await _until(lambda: len(api.list("v1", "Pod", "default", "app=web")) == 2)
    await _ready_all(api, "app=web")
    await api.settle()
    status = api.get("apps/v1", "Deployment", "web", "default")["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == \
        (2, 2, 2)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"
    api.delete("apps/v1", "Deployment", "web", "default")
    await _until(lambda: not api.list("v1", "Pod", "default", "app=web")
                 and not api.list("apps/v1", "ReplicaSet", "default"))


def _terminating(api: ApiServer, name: str) -> bool:
    pods = [p for p in api.list("v1", "Pod", "default") if p["metadata"]["name"] == name]
    return bool(pods and pods[0]["metadata"].get("deletionTimestamp"))


async def _run_bound(api: ApiServer, selector: str) -> None:
    """Act as scheduler and kubelet: bind every pod to node-a, Running and Ready."""
    for pod in api.list("v1", "Pod", "default", selector):
        if not pod["metadata"].get("deletionTimestamp") and pod["status"].get(
                "phase") != "Running":
            await api.set_pod_status("default", pod["metadata"]["name"], pod_ip="127.0.0.10",
                                     node_name="node-a")


async def test_statefulset_waits_for_graceful_pod_deletion(kube_api: ApiServer) -> None:
    """Bound pods are deleted gracefully, so the StatefulSet controller sees them
    terminating: scale-down counts them until the kubelet confirms (grace 0), a replacement
    with the same name waits for the old pod to be gone, and the garbage collector's deletion
    of a deleted set's pods is graceful too."""
    api = kube_api
    sts = _sts(2)
    del sts["spec"]["volumeClaimTemplates"]
    api.create(sts)
    for _ in range(2):
        await _until(lambda: api.list("v1", "Pod", "default", "app=pool"))
        await _run_bound(api, "app=pool")
        await api.settle()
    assert _pods(api) == ["pool-0", "pool-1"]
    assert api.get("v1", "Pod", "pool-0", "default")["spec"]["nodeName"] == "node-a"

    api.patch("apps/v1", "StatefulSet", "pool", {"spec": {"replicas": 1}}, "default")
    await _until(lambda: _terminating(api, "pool-1"))
    await api.settle()
    status = api.get("apps/v1", "StatefulSet", "pool", "default")["status"]
    assert (status["replicas"], status["updatedReplicas"]) == (2, 1)
    api.delete("v1", "Pod", "pool-1", "default", grace_period=0)  # the kubelet confirms
    await _until(lambda: api.get("apps/v1", "StatefulSet", "pool", "default")["status"][
        "replicas"] == 1)

    old_uid = api.get("v1", "Pod", "pool-0", "default")["metadata"]["uid"]
    api.delete("v1", "Pod", "pool-0", "default")
    await api.settle()
    assert _terminating(api, "pool-0")
    assert api.get("v1", "Pod", "pool-0", "default")["metadata"]["uid"] == old_uid
    api.delete("v1", "Pod", "pool-0", "default", grace_period=0)
    await _until(lambda: _pods(api) == ["pool-0"] and api.get(
        "v1", "Pod", "pool-0", "default")["metadata"]["uid"] != old_uid)

    await _run_bound(api, "app=pool")
    api.delete("apps/v1", "StatefulSet", "pool", "default")
    await _until(lambda: _terminating(api, "pool-0"))
    api.delete("v1", "Pod", "pool-0", "default", grace_period=0)
    assert _pods(api) == []


async def test_recreate_deployment_waits_for_terminating_pods(kube_api: ApiServer) -> None:
    """The Recreate strategy starts the new ReplicaSet's pods only once every old pod is
    gone, terminating ones included."""
    api = kube_api
    api.create({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                         "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                             "containers": [{"name": "w", "image": "web:1"}]}}}})
    (old,) = await _until(lambda: api.list("v1", "Pod", "default", "app=web"))
    await _run_bound(api, "app=web")
    api.patch("apps/v1", "Deployment", "web", {"spec": {"template": {"spec": {
        "containers": [{"name": "w", "image": "web:2"}]}}}}, "default")
    await _until(lambda: _terminating(api, old["metadata"]["name"]))
    await api.settle()
    assert [p["metadata"]["name"] for p in api.list("v1", "Pod", "default", "app=web")] == \
        [old["metadata"]["name"]]
    api.delete("v1", "Pod", old["metadata"]["name"], "default", grace_period=0)
    (new,) = await _until(lambda: api.list("v1", "Pod", "default", "app=web"))
    assert new["spec"]["containers"][0]["image"] == "web:2"
