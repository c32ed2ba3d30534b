"""The real control plane behind the emulator's face: `RealCluster` offers what the
integration tests call on `kube_api` (the emulator's in-process `create`/`get`/`list`/`patch`/
`delete`, `url`, `write_kubeconfig`, `settle`, `set_pod_status`, `bind_pod`) over the session's
`real_control_plane`, so that one test body runs against both (see `kube_api` in kube.py).

One kube-apiserver serves the whole session, so every test starts from a clean state: `clean()`
(at the end of each test) deletes what the test left in `default` and in the namespaces it
made, the Nodes and the cluster-scoped objects it made, finalizers stripped first (the
in-process operator that owns them is stopped by then), and waits until they are gone. CRDs are
kept: creating one that exists is accepted (409 is fine) and every create of a CRD returns once
it is Established, as `kubectl wait --for condition=established` would.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailfleet_sandbox import control_plane, kubelet
from mailfleet_sandbox.cluster_api import ClusterApi
from mailfleet_sandbox.kube.errors import ApiError

from sandbox_fixtures.control_plane import ThreadedControlPlane

JSON = dict[str, Any]

KEEP_NAMESPACED = {
    ("Service", "kubernetes"), ("Endpoints", "kubernetes"), ("EndpointSlice", "kubernetes"),
    ("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt"),
}
"""What kube-apiserver and the controller manager keep in every (or the default) namespace."""

CLEANED_CLUSTER_KINDS = {
    "Node", "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "CSIDriver", "RuntimeClass",
}
"""Cluster-scoped kinds a test may create (it, the chart or the node agent): those not in the
session's first snapshot are deleted after each test. CRDs stay (their creation is
idempotent); APIServices, IPAddresses and the like belong to the control plane."""

SKIPPED_GROUPS = {"events.k8s.io"}
"""Served again under another group (v1 Events): cleaned once."""


@dataclass(frozen=True)
class Resource:
    group_version: str
    plural: str
    kind: str
    namespaced: bool


class RealCluster:
    """The session's real control plane, with the emulator's in-process calls."""

    def __init__(self, plane: ThreadedControlPlane) -> None:
        assert plane.api is not None
        self.plane = plane
        self.api: ClusterApi = plane.api
        self.url = plane.plane.url
        self._baseline = {(r.kind, obj["metadata"]["name"])
                          for r in self.resources() if not r.namespaced
                          for obj in self._items(r, None)}

    # ------------------------------------------------------------------ the emulator's calls
    def create(self, obj: JSON, namespace: str = "") -> JSON:
        if obj.get("kind") == "CustomResourceDefinition":
            return self.ensure_crd(obj)
        return self.api.create(obj, namespace)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> JSON:
        return self.api.get(api_version, kind, name, namespace)

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> builtins.list[JSON]:
        return self.api.list(api_version, kind, namespace, label_selector)

    def patch(self, api_version: str, kind: str, name: str, patch: JSON,
              namespace: str = "", subresource: str = "") -> JSON:
        return self.api.patch(api_version, kind, name, patch, namespace, subresource)

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "",
               propagation: str | None = None, grace_period: int | None = None) -> JSON:
        return self.api.delete(api_version, kind, name, namespace, propagation, grace_period)

    def apply(self, obj: JSON, *, field_manager: str, force: bool = True) -> JSON:
        return self.api.apply(obj, field_manager=field_manager, force=force)

    def bind_pod(self, namespace: str, name: str, node_name: str) -> None:
        self.api.bind_pod(namespace, name, node_name)

    async def set_pod_status(self, namespace: str, name: str, **status: Any) -> JSON:
        return await self.api.set_pod_status(namespace, name, **status)

    async def settle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """No-op: the real controllers are other processes; tests wait on conditions."""

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """An admin (client certificate) kubeconfig for kubectl, kopf and the operator."""
        return control_plane.write_kubeconfig(Path(path), server=self.url, ca=self.api.ca,
                                              user="admin", cert=self.api.cert,
                                              key=self.api.key, namespace=namespace)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The admin TLS identity, for the sandbox's aiohttp clients (ExternalDNS...)."""
        return self.plane.plane.ssl_context()

    # ------------------------------------------------------------------ CRDs
    def ensure_crd(self, crd: JSON, within: float = 60.0) -> JSON:
        """Create `crd` unless it exists (409 is fine); return it once Established."""
        name = crd["metadata"]["name"]
        try:
            self.api.create(crd)
        except ApiError as error:
            if error.code != 409:
                raise
        deadline = time.monotonic() + within
        while True:
            current = self.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in conditions) and self._served(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} not Established within {within}s")
            time.sleep(0.05)

    def wait_for_garbage_collection(self, api_version: str, kind: str, within: float = 120.0
                                    ) -> None:
        """Return once the garbage collector deletes dependents of a `kind` object: it
        learns new resources from discovery every 30 s, and until then children of a deleted
        custom resource stay. Probed with a throwaway object owning a ConfigMap."""
        owner = self.api.create({"apiVersion": api_version, "kind": kind,
                                 "metadata": {"name": "gc-probe", "namespace": "default"}})
        self.api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "gc-probe", "namespace": "default", "ownerReferences": [{
                "apiVersion": api_version, "kind": kind, "name": "gc-probe",
                "uid": owner["metadata"]["uid"]}]}})
        self.api.delete(api_version, kind, "gc-probe", "default")
        deadline = time.monotonic() + within
        while True:
            try:
                self.api.get("v1", "ConfigMap", "gc-probe", "default")
            except ApiError as error:
                if error.code == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"the garbage collector ignored {kind} for {within}s")
            time.sleep(0.2)

    def _served(self, crd: JSON) -> bool:
        """Lists of the CRD's resource answer (not 429 while its storage initialises)."""
        spec = crd["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        try:
            self.api.request("GET", f"/apis/{spec['group']}/{version}/{spec['names']['plural']}")
        except ApiError as error:
            if error.code in (404, 429, 503):
                return False
            raise
        return True

    # ------------------------------------------------------------------ clean-up
    def resources(self) -> builtins.list[Resource]:
        """Every listable, deletable resource at its group's preferred version."""
        versions = ["v1"]
        for group in self.api.request("GET", "/apis").get("groups") or []:
            if group["name"] not in SKIPPED_GROUPS:
                versions.append(group["preferredVersion"]["groupVersion"])
        out = []
        for gv in versions:
            base = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            try:
                listing = self.api.request("GET", base)
            except ApiError:
                continue  # a group going away mid-discovery
            for res in listing.get("resources") or []:
                verbs = set(res.get("verbs") or [])
                if "/" not in res["name"] and {"list", "delete"} <= verbs:
                    out.append(Resource(gv, res["name"], res["kind"], bool(res["namespaced"])))
        return out

    def _items(self, resource: Resource, namespace: str | None) -> builtins.list[JSON]:
        base = ("/api/v1" if resource.group_version == "v1"
                else f"/apis/{resource.group_version}")
        if namespace:
            base += f"/namespaces/{namespace}"
        deadline = time.monotonic() + 30.0
        while True:
            try:
                listed = self.api.request("GET", f"{base}/{resource.plural}")
                return builtins.list(listed.get("items") or [])
            except ApiError as error:
                if error.code in (404, 405):
                    return []
                # 429 "storage is (re)initializing": a CRD's storage just after it appeared
                if error.code != 429 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def _leftovers(self, resources: builtins.list[Resource]
                   ) -> Iterator[tuple[Resource, JSON]]:
        namespaces = ["default"] + [
            ns["metadata"]["name"] for ns in self.api.list("v1", "Namespace")
            if ("Namespace", ns["metadata"]["name"]) not in self._baseline]
        for resource in resources:
            if resource.namespaced:
                for namespace in namespaces:
                    for obj in self._items(resource, namespace):
                        if (resource.kind, obj["metadata"]["name"]) not in KEEP_NAMESPACED:
                            yield resource, obj
            elif resource.kind in CLEANED_CLUSTER_KINDS:
                for obj in self._items(resource, None):
                    if (resource.kind, obj["metadata"]["name"]) not in self._baseline:
                        yield resource, obj

    def _remove(self, resource: Resource, obj: JSON) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or ""
        name = meta["name"]
        path = ("/api/v1" if resource.group_version == "v1"
                else f"/apis/{resource.group_version}")
        if namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{resource.plural}/{name}"
        try:
            if meta.get("finalizers") and resource.kind != "Namespace":
                self.api.request("PATCH", path, {"metadata": {"finalizers": None}},
                                 content_type="application/merge-patch+json")
            if meta.get("deletionTimestamp") and resource.kind == "Namespace":
                return  # the namespace controller finishes it once its content is gone
            self.api.request("DELETE", path, {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "propagationPolicy": "Background"})
        except ApiError as error:
            if error.code not in (404, 409):
                raise

    def clean(self, within: float = 90.0) -> None:
        """Delete what tests left (see the module's docstring) and wait until it is gone."""
        resources = self.resources()
        # Workload controllers first, so that they stop making pods while pods go.
        order = {"Deployment": 0, "StatefulSet": 0, "DaemonSet": 0, "Job": 0, "CronJob": 0,
                 "ReplicaSet": 1, "Namespace": 3, "Node": 2}
        resources.sort(key=lambda r: order.get(r.kind, 1))
        deadline = time.monotonic() + within
        while True:
            left = builtins.list(self._leftovers(resources))
            if not left:
                break
            if time.monotonic() > deadline:
                names = sorted(f"{r.kind}/{o['metadata'].get('namespace', '')}/"
                               f"{o['metadata']['name']}" for r, o in left)
                raise AssertionError(f"could not clean the real control plane: {names[:20]}")
            events = {(r.group_version, r.plural, o["metadata"].get("namespace") or "")
                      for r, o in left if r.kind == "Event"}
            for gv, plural, namespace in events:  # one call for what may be hundreds
                base = "/api/v1" if gv == "v1" else f"/apis/{gv}"
                self.api.request("DELETE", f"{base}/namespaces/{namespace}/{plural}")
            for resource, obj in left:
                if resource.kind != "Event":
                    self._remove(resource, obj)
            time.sleep(0.1)
        self._clean_node_leases()

    def _clean_node_leases(self) -> None:
        nodes = {n["metadata"]["name"] for n in self.api.list("v1", "Node")}
        for lease in self.api.list("coordination.k8s.io/v1", "Lease", "kube-node-lease"):
            name = lease["metadata"]["name"]
            if name not in nodes:
                try:
                    self.api.delete("coordination.k8s.io/v1", "Lease", name, "kube-node-lease")
                except ApiError as error:
                    if error.code != 404:
                        raise


@contextlib.asynccontextmanager
async def node_heartbeats(api: Any, nodes: Iterable[str],
                          interval: float = 1.0) -> AsyncIterator[None]:
    """Renew the `kube-node-lease` Leases of Nodes a test made by hand, as their kubelets
    would, so that the node-lifecycle controller leaves their Ready condition (whatever the
    test posts) and taints alone. Nothing to do on the emulator, which has no such
    controller."""
    if not isinstance(api, RealCluster):
        yield
        return
    names = builtins.list(nodes)

    def renew() -> None:
        for name in names:
            node = api.get("v1", "Node", name)
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": kubelet.NODE_LEASE_NAMESPACE,
                                  "ownerReferences": [{
                                      "apiVersion": "v1", "kind": "Node", "name": name,
                                      "uid": node["metadata"]["uid"]}]},
                     "spec": {"holderIdentity": name,
                              "leaseDurationSeconds": kubelet.NODE_LEASE_SECONDS,
                              "renewTime": kubelet.micro_time()}}
            try:
                api.patch("coordination.k8s.io/v1", "Lease", name,
                          {"spec": lease["spec"]}, kubelet.NODE_LEASE_NAMESPACE)
            except ApiError as error:
                if error.code != 404:
                    raise
                api.create(lease)

    async def loop() -> None:
        while True:
            await asyncio.to_thread(renew)
            await asyncio.sleep(interval)

    await asyncio.to_thread(renew)
    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
