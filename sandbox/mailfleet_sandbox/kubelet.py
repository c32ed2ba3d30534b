"""What the node agent does differently when it is the kubelet of a real control plane.

Against kube-apiserver with `--authorization-mode=Node,RBAC` and NodeRestriction, a kubelet:

- authenticates as `system:node:<node>` (a client certificate per node), and may only read
  the ConfigMaps and Secrets of pods bound to its node, by name: so `ReferencedObjects` fetches
  exactly those, with the node's identity, and refreshes them every `interval` seconds (the
  kubelet's watch-based config manager does the same by name);
- projects service-account tokens through TokenRequest, bound to the pod, refreshed after 80 %
  of their life (the kubelet's rule);
- renews its Lease in `kube-node-lease` and posts NodeStatus, so that the real node-lifecycle
  controller sees a stopped node and taints and evicts on its own;
- gives pods `KUBERNETES_SERVICE_HOST/PORT`: the API server's loopback address, since nothing
  routes the `kubernetes` Service's cluster IP in the sandbox (no kube-proxy).
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
log = logging.getLogger(__name__)

Request = Callable[..., Awaitable[tuple[int, JSON]]]
"""`ApiClient.request` of a node's client: (method, path, body, content_type, ok)."""

NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_LEASE_SECONDS = 40
TOKEN_SECONDS = 3607
"""What the ServiceAccount admission plugin puts in a pod's kube-api-access volume."""


