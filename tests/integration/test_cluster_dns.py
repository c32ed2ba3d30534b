"""Cluster DNS for Services (the CoreDNS stand-in): how sender pods find their peers
(`<pool>-pods.<ns>.svc`) and each StatefulSet pod's stable name, over real DNS packets."""

from __future__ import annotations

import ssl
from typing import Any

import dns.asyncresolver
import dns.resolver
from mailfleet_sandbox.cluster_dns import ClusterDNS, cluster_records
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.node_agent import eventually

SELECTOR = {"app": "sender"}


def _service(name: str, *, headless: bool, not_ready_too: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": SELECTOR, "ports": [{"name": "http", "port": 8080}],
                            "publishNotReadyAddresses": not_ready_too}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def _pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": SELECTOR},
            "spec": {"hostname": name, "subdomain": "pool-pods",
                     "containers": [{"name": "c", "image": "sender"}]}}


async def _a(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    try:
        answer = await resolver.resolve(name, "A")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return sorted(r.to_text() for r in answer)


async def _is(resolver: dns.asyncresolver.Resolver, name: str, want: list[str]) -> bool:
    return await _a(resolver, name) == want


async def test_service_names_follow_pod_readiness(kube_api: ApiServer, dns_server: DNSServer,
                                                  kube_tls: ssl.SSLContext | None) -> None:
    resolver = dns_server.resolver()
    kube_api.create(_service("pool-pods", headless=True, not_ready_too=True))
    kube_api.create(_service("pool", headless=False))
    for name in ("pool-0", "pool-1"):
        kube_api.create(_pod(name))
    await kube_api.set_pod_status("default", "pool-0", pod_ip="127.0.77.1", node_name="n")
    await kube_api.set_pod_status("default", "pool-1", ready=False, pod_ip="127.0.77.2",
                                  node_name="n")
    async with ClusterDNS(kube_api.url, dns_server, ssl_context=kube_tls):
        # headless + publishNotReadyAddresses: every pod, ready or not, and per-pod names
        assert await eventually(lambda: _a(resolver, "pool-pods.default.svc")) == [
            "127.0.77.1", "127.0.77.2"]
        assert await _a(resolver, "pool-pods.default.svc.cluster.local") == [
            "127.0.77.1", "127.0.77.2"]
        assert await _a(resolver, "pool-1.pool-pods.default.svc") == ["127.0.77.2"]
        # ClusterIP (no kube-proxy): the ready pods only
        assert await _a(resolver, "pool.default.svc") == ["127.0.77.1"]

        await kube_api.set_pod_status("default", "pool-1", pod_ip="127.0.77.2")
        assert await eventually(lambda: _is(resolver, "pool.default.svc",
                                            ["127.0.77.1", "127.0.77.2"]))
        kube_api.delete("v1", "Pod", "pool-0", "default", grace_period=0)
        assert await eventually(lambda: _is(resolver, "pool.default.svc", ["127.0.77.2"]))
        assert await _a(resolver, "pool-0.pool-pods.default.svc") == []


def test_not_ready_and_terminating_pods_only_with_publish_not_ready_addresses() -> None:
    def pod(name: str, ip: str, ready: bool, deleting: bool = False,
            phase: str = "Running") -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": SELECTOR}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "spec": {}, "status": {
            "phase": phase, "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

    pods = [pod("a", "127.0.77.1", True), pod("b", "127.0.77.2", False),
            pod("c", "127.0.77.3", True, deleting=True),
            pod("d", "127.0.77.4", False, phase="Failed")]
    headless = _service("all", headless=True, not_ready_too=True)
    strict = _service("ready", headless=True)
    selectorless = {"metadata": {"name": "ext", "namespace": "default"},
                    "spec": {"clusterIP": "None"}}
    endpoints = {"metadata": {"name": "ext", "namespace": "default"},
                 "subsets": [{"addresses": [{"ip": "127.0.78.1", "hostname": "x"}]}]}
    served = {r.name: r.values for r in cluster_records([headless, strict, selectorless],
                                                        pods, [endpoints])}
    assert served["all.default.svc"] == ("127.0.77.1", "127.0.77.2", "127.0.77.3")
    assert served["ready.default.svc.cluster.local"] == ("127.0.77.1",)
    assert served["ext.default.svc"] == ("127.0.78.1",)
    assert served["x.ext.default.svc"] == ("127.0.78.1",)
