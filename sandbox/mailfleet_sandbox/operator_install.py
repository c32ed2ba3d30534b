"""The operator as a user installs it: charts/mailfleet rendered with Helm's own library
(helm-python-sdk), with the sandbox's settings as chart values.

So the sandbox runs the operator with the chart's ServiceAccount, ClusterRoles and bindings
and its restricted security context: on the real control plane a missing RBAC rule is a 403
here first, and Pod Security admission judges the chart's pod spec. Only documented values are
set; the operator learns it runs in a sandbox from nothing but its settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "mailfleet"
RELEASE = "mailfleet"
INSTALL_ORDER = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "ConfigMap", "Service", "Deployment", "StatefulSet", "PodDisruptionBudget")


def render(values: Mapping[str, Any], *, namespace: str) -> list[JSON]:
    """The chart's objects for `values`, in the order `helm install` creates them."""
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(dict(values), name=RELEASE,
                                                 namespace=namespace, is_install=True)
    found: list[JSON] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(rendered[path]):
            if document:
                document.setdefault("metadata", {}).setdefault("namespace", namespace) \
                    if document.get("kind") not in ("ClusterRole", "ClusterRoleBinding") \
                    else None
                found.append(document)

    def rank(obj: JSON) -> int:
        kind = str(obj.get("kind"))
        return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)

    return sorted(found, key=rank)


def sandbox_values(*, watch_namespace: str, operator_image: str, sender_image: str,
                   settings: Mapping[str, Any], node: str) -> JSON:
    """Chart values for the sandbox: `settings` are `operator.*` values (leaseDuration, ...);
    the operator serves its HTTP endpoints on its pod IP (pods share the host's loopback)."""
    repository, _, tag = operator_image.rpartition(":")
    sender_repository, _, sender_tag = sender_image.rpartition(":")
    extra_env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "MAILFLEET_OPERATOR_HTTP_HOST", "value": "$(POD_IP)"}]
    return {
        "image": {"repository": repository, "tag": tag},
        "senderImage": {"repository": sender_repository, "tag": sender_tag},
        "watchNamespaces": [watch_namespace],
        "crds": {"enabled": False},
        "operator": {**settings, "extraEnv": extra_env},
        # the operator's node is never the one a scene fails (a control plane node)
        "nodeSelector": {"kubernetes.io/hostname": node},
        "terminationGracePeriodSeconds": 2,
        "readinessProbe": {"periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 5,
                          "failureThreshold": 6},
    }
