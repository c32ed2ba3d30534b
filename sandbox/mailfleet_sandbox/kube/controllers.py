"""The controllers a cluster runs, in-process: StatefulSet, Deployment -> ReplicaSet -> Pod,
the garbage collector (`garbage`), namespace and CRD cleanup. Pods they create stay Pending
until a node agent or a test sets their status.

Level-based: every event only enqueues the object to reconcile; reconciling reads the store
and converges, one step at a time (e.g. one StatefulSet pod per pass when OrderedReady).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from typing import Any

from mailfleet_sandbox.kube import errors, garbage, selectors
from mailfleet_sandbox.kube.registry import CRD_CLEANUP_FINALIZER, CRD_KEY, NS_KEY, Registry
from mailfleet_sandbox.kube.resources import ResourceType
from mailfleet_sandbox.kube.store import Event

log = logging.getLogger(__name__)
JSON = dict[str, Any]
WorkKey = tuple[str, ...]


def running_and_ready(pod: JSON) -> bool:
    """What workload status counts as ready (a terminating pod may still be)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def terminating(pod: JSON) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pod_ready(pod: JSON) -> bool:
    """Healthy as the StatefulSet controller means it: running, ready, not terminating."""
    return running_and_ready(pod) and not terminating(pod)


def template_hash(template: Any) -> str:
    raw = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


