"""Conformance set-up: the emulator by default, a real cluster when KUBECONFIG is set
(then everything happens in a scratch namespace that is deleted afterwards)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REAL = bool(os.environ.get("KUBECONFIG"))
JSON = dict[str, Any]


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Raw:
    """Raw HTTP calls through the kubernetes client's auth and transport."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    def __call__(self, method: str, path: str, body: Any = None, *,
                 content_type: str = "application/json", accept: str = "application/json",
                 raw: bytes | None = None) -> Reply:
        url = self.api_client.configuration.host + path
        headers = {"Content-Type": content_type, "Accept": accept}
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"], path, method,
                                               None)
        data: Any = raw if raw is not None else (json.dumps(body) if body is not None
                                                 else None)
        rest = self.api_client.rest_client
        try:
            resp = rest.pool_manager.request(method, url, headers=headers, body=data,
                                             preload_content=True, timeout=30)
        except ApiException as exc:  # pragma: no cover - transport level
            return Reply(exc.status, exc.body, dict(exc.headers or {}))
        text = resp.data.decode() if resp.data else ""
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Reply(resp.status, parsed, {k.lower(): v for k, v in resp.headers.items()})


TARGETS = ["external"] if REAL else ["emulator", "kubernetes"]
"""Where the suite runs: the cluster KUBECONFIG names; else the API emulator and the real
control plane `make kube` built, side by side (the suite is the emulator's specification)."""


@pytest.fixture(scope="session", params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def real(target: str) -> bool:
    """True against a real API server (the sandbox's kube-apiserver or KUBECONFIG's)."""
    return target != "emulator"


@pytest.fixture(scope="session")
def cluster(target: str, request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Path of the kubeconfig to talk to."""
    if target == "external":
        yield Path(os.environ["KUBECONFIG"])
        return
    if target == "kubernetes":
        yield request.getfixturevalue("real_control_plane").kubeconfig
        return
    kube_api_thread = request.getfixturevalue("kube_api_thread")
    path = kube_api_thread.api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield path


@pytest.fixture(scope="session")
def raw(cluster: Path) -> Raw:
    return Raw(config.new_client_from_config(config_file=str(cluster)))


@pytest.fixture(scope="session")
def ns(raw: Raw) -> Iterator[str]:
    """A scratch namespace for the whole session, deleted at the end."""
    name = f"conformance-{secrets.token_hex(3)}"
    reply = raw("POST", "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert reply.status == 201, reply.body
    yield name
    raw("DELETE", f"/api/v1/namespaces/{name}")


WIDGET_CRD: JSON = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.conformance.mailfleet.io"},
    "spec": {
        "group": "conformance.mailfleet.io", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                  "shortNames": ["cwd"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}, "scale": {
                "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
                {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                {"name": "Ready", "type": "string",
                 "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "string", "enum": ["small", "large"]},
                        "replicas": {"type": "integer", "minimum": 0, "default": 1},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 10},
                        "ports": {"type": "array", "maxItems": 3,
                                  "items": {"type": "integer", "maximum": 65535}},
                        "port": {"x-kubernetes-int-or-string": True},
                        "extra": {"type": "object",
                                  "x-kubernetes-preserve-unknown-fields": True},
                        "nested": {"type": "object", "properties": {
                            "mode": {"type": "string", "default": "auto"}}, "default": {}},
                    }},
                    "status": {"type": "object", "properties": {
                        "replicas": {"type": "integer"},
                        "conditions": {"type": "array", "items": {
                            "type": "object", "properties": {
                                "type": {"type": "string"}, "status": {"type": "string"}}}},
                    }},
                },
            }},
        }],
    },
}


@pytest.fixture(scope="session")
def widgets(raw: Raw) -> Iterator[str]:
    """The conformance CRD, created for the session; yields the namespaced URL prefix."""
    reply = raw("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    assert reply.status in (201, 409), reply.body
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = raw("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                  "widgets.conformance.mailfleet.io")
        conds = {c["type"]: c["status"] for c in (got.body.get("status") or {}).get(
            "conditions") or []}
        if conds.get("Established") == "True" and raw(
                "GET", "/apis/conformance.mailfleet.io/v1").status == 200:
            break
        time.sleep(0.2)
    yield "/apis/conformance.mailfleet.io/v1"
    raw("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
        "widgets.conformance.mailfleet.io")


def widget(obj_name: str, **spec: Any) -> JSON:
    return {"apiVersion": "conformance.mailfleet.io/v1", "kind": "Widget",
            "metadata": {"name": obj_name}, "spec": {"size": "small", **spec}}


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> JSON:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {}}, "data": data}


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
