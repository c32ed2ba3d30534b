"""Watches of the kinds a SendingPool owns (controller-runtime's `Owns()`): its StatefulSet,
Services, ConfigMap, PodDisruptionBudget, NetworkPolicy and Secrets, as kopf indexes by pool.

Each main cycle compares the desired children with these live objects, so a child deleted
or edited by hand is repaired at the next cycle (one renewal interval) without a read per
child and cycle. Only objects with the pool label are indexed; a foreign object of a
child's name has none, so the reconciler reads the API for any child the index lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from mailfleet_operator.logic import children

_LABELS = {children.POOL_LABEL: kopf.PRESENT}
Key = tuple[str, str]
Entry = dict[str, Any]


def _entry(kind: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body) -> dict[
    Key, Entry
]:
    return {(namespace or "default", labels[children.POOL_LABEL]): {**dict(body), "kind": kind}}


@kopf.index("apps", "v1", "statefulsets", labels=_LABELS)
def sendingpool_child_statefulsets(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Entry]:
    return _entry("StatefulSet", namespace, labels, body)


@kopf.index("", "v1", "services", labels=_LABELS)
def sendingpool_child_services(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Entry]:
    return _entry("Service", namespace, labels, body)


@kopf.index("", "v1", "configmaps", labels=_LABELS)
def sendingpool_child_configmaps(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Entry]:
    return _entry("ConfigMap", namespace, labels, body)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=_LABELS)
def sendingpool_child_pdbs(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Entry]:
    return _entry("PodDisruptionBudget", namespace, labels, body)


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=_LABELS)
def sendingpool_child_networkpolicies(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Entry]:
    return _entry("NetworkPolicy", namespace, labels, body)


@kopf.index("", "v1", "secrets", labels=_LABELS)
def sendingpool_child_secrets(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Entry]:
    return _entry("Secret", namespace, labels, body)


INDEXES = (
    "sendingpool_child_statefulsets",
    "sendingpool_child_services",
    "sendingpool_child_configmaps",
    "sendingpool_child_pdbs",
    "sendingpool_child_networkpolicies",
    "sendingpool_child_secrets",
)


def live_children(
    namespace: str, name: str, indexes: Mapping[str, Any]
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The pool's watched children by (kind, name); None when the indexes are not there
    (the reconciler then reads each child from the API)."""
    if not all(index in indexes for index in INDEXES):
        return None
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for index in INDEXES:
        store: kopf.Index[Any, Any] = indexes[index]
        for body in store.get((namespace, name), []):
            found[(body["kind"], body["metadata"]["name"])] = body
    return found