@dataclass(frozen=True)
class ClusterAccess:
    """How the agent's kubelets reach a real API server."""

    url: str
    ca: Path
    node_credentials: Callable[[str], tuple[Path, Path]]
    """node name -> (client certificate, key) for system:node:<node>."""
    service_host: str
    service_port: int

    def ssl_context(self, node: str) -> ssl.SSLContext:
        cert, key = self.node_credentials(node)
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(cert), str(key))
        return context

    def pod_env(self) -> dict[str, str]:
        port = str(self.service_port)
        return {"KUBERNETES_SERVICE_HOST": self.service_host, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{self.service_host}:{port}"}


def micro_time(moment: float | None = None) -> str:
    stamp = datetime.datetime.fromtimestamp(time.time() if moment is None else moment,
                                            datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def referenced_names(pod: JSON) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod's volumes and env name (pure)."""
    spec = pod.get("spec") or {}
    out: set[tuple[str, str]] = set()
    for volume in spec.get("volumes") or []:
        if volume.get("configMap"):
            out.add(("ConfigMap", volume["configMap"].get("name", "")))
        if volume.get("secret"):
            out.add(("Secret", volume["secret"].get("secretName", "")))
        for part in (volume.get("projected") or {}).get("sources") or []:
            if part.get("configMap"):
                out.add(("ConfigMap", part["configMap"].get("name", "")))
            if part.get("secret"):
                out.add(("Secret", part["secret"].get("name", "")))
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for source in container.get("envFrom") or []:
            if source.get("configMapRef"):
                out.add(("ConfigMap", source["configMapRef"].get("name", "")))
            if source.get("secretRef"):
                out.add(("Secret", source["secretRef"].get("name", "")))
        for var in container.get("env") or []:
            ref = var.get("valueFrom") or {}
            if ref.get("configMapKeyRef"):
                out.add(("ConfigMap", ref["configMapKeyRef"].get("name", "")))
            if ref.get("secretKeyRef"):
                out.add(("Secret", ref["secretKeyRef"].get("name", "")))
    return {(kind, name) for kind, name in out if name}


def token_audiences(pod: JSON) -> set[str]:
    """Audiences of the pod's projected serviceAccountToken sources ("" = the API server)."""
    out = set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for part in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in part:
                out.add(str((part["serviceAccountToken"] or {}).get("audience") or ""))
    return out


class ReferencedObjects:
    """ConfigMaps, Secrets and tokens of the pods bound to the agent's nodes, read with each
    node's identity; `on_change` runs when one of them changed."""

    def __init__(self, request_for: Callable[[str], Request],
                 on_change: Callable[[], None]) -> None:
        self.request_for = request_for
        self.on_change = on_change
        self.items: dict[tuple[str, str, str], JSON] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        return self.items.get((kind, namespace, name))

    def token(self, pod_uid: str, audience: str) -> JSON | None:
        """The lookup shape of a projected token: {"token": ...} or None when not fetched."""
        entry = self._tokens.get((pod_uid, audience))
        return {"token": entry[0]} if entry else None

    async def refresh(self, pods: Iterable[JSON]) -> bool:
        """Fetch what `pods` reference; True when something changed (on_change was called)."""
        changed = False
        for pod in pods:
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            node, ns = spec.get("nodeName") or "", meta.get("namespace", "")
            if not node:
                continue
            request = self.request_for(node)
            for kind, name in sorted(referenced_names(pod)):
                plural = "configmaps" if kind == "ConfigMap" else "secrets"
                code, body = await request("GET", f"/api/v1/namespaces/{ns}/{plural}/{name}",
                                           ok=(200, 404))
                key = (kind, ns, name)
                old = self.items.get(key)
                if code == 200:
                    if old is None or (old.get("metadata") or {}).get("resourceVersion") != \
                            (body.get("metadata") or {}).get("resourceVersion"):
                        self.items[key] = body
                        changed = True
                elif code == 404 and old is not None:
                    del self.items[key]
                    changed = True
            for audience in sorted(token_audiences(pod)):
                changed |= await self._refresh_token(request, pod, audience)
        if changed:
            self.on_change()
        return changed

    async def _refresh_token(self, request: Request, pod: JSON, audience: str) -> bool:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        key = (meta.get("uid", ""), audience)
        entry = self._tokens.get(key)
        if entry is not None and time.monotonic() < entry[1]:
            return False
        account = spec.get("serviceAccountName") or "default"
        seconds = TOKEN_SECONDS
        for volume in spec.get("volumes") or []:
            for part in (volume.get("projected") or {}).get("sources") or []:
                source = part.get("serviceAccountToken") or {}
                if "serviceAccountToken" in part and str(source.get("audience") or "") == \
                        audience:
                    seconds = int(source.get("expirationSeconds") or TOKEN_SECONDS)
        body: JSON = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                      "spec": {"audiences": [audience] if audience else [],
                               "expirationSeconds": seconds,
                               "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                                  "name": meta["name"],
                                                  "uid": meta.get("uid", "")}}}
        code, reply = await request(
            "POST", f"/api/v1/namespaces/{meta.get('namespace', '')}/serviceaccounts/"
                    f"{account}/token", body, ok=(200, 201))
        if code not in (200, 201):
            log.warning("token request failed pod=%s/%s code=%s: %s", meta.get("namespace"),
                        meta["name"], code, reply.get("message"))
            return False
        token = str((reply.get("status") or {}).get("token") or "")
        self._tokens[key] = (token, time.monotonic() + 0.8 * seconds)
        return True

    def forget(self, pod_uid: str) -> None:
        for key in [k for k in self._tokens if k[0] == pod_uid]:
            del self._tokens[key]


async def renew_node_lease(request: Request, node: str, node_uid: str) -> int:
    """Create or renew the node's Lease in kube-node-lease (what the node-lifecycle controller
    reads as the heartbeat); returns the HTTP code."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{node}"
    spec = {"holderIdentity": node, "leaseDurationSeconds": NODE_LEASE_SECONDS,
            "renewTime": micro_time()}
    code, _ = await request("PATCH", path, {"spec": spec}, "application/merge-patch+json",
                            ok=(200, 404))
    if code != 404:
        return code
    owner = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}] \
        if node_uid else []
    code, body = await request(
        "POST", f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases",
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE,
                      "ownerReferences": owner}, "spec": spec}, ok=(200, 201, 409))
    if code not in (200, 201, 409):
        log.warning("node lease create failed node=%s code=%s: %s", node, code,
                    body.get("message"))
    return code
