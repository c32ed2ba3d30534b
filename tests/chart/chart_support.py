"""Helpers for the chart tests: the generator module, cached renders, the value sets we test.

charts/generate.py is a script, not a package module, so it is loaded by path once here.
Renders go through Helm's own Go library (helm-python-sdk), exactly as `helm template` would.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import sys
from types import ModuleType
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mailfleet"

# Kubernetes versions we support (Chart.yaml kubeVersion >=1.28): the oldest, one in the
# middle and the newest that kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.28.0", "1.32.0", "1.37.0")

ALL_MONITORING = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "senders": {"podMonitor": {"enabled": True}},
    "prometheusRule": {"enabled": True, "alertLabels": {"team": "mail"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Mail"}},
}

# name -> values. Every set is rendered, linted and validated.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ha": {"ha": {"enabled": True, "replicas": 3}},
    "namespaced": {"watchNamespaces": ["mail", "mail-staging"]},
    "namespaced-ha": {"watchNamespaces": ["mail"], "ha": {"enabled": True}},
    "monitoring": ALL_MONITORING,
    "pinned-images-no-crds": {
        "image": {"registry": "registry.example.com", "repository": "mf/operator",
                  "digest": "sha256:" + "a" * 64},
        "senderImage": {"repository": "registry.example.com/mf/sender", "tag": "0.1.0-rc1"},
        "crds": {"enabled": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "imagePullSecrets": [{"name": "regcred"}],
        "priorityClassName": "system-cluster-critical",
        "operator": {"dnsNameservers": ["10.0.0.10:53"], "extraEnv": [
            {"name": "MAILFLEET_OPERATOR_ERROR_DELAY", "value": "5"}]},
    },
}


@functools.cache
def generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mailfleet_chart_generate",
                                                  ROOT / "charts" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def _render(values_json: str, namespace: str) -> tuple[tuple[str, str], ...]:
    rendered = generate().render_chart(json.loads(values_json), namespace=namespace)
    return tuple(sorted(rendered.items()))


def render(values: dict[str, Any] | None = None, *, namespace: str = "mailfleet-system"
           ) -> dict[str, str]:
    """template path -> rendered text (cached per value set)."""
    return dict(_render(json.dumps(values or {}, sort_keys=True), namespace))


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = generate().objects(render(values))
    return result


def find(
    objs: list[dict[str, Any]], kind: str, name: str | None = None
) -> list[dict[str, Any]]:
    return [o for o in objs
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