def _owner_ref(owner: JSON, api_version: str, kind: str) -> JSON:
    return {"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _ordinal(sts_name: str, pod_name: str) -> int | None:
    prefix = sts_name + "-"
    if not pod_name.startswith(prefix) or not pod_name[len(prefix):].isdigit():
        return None
    return int(pod_name[len(prefix):])


class Controllers:
    """Runs every controller on one asyncio task fed by store events."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = registry.store
        self.gc = garbage.GarbageCollector(registry)
        self._pending: dict[WorkKey, None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        r = registry
        self.pods = r.resolve("", "v1", "pods")
        self.pvcs = r.resolve("", "v1", "persistentvolumeclaims")
        self.sts = r.resolve("apps", "v1", "statefulsets")
        self.deploys = r.resolve("apps", "v1", "deployments")
        self.rss = r.resolve("apps", "v1", "replicasets")
        self.namespaces = r.resolve("", "v1", "namespaces")

    def start(self) -> None:
        self.store.listeners.append(self._on_event)
        for key, obj in list(self.store.iter_all()):
            self._on_event(Event(0, "ADDED", key, obj, None))
        self._task = asyncio.create_task(self._run(), name="sandbox-controllers")

    async def stop(self) -> None:
        if self._on_event in self.store.listeners:
            self.store.listeners.remove(self._on_event)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def settle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until no work is queued (for tests and benchmarks)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pending:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("controllers did not settle")
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ queueing
    def _enqueue(self, *key: str) -> None:
        self._pending[key] = None
        self._wake.set()

    def _on_event(self, ev: Event) -> None:
        meta = ev.obj.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        if ev.key == "apps/statefulsets":
            self._enqueue("sts", ns, name)
        elif ev.key == "apps/deployments":
            self._enqueue("deploy", ns, name)
        elif ev.key == "apps/replicasets":
            self._enqueue("rs", ns, name)
        for obj in (ev.obj, ev.old):
            for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
                kind = ref.get("kind")
                if kind == "StatefulSet" and ev.key == "/pods":
                    self._enqueue("sts", ns, ref.get("name", ""))
                elif kind == "ReplicaSet" and ev.key == "/pods":
                    self._enqueue("rs", ns, ref.get("name", ""))
                    if ev.type == "DELETED":  # Recreate waits for old pods to be gone
                        self._enqueue_rs_owner(ns, ref.get("name", ""))
                elif kind == "Deployment" and ev.key == "apps/replicasets":
                    self._enqueue("deploy", ns, ref.get("name", ""))
                if ev.type == "DELETED" and ref.get("uid"):
                    self._enqueue("owner", ref["uid"])
        if ev.type != "DELETED" and meta.get("ownerReferences"):
            self._enqueue("owners", ev.key, ns, name)
        if ev.type == "DELETED" and meta.get("uid"):
            self._enqueue("gc", meta["uid"])
        if meta.get("deletionTimestamp"):
            fins = meta.get("finalizers") or []
            if "foregroundDeletion" in fins or "orphan" in fins:
                self._enqueue("fin", ev.key, ns, name)
            if ev.key == NS_KEY:
                self._enqueue("ns", name)
            if ev.key == CRD_KEY:
                self._enqueue("crd", name)
        if ev.type == "DELETED" and ns:
            ns_obj = self.store.get(NS_KEY, "", ns)
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                self._enqueue("ns", ns)
        if ev.type == "DELETED" and ev.key not in (NS_KEY, CRD_KEY):
            for crd in self.store.list(CRD_KEY):
                if crd["metadata"].get("deletionTimestamp"):
                    self._enqueue("crd", crd["metadata"]["name"])

    def _enqueue_rs_owner(self, ns: str, rs_name: str) -> None:
        rs = self.store.get("apps/replicasets", ns, rs_name)
        for ref in ((rs or {}).get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == "Deployment":
                self._enqueue("deploy", ns, ref.get("name", ""))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                key = next(iter(self._pending))
                del self._pending[key]
                try:
                    self._reconcile(key)
                except errors.ApiError as exc:
                    log.debug("controller %s: %s", key, exc)
                except Exception:
                    log.exception("controller %s failed", key)
                await asyncio.sleep(0)

    def _reconcile(self, key: WorkKey) -> None:
        kind = key[0]
        if kind == "sts":
            self.reconcile_statefulset(key[1], key[2])
        elif kind == "deploy":
            self.reconcile_deployment(key[1], key[2])
        elif kind == "rs":
            self.reconcile_replicaset(key[1], key[2])
        elif kind == "gc":
            self.gc.collect_dependents(key[1])
        elif kind == "owner":
            ident = self.store.by_uid.get(key[1])
            if ident is not None:
                self.gc.finish_deletion(*ident)
        elif kind == "owners":
            self.gc.verify_owners(key[1], key[2], key[3])
        elif kind == "fin":
            self.gc.finish_deletion(key[1], key[2], key[3])
        elif kind == "ns":
            self.finish_namespace(key[1])
        elif kind == "crd":
            self.finish_crd(key[1])

    # ----------------------------------------------------------------- helpers
    def _owned(self, owner: JSON, storage_key: str) -> list[JSON]:
        return [o for k, o in self.store.dependents(owner["metadata"]["uid"])
                if k == storage_key and o["metadata"].get("namespace") ==
                owner["metadata"].get("namespace")]

    def _write_status(self, rt: ResourceType, obj: JSON, status: JSON) -> None:
        merged = dict(obj.get("status") or {}, **status)
        if merged == obj.get("status"):
            return
        body = dict(obj, status=merged)
        meta = obj["metadata"]
        self.registry.update(rt, meta.get("namespace", ""), meta["name"], body, "status")

    def _pod_from_template(self, template: JSON, name: str, ns: str, owner_ref: JSON,
                           extra_labels: dict[str, str]) -> JSON:
        tmeta = copy.deepcopy(template.get("metadata") or {})
        meta: JSON = {"namespace": ns, "labels": dict(tmeta.get("labels") or {}, **extra_labels),
                      "ownerReferences": [owner_ref]}
        if tmeta.get("annotations"):
            meta["annotations"] = tmeta["annotations"]
        if name.endswith("-"):
            meta["generateName"] = name
        else:
            meta["name"] = name
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": copy.deepcopy(template.get("spec") or {})}

    # ------------------------------------------------------------- statefulset
    def reconcile_statefulset(self, ns: str, name: str) -> None:
        sts = self.store.get("apps/statefulsets", ns, name)
        if sts is None or sts["metadata"].get("deletionTimestamp"):
            return
        spec = sts.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        revision = f"{name}-{template_hash(template)}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        strategy = spec.get("updateStrategy") or {}
        pods = {}
        for pod in self._owned(sts, "/pods"):
            ordinal = _ordinal(name, pod["metadata"]["name"])
            if ordinal is not None:
                pods[ordinal] = pod
        current_rev = (sts.get("status") or {}).get("currentRevision") or revision
        live = {o: p for o, p in pods.items() if o < replicas}
        all_live_ready = all(pod_ready(p) for p in live.values())
        acted = False
        # Scale up: create missing ordinals in order; OrderedReady waits for predecessors.
        for ordinal in range(replicas):
            if ordinal in pods:
                if ordered and not pod_ready(pods[ordinal]):
                    break
                continue
            self._create_sts_pod(sts, ordinal, revision)
            acted = True
            if ordered:
                break
        # Scale down: highest ordinal first, one at a time and only over healthy pods
        # when OrderedReady (the real controller blocks on unhealthy pods too).
        if not acted:
            for ordinal in sorted((o for o in pods if o >= replicas), reverse=True):
                if pods[ordinal]["metadata"].get("deletionTimestamp"):
                    if ordered:
                        break
                    continue
                if ordered and not all_live_ready:
                    break
                self.gc.delete("/pods", pods[ordinal])
                acted = True
                if ordered:
                    break
        # Rolling update: from the highest ordinal down, delete the first outdated pod;
        # the scale-up pass recreates it at the new revision. Waits for unhealthy pods.
        if not acted and strategy.get("type", "RollingUpdate") == "RollingUpdate" \
                and len(live) == replicas:
            partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
            for ordinal in sorted((o for o in live if o >= partition), reverse=True):
                pod = live[ordinal]
                if terminating(pod):
                    break  # wait until it is gone; the scale-up pass then recreates it
                labels = pod["metadata"].get("labels") or {}
                if labels.get("controller-revision-hash") != revision:
                    if all(pod_ready(p) for o, p in live.items() if o != ordinal):
                        self.gc.delete("/pods", pod)
                    break
                if not pod_ready(pod):
                    break
        # Status from what exists now.
        pods = {}
        for pod in self._owned(sts, "/pods"):
            ordinal = _ordinal(name, pod["metadata"]["name"])
            if ordinal is not None:
                pods[ordinal] = pod
        # as the real controller counts: terminating pods are replicas (and may be ready)
        # but neither current nor updated
        revs = [(p["metadata"].get("labels") or {}).get("controller-revision-hash")
                for p in pods.values() if not terminating(p)]
        updated = sum(1 for r in revs if r == revision)
        if updated == replicas and len(pods) == replicas:
            current_rev = revision
        ready = sum(1 for p in pods.values() if running_and_ready(p))
        self._write_status(self.sts, sts, {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
            "currentReplicas": sum(1 for r in revs if r == current_rev),
            "updatedReplicas": updated, "currentRevision": current_rev,
            "updateRevision": revision, "collisionCount": 0,
        })

    def _create_sts_pod(self, sts: JSON, ordinal: int, revision: str) -> None:
        meta, spec = sts["metadata"], sts.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta["name"]
        pod_name = f"{name}-{ordinal}"
        selector_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        owner = _owner_ref(sts, "apps/v1", "StatefulSet")
        pod = self._pod_from_template(spec.get("template") or {}, pod_name, ns, owner, {
            "controller-revision-hash": revision,
            "statefulset.kubernetes.io/pod-name": pod_name,
            "apps.kubernetes.io/pod-index": str(ordinal)})
        pod_spec = pod["spec"]
        pod_spec["hostname"] = pod_name
        if spec.get("serviceName"):
            pod_spec["subdomain"] = spec["serviceName"]
        retention = spec.get("persistentVolumeClaimRetentionPolicy") or {}
        volumes = pod_spec.setdefault("volumes", [])
        for tpl in spec.get("volumeClaimTemplates") or []:
            tname = (tpl.get("metadata") or {}).get("name", "data")
            claim = f"{tname}-{pod_name}"
            volumes[:] = [v for v in volumes if v.get("name") != tname]
            volumes.append({"name": tname, "persistentVolumeClaim": {"claimName": claim}})
            if self.store.get("/persistentvolumeclaims", ns, claim) is None:
                pvc_meta: JSON = {"name": claim, "namespace": ns, "labels": dict(
                    (tpl.get("metadata") or {}).get("labels") or {}, **selector_labels)}
                if retention.get("whenDeleted") == "Delete":
                    pvc_meta["ownerReferences"] = [dict(owner, controller=False)]
                self.registry.create(self.pvcs, ns, {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": pvc_meta,
                    "spec": copy.deepcopy(tpl.get("spec") or {})})
        self.registry.create(self.pods, ns, pod)

    # --------------------------------------------------------- deployment / rs
    def reconcile_deployment(self, ns: str, name: str) -> None:
        dep = self.store.get("apps/deployments", ns, name)
        if dep is None or dep["metadata"].get("deletionTimestamp"):
            return
        spec = dep.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        thash = template_hash(template)
        owned = self._owned(dep, "apps/replicasets")
        new_rs = next((r for r in owned if (r["metadata"].get("labels") or {}).get(
            "pod-template-hash") == thash), None)
        revision = 1 + max((int((r["metadata"].get("annotations") or {}).get(
            "deployment.kubernetes.io/revision", "0")) for r in owned), default=0)
        olds = [r for r in owned if r is not new_rs]
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        # Recreate starts new pods only when no old pod runs, terminating ones included
        old_pods = sum(1 for r in olds for p in self._owned(r, "/pods")
                       if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        if new_rs is None:
            if recreate and old_pods:
                target = 0
            else:
                target = desired
            tpl = copy.deepcopy(template)
            tpl.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = thash
            selector = copy.deepcopy(spec.get("selector") or {})
            selector.setdefault("matchLabels", {})["pod-template-hash"] = thash
            res = self.registry.create(self.rss, ns, {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{name}-{thash}", "namespace": ns,
                             "labels": dict(tpl["metadata"]["labels"]),
                             "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                             "ownerReferences": [_owner_ref(dep, "apps/v1", "Deployment")]},
                "spec": {"replicas": target, "selector": selector, "template": tpl}})
            new_rs = res.obj
        else:
            want = 0 if recreate and old_pods else desired
            if int((new_rs.get("spec") or {}).get("replicas", 0)) != want:
                self._scale_rs(new_rs, want)
        new_ready = int((new_rs.get("status") or {}).get("readyReplicas", 0))
        old_budget = 0 if recreate else max(0, desired - new_ready)
        for rs in sorted(olds, key=lambda r: r["metadata"]["creationTimestamp"], reverse=True):
            current = int((rs.get("spec") or {}).get("replicas", 0))
            keep = min(current, old_budget)
            old_budget -= keep
            if keep != current:
                self._scale_rs(rs, keep)
        owned = self._owned(dep, "apps/replicasets")
        total = sum(int((r.get("status") or {}).get("replicas", 0)) for r in owned)
        ready = sum(int((r.get("status") or {}).get("readyReplicas", 0)) for r in owned)
        fresh = self.store.get("apps/replicasets", ns, new_rs["metadata"]["name"]) or new_rs
        updated = int((fresh.get("status") or {}).get("replicas", 0))
        stamp = (dep.get("status") or {}).get("conditions") or []
        available = ready >= desired
        conds = _set_conditions(stamp, [
            ("Available", "True" if available else "False",
             "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
             "Deployment has minimum availability." if available else
             "Deployment does not have minimum availability."),
            ("Progressing", "True",
             "NewReplicaSetAvailable" if updated == desired and ready >= desired
             else "ReplicaSetUpdated",
             f'ReplicaSet "{fresh["metadata"]["name"]}" has successfully progressed.'
             if ready >= desired else
             f'ReplicaSet "{fresh["metadata"]["name"]}" is progressing.'),
        ])
        status: JSON = {"observedGeneration": dep["metadata"].get("generation", 1),
                        "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
                        "availableReplicas": ready, "conditions": conds}
        if total - ready > 0:
            status["unavailableReplicas"] = total - ready
        self._write_status(self.deploys, dep, status)
        annotations = dict(dep["metadata"].get("annotations") or {})
        rev = (fresh["metadata"].get("annotations") or {}).get(
            "deployment.kubernetes.io/revision")
        if rev and annotations.get("deployment.kubernetes.io/revision") != rev:
            annotations["deployment.kubernetes.io/revision"] = rev
            latest = self.store.get("apps/deployments", ns, name)
            if latest is not None:
                self.gc.set_meta("apps/deployments", latest, annotations=annotations)

    def _scale_rs(self, rs: JSON, replicas: int) -> None:
        body = copy.deepcopy(rs)
        body["spec"]["replicas"] = replicas
        self.registry.update(self.rss, rs["metadata"]["namespace"], rs["metadata"]["name"], body)

    def reconcile_replicaset(self, ns: str, name: str) -> None:
        rs = self.store.get("apps/replicasets", ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        spec = rs.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        pods = [p for p in self._owned(rs, "/pods")
                if not p["metadata"].get("deletionTimestamp")]
        if len(pods) < desired:
            owner = _owner_ref(rs, "apps/v1", "ReplicaSet")
            for _ in range(desired - len(pods)):
                self.registry.create(self.pods, ns, self._pod_from_template(
                    spec.get("template") or {}, f"{name}-", ns, owner, {}))
        elif len(pods) > desired:
            victims = sorted(pods, key=lambda p: (pod_ready(p), p["metadata"][
                "creationTimestamp"]), reverse=False)[: len(pods) - desired]
            for pod in victims:
                self.gc.delete("/pods", pod)
        pods = [p for p in self._owned(rs, "/pods")
                if not p["metadata"].get("deletionTimestamp")]
        sel = selectors.selector_from_label_selector_object(spec.get("selector"))
        ready = sum(1 for p in pods if pod_ready(p))
        self._write_status(self.rss, rs, {
            "observedGeneration": rs["metadata"].get("generation", 1), "replicas": len(pods),
            "fullyLabeledReplicas": sum(1 for p in pods if sel.matches(
                p["metadata"].get("labels"))),
            "readyReplicas": ready, "availableReplicas": ready})

    def finish_namespace(self, name: str) -> None:
        ns = self.store.get(NS_KEY, "", name)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        remaining = 0
        for key, obj in list(self.store.iter_all()):
            if obj["metadata"].get("namespace") != name:
                continue
            remaining += 1
            if not obj["metadata"].get("deletionTimestamp"):
                self.gc.delete(key, obj)
        if remaining == 0 or not any(o["metadata"].get("namespace") == name
                                     for _, o in self.store.iter_all()):
            if not ns["metadata"].get("finalizers"):
                self.store.remove(NS_KEY, ns)
            else:
                body = copy.deepcopy(ns)
                body["spec"]["finalizers"] = []
                self.registry.update(self.namespaces, "", name, body)

    def finish_crd(self, name: str) -> None:
        crd = self.store.get(CRD_KEY, "", name)
        if crd is None or not crd["metadata"].get("deletionTimestamp"):
            return
        spec = crd.get("spec") or {}
        key = f"{spec.get('group')}/{(spec.get('names') or {}).get('plural')}"
        objs = self.store.list(key)
        for obj in objs:
            if not obj["metadata"].get("deletionTimestamp"):
                self.gc.delete(key, obj)
        if not self.store.list(key):
            fins = [f for f in crd["metadata"].get("finalizers") or []
                    if f != CRD_CLEANUP_FINALIZER]
            self.gc.set_meta(CRD_KEY, crd, finalizers=fins)


def _set_conditions(existing: list[JSON], wanted: list[tuple[str, str, str, str]]) -> list[JSON]:
    from mailfleet_sandbox.kube.registry import now_rfc3339

    by_type = {c.get("type"): c for c in existing}
    out = []
    for typ, status, reason, message in wanted:
        prev = by_type.get(typ)
        stamp = now_rfc3339()
        when = prev.get("lastTransitionTime", stamp) if prev and prev.get("status") == status \
            else stamp
        update = prev.get("lastUpdateTime", stamp) if prev and prev.get("reason") == reason \
            and prev.get("status") == status else stamp
        out.append({"type": typ, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": when, "lastUpdateTime": update})
    return out
