"""Who may submit to a pool and reach its pods (pure, no I/O): the credentials each listener
uses, the generated submission Secret, and the pool's NetworkPolicy.

Closed by default (docs/security.md): a listener that names no Secret uses the pool's
generated `<pool>-submission` Secret (a random API key under `api-key`, the SMTP user
`mailfleet` with a random password under the key `mailfleet`), unless the pool says
`submission.allowUnauthenticated`. The Secret is created once and never rewritten: the
applications hold its values.

The NetworkPolicy opens each port to whom it serves: submission to `submission.allowedFrom`
(default: the pool's namespace), admin to the operator's pods and the pool's own pods
(probes come from the node, which NetworkPolicy implementations let through), public and
feedback to anyone.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children

API_KEY = "api-key"
"""Key of the API key in the generated Secret (and the default key of apiKeySecretRef)."""
SMTP_USER = "mailfleet"
"""The SMTP user of the generated Secret; its password is under this key."""


@dataclass(frozen=True)
class Credentials:
    """The Secret (and key) each listener's credentials come from; None: no credential."""

    smtp_secret: str | None
    smtp_items: tuple[str, ...]
    api_key_secret: str | None
    api_key_key: str
    generated: str | None
    """The generated Secret's name when a listener uses it."""


def credentials(spec: sp.SendingPoolSpec, pool: str) -> Credentials:
    """Per listener: its own Secret, else the generated one (unless allowUnauthenticated)."""
    sub = spec.submission
    generated = None if sub.allow_unauthenticated else children.Names(pool).submission_secret
    smtp_ref, http_ref = sub.smtp.auth_secret_ref, sub.http.api_key_secret_ref
    smtp_secret = smtp_ref.name if smtp_ref is not None else generated
    api_key_secret = http_ref.name if http_ref is not None else generated
    uses_generated = generated is not None and (smtp_ref is None or http_ref is None)
    return Credentials(
        smtp_secret=smtp_secret,
        smtp_items=() if smtp_ref is not None else (SMTP_USER,),
        api_key_secret=api_key_secret,
        api_key_key=(http_ref.key or API_KEY) if http_ref is not None else API_KEY,
        generated=generated if uses_generated else None,
    )


def new_submission_values() -> dict[str, str]:
    """Fresh random credentials for the generated Secret."""
    return {API_KEY: secrets.token_urlsafe(32), SMTP_USER: secrets.token_urlsafe(24)}


def submission_values(secret: Mapping[str, Any] | None) -> dict[str, str]:
    """The values held by a live generated Secret (`data`, base64 as the API returns it);
    {} when it lacks one of them (then the operator makes new ones)."""
    data = (secret or {}).get("data") or {}
    found: dict[str, str] = {}
    for key in (API_KEY, SMTP_USER):
        raw = data.get(key)
        try:
            value = base64.b64decode(raw).decode() if raw else ""
        except (ValueError, UnicodeDecodeError):
            value = ""
        if not value:
            return {}
        found[key] = value
    return found


def build_submission_secret(
    pool: children.PoolObjects, values: Mapping[str, str]
) -> dict[str, Any]:
    """The generated Secret with `values`, as `data` (base64) so the live one compares equal."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": children.child_meta(
            children.Names(pool.name).submission_secret, pool
        ),
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }


@dataclass(frozen=True)
class OperatorPods:
    """Where the operator runs, so the admin port lets it in."""

    namespace: str
    labels: Mapping[str, str]


def _cidr(value: str) -> str:
    """A bare address as a one-address network: NetworkPolicy wants CIDR form."""
    return str(ipaddress.ip_network(value, strict=False))


def _peer(peer: sp.NetworkPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if peer.ip_block is not None:
        block: dict[str, Any] = {"cidr": _cidr(peer.ip_block.cidr)}
        if peer.ip_block.except_:
            block["except"] = [_cidr(c) for c in peer.ip_block.except_]
        out["ipBlock"] = block
    for field, selector in (("namespaceSelector", peer.namespace_selector),
                            ("podSelector", peer.pod_selector)):
        if selector is not None:
            out[field] = selector.model_dump(by_alias=True, exclude_none=True)
    return out


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def build_network_policy(
    spec: sp.SendingPoolSpec, pool: children.PoolObjects, operator: OperatorPods
) -> dict[str, Any]:
    """Ingress of the pool's pods, port by port (docs/security.md). Anything not listed is
    refused once a NetworkPolicy selects the pods."""
    sub = spec.submission
    submitters = (
        [_peer(p) for p in sub.allowed_from]
        if sub.allowed_from is not None
        else [{"podSelector": {}}]  # the pool's own namespace
    )
    admin_from = [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": operator.namespace}
            },
            "podSelector": {"matchLabels": dict(sorted(operator.labels.items()))},
        },
        {"podSelector": {"matchLabels": children.selector_labels(pool.name)}},
    ]
    public = [sub.public_port]
    if spec.feedback_loop.enabled:
        public.append(sp.FEEDBACK_PORT)
    ingress: list[dict[str, Any]] = [
        {"from": submitters, "ports": _ports(sub.smtp.port, sub.http.port)},
        {"from": admin_from, "ports": _ports(sub.admin_port)},
        {"ports": _ports(*public)},  # no `from`: anyone (the Internet's MTAs and readers)
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": children.child_meta(children.Names(pool.name).network_policy, pool),
        "spec": {
            "podSelector": {"matchLabels": children.selector_labels(pool.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
