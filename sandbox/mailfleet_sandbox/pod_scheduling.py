"""Where a pod goes: kube-scheduler's filters (node readiness, nodeSelector and required node
affinity, NoSchedule/NoExecute taints against tolerations) and its spreading, as pure
functions of the pod spec and the nodes (the node agent binds what these choose)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
log = logging.getLogger(__name__)

# ------------------------------------------------------------------ scheduling (pure)
def tolerates(tolerations: Sequence[JSON], taint: Mapping[str, str]) -> bool:
    """Whether one of the pod's tolerations matches the taint (core/v1 semantics)."""
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = tol.get("key") or ""
        if tol.get("operator") == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _expression_matches(expr: JSON, labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def affinity_matches(pod_spec: JSON, labels: Mapping[str, str]) -> bool:
    """nodeSelector and requiredDuringScheduling node affinity (terms are ORed)."""
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
               for term in terms)


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    taints: Sequence[Mapping[str, str]]
    ready: bool
    pods: int


def choose_node(pod_spec: JSON, nodes: Sequence[NodeView]) -> tuple[str | None, str]:
    """The node a pod goes to, or None and kube-scheduler's "0/N nodes are available" text."""
    fits: list[NodeView] = []
    reasons: dict[str, int] = {}
    tolerations = pod_spec.get("tolerations") or []
    for node in nodes:
        if not node.ready:
            reason = "node(s) were not ready"
        elif not affinity_matches(pod_spec, node.labels):
            reason = "node(s) didn't match Pod's node affinity/selector"
        else:
            bad = [t for t in node.taints if t.get("effect") in ("NoSchedule", "NoExecute")
                   and not tolerates(tolerations, t)]
            if bad:
                taint = bad[0]
                text = f"{taint.get('key')}: {taint.get('value')}" if taint.get("value") \
                    else str(taint.get("key"))
                reason = f"node(s) had untolerated taint {{{text}}}"
            else:
                fits.append(node)
                continue
        reasons[reason] = reasons.get(reason, 0) + 1
    if fits:
        return min(fits, key=lambda n: (n.pods, n.name)).name, ""
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return None, f"0/{len(nodes)} nodes are available: {detail}." if detail \
        else "0/0 nodes are available."
