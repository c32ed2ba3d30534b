"""`ClusterApi`: the emulator's in-process helpers (`create`, `get`, `list`, `patch`,
`delete`, `set_pod_status`) over HTTPS against any API server, so that the sandbox world and
the tests drive the real control plane with the calls they use on the emulator.

Blocking calls over urllib3 (the `kubernetes` client's transport): the API server is another
process, so a short blocking call from the event loop cannot deadlock it. Errors are raised as
the emulator's `ApiError` with the server's code, reason and message.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import urllib3
import yaml

from mailfleet_sandbox.kube.errors import ApiError
from mailfleet_sandbox.kube.pod_status import pod_status

JSON = dict[str, Any]


class ClusterApi:
    """Admin calls against `url`, authenticated by a client certificate."""

    def __init__(self, url: str, *, ca: Path, cert: Path, key: Path) -> None:
        self.url = url.rstrip("/")
        self.ca, self.cert, self.key = ca, cert, key
        self._http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(ca),
                                         cert_file=str(cert), key_file=str(key), maxsize=8,
                                         retries=False)
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", timeout: float = 30.0) -> JSON:
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        resp = self._http.request(method, self.url + path, body=data, timeout=timeout,
                                  headers={"Content-Type": content_type,
                                           "Accept": "application/json"})
        text = resp.data.decode() if resp.data else ""
        try:
            parsed: Any = json.loads(text) if text else {}
        except ValueError:
            parsed = {"message": text}
        if resp.status >= 400:
            parsed = parsed if isinstance(parsed, dict) else {}
            raise ApiError(int(resp.status), str(parsed.get("reason") or "Unknown"),
                           str(parsed.get("message") or text)[:2000])
        return parsed if isinstance(parsed, dict) else {}

    def close(self) -> None:
        self._http.clear()

    # ------------------------------------------------------------------ discovery
    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from discovery; refreshed on a miss because CRDs
        appear while the sandbox runs."""
        key = (api_version, kind)
        with self._lock:
            if key in self._resources:
                return self._resources[key]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        listing = self.request("GET", base)
        with self._lock:
            for res in listing.get("resources") or []:
                if "/" not in res["name"]:
                    self._resources[(api_version, res["kind"])] = (res["name"],
                                                                  bool(res["namespaced"]))
            if key not in self._resources:
                raise ApiError(404, "NotFound", f"no kind {kind} in {api_version}")
            return self._resources[key]

    def path(self, api_version: str, kind: str, namespace: str | None = None,
             name: str = "", subresource: str = "") -> str:
        plural, namespaced = self._resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base

    def namespaced(self, api_version: str, kind: str) -> bool:
        return self._resource(api_version, kind)[1]

    # ------------------------------------------------------------------ the emulator's calls
    def create(self, obj: JSON, namespace: str = "") -> JSON:
        api_version, kind = obj["apiVersion"], obj["kind"]
        ns = ""
        if self.namespaced(api_version, kind):
            ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        return self.request("POST", self.path(api_version, kind, ns), obj)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> JSON:
        return self.request("GET", self.path(api_version, kind, namespace or None, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> builtins.list[JSON]:
        query = ""
        if label_selector:
            query = "?" + urllib.parse.urlencode({"labelSelector": label_selector})
        listed = self.request("GET", self.path(api_version, kind, namespace) + query)
        items: builtins.list[JSON] = listed.get("items") or []
        for item in items:  # lists leave them out; the emulator's in-process list keeps them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def patch(self, api_version: str, kind: str, name: str, patch: JSON,
              namespace: str = "", subresource: str = "") -> JSON:
        return self.request("PATCH", self.path(api_version, kind, namespace or None, name,
                                               subresource),
                            patch, content_type="application/merge-patch+json")

    def apply(self, obj: JSON, *, field_manager: str, force: bool = True) -> JSON:
        """Server-side apply of a whole object (what `kubectl apply --server-side` does)."""
        meta = obj.get("metadata") or {}
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = f"?fieldManager={field_manager}" + ("&force=true" if force else "")
        return self.request("PATCH", path + query, yaml.safe_dump(obj).encode(),
                            content_type="application/apply-patch+yaml")

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "",
               propagation: str | None = None, grace_period: int | None = None) -> JSON:
        options: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation:
            options["propagationPolicy"] = propagation
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        return self.request("DELETE", self.path(api_version, kind, namespace or None, name),
                            options)

    async def settle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """The emulator waits for its controllers here; a real control plane's controllers
        are other processes, so callers wait for the conditions they need instead."""


    # ------------------------------------------------------------------ kubelet stand-ins
    def bind_pod(self, namespace: str, name: str, node_name: str) -> None:
        """What kube-scheduler does: POST `pods/binding` (409 if the pod is bound)."""
        self.request("POST", self.path("v1", "Pod", namespace, name, "binding"), {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}})

    async def set_pod_status(self, namespace: str, name: str, *, phase: str = "Running",
                             ready: bool = True, pod_ip: str | None = None,
                             node_name: str | None = None, host_ip: str | None = None,
                             restart_count: int | None = None) -> JSON:
        """What a kubelet reports (the emulator's call of the same name): phase,
        Ready/ContainersReady conditions, container statuses, IPs, written through
        `pods/status` with the read resourceVersion (retried on a conflict, since the
        scheduler writes conditions too). With `node_name`, an unbound pod is first bound
        there through `pods/binding` (409 Conflict if it is bound to another node)."""
        return await asyncio.to_thread(self._set_pod_status, namespace, name, phase, ready,
                                       pod_ip, node_name, host_ip, restart_count)

    def _set_pod_status(self, namespace: str, name: str, phase: str, ready: bool,
                        pod_ip: str | None, node_name: str | None, host_ip: str | None,
                        restart_count: int | None) -> JSON:
        pod = self.get("v1", "Pod", name, namespace)
        if node_name and (pod.get("spec") or {}).get("nodeName") != node_name:
            self.bind_pod(namespace, name, node_name)
        for _attempt in range(20):
            pod = self.get("v1", "Pod", name, namespace)
            try:
                return self.request("PUT", self.path("v1", "Pod", namespace, name, "status"),
                                    dict(pod, status=pod_status(pod, phase, ready, pod_ip,
                                                                host_ip, restart_count)))
            except ApiError as error:
                if error.code != 409:
                    raise
        raise ApiError(409, "Conflict", f"pod {namespace}/{name} kept changing")
