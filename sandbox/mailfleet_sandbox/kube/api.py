"""`ApiServer`: the emulator's lifecycle and the in-process helpers tests and the node agent
use (start/stop, kubeconfig, pod status)."""

from __future__ import annotations

import builtins
import copy
import ipaddress
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from mailfleet_sandbox.kube import errors, pod_status
from mailfleet_sandbox.kube.controllers import Controllers
from mailfleet_sandbox.kube.registry import Registry, Result, WriteOptions
from mailfleet_sandbox.kube.resources import ResourceType
from mailfleet_sandbox.kube.server import HttpApi
from mailfleet_sandbox.kube.store import Store

JSON = dict[str, Any]


class ApiServer:
    """A Kubernetes API emulator on a loopback port.

    `db_path` keeps objects in SQLite so a sandbox survives a restart (watch history does
    not: older resourceVersions then answer 410 Expired). `history` is how many events are
    kept for watches that resume; `bookmark_interval` how often idle watches get a BOOKMARK.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 db_path: str | Path | None = None, *, history: int = 10_000,
                 bookmark_interval: float = 5.0, controllers: bool = True) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the sandbox API binds loopback addresses only, not {host}")
        self.host = host
        self.port = port
        self.db_path = db_path
        self.history = history
        self.bookmark_interval = bookmark_interval
        self.run_controllers = controllers
        self._runner: web.AppRunner | None = None
        self._store: Store | None = None
        self._registry: Registry | None = None
        self._controllers: Controllers | None = None

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> ApiServer:
        self._store = Store(self.db_path, history=self.history)
        self._registry = Registry(self._store)
        http = HttpApi(self._registry, bookmark_interval=self.bookmark_interval)
        self._runner = web.AppRunner(http.app(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        http.address = f"{self.host}:{self.port}"
        if self.run_controllers:
            self._controllers = Controllers(self._registry)
            self._controllers.start()
        return self

    async def stop(self) -> None:
        if self._controllers is not None:
            await self._controllers.stop()
            self._controllers = None
        if self._store is not None:
            self._store.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ApiServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ access
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("ApiServer is not started")
        return self._store

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("ApiServer is not started")
        return self._registry

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig for kubectl/kopf/the Python client, pointing at this server."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "mailfleet-sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "mailfleet-sandbox", "user": {}}],
            "contexts": [{"name": "mailfleet-sandbox", "context": {
                "cluster": "mailfleet-sandbox", "user": "mailfleet-sandbox",
                "namespace": namespace}}],
            "current-context": "mailfleet-sandbox",
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    async def settle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until the built-in controllers have nothing left to do."""
        if self._controllers is not None:
            await self._controllers.settle(timeout)

    def resource(self, api_version: str, kind: str) -> ResourceType:
        rt = self.registry.find_kind(api_version, kind)
        if rt is None:
            raise errors.ApiError(404, "NotFound", f"no kind {kind} in {api_version}")
        return rt

    # ------------------------------------------------------- in-process calls
    def create(self, obj: JSON, namespace: str = "") -> JSON:
        rt = self.resource(obj["apiVersion"], obj["kind"])
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        return self.registry.create(rt, ns if rt.namespaced else "", obj).obj

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> JSON:
        rt = self.resource(api_version, kind)
        return copy.deepcopy(self.registry.get(rt, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> builtins.list[JSON]:
        rt = self.resource(api_version, kind)
        listed = self.registry.list(rt, namespace, label_selector=label_selector)
        return copy.deepcopy(listed["items"])

    def patch(self, api_version: str, kind: str, name: str, patch: JSON,
              namespace: str = "", subresource: str = "") -> JSON:
        import json

        rt = self.resource(api_version, kind)
        res: Result = self.registry.patch(rt, namespace, name, "application/merge-patch+json",
                                          json.dumps(patch).encode(), subresource,
                                          WriteOptions())
        return res.obj

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "",
               propagation: str | None = None, grace_period: int | None = None) -> JSON:
        """DELETE with DeleteOptions. A bound, running Pod only gets a deletionTimestamp
        (graceful deletion) until deleted again with `grace_period=0`, as a kubelet does."""
        rt = self.resource(api_version, kind)
        options: JSON = {"propagationPolicy": propagation} if propagation else {}
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        return self.registry.delete(rt, namespace, name, options).obj

    def bind_pod(self, namespace: str, name: str, node_name: str) -> None:
        """What kube-scheduler does (`pods/binding`): set `spec.nodeName` once."""
        self.registry.bind_pod(namespace, name, {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"kind": "Node", "name": node_name}})

    async def set_pod_status(self, namespace: str, name: str, *, phase: str = "Running",
                             ready: bool = True, pod_ip: str | None = None,
                             node_name: str | None = None, host_ip: str | None = None,
                             restart_count: int | None = None) -> JSON:
        """What a kubelet reports: phase, Ready/ContainersReady conditions, container
        statuses, IPs. With `node_name`, an unbound pod is first bound there through the
        `pods/binding` logic (409 Conflict if it is bound to another node)."""
        rt = self.resource("v1", "Pod")
        pod = self.registry.get(rt, namespace, name)
        if node_name and (pod.get("spec") or {}).get("nodeName") != node_name:
            self.bind_pod(namespace, name, node_name)
            pod = self.registry.get(rt, namespace, name)
        status = pod_status.pod_status(pod, phase, ready, pod_ip, host_ip, restart_count)
        body = dict(pod, status=status)
        return self.registry.update(rt, namespace, name, body, "status").obj
