"""Applying a SendingPool's owned children: the admin and DKIM Secrets, the StatefulSet,
Services, ConfigMap and PodDisruptionBudget (built by `logic.children`), and the serving label.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import assigning, children, egress_attachment, sender_config
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile.pool_state import Cycle, PoolMemory

HASH_ANNOTATION = "mailfleet.io/applied-hash"


def hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


async def ensure_admin_secret(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    names: children.Names,
    memory: PoolMemory,
    cycle: Cycle,
) -> str:
    if memory.token:
        return memory.token
    namespace = body["metadata"].get("namespace") or "default"
    current = await ctx.client.get(resources.SECRETS, name=names.admin_secret, namespace=namespace)
    if current is None:
        token = secrets.token_urlsafe(32)
        pool = children.PoolObjects(
            name=body["metadata"]["name"],
            namespace=namespace,
            uid=body["metadata"]["uid"],
            replicas=0,
        )
        try:
            await ctx.client.create(
                resources.SECRETS,
                namespace=namespace,
                body=children.build_admin_secret(pool, token=token),
            )
            cycle.writes += 1
            memory.token = token
            return token
        except kube_client.Conflict:
            current = await ctx.client.get(
                resources.SECRETS, name=names.admin_secret, namespace=namespace
            )
    memory.token = children.admin_token(current)
    return memory.token


async def apply_child(
    ctx: ctx_module.Context, body: dict[str, Any], memory: PoolMemory, cycle: Cycle
) -> None:
    """Create or update an owned child; skipped when its content hash is unchanged."""
    resource = {
        "StatefulSet": resources.STATEFUL_SETS,
        "Service": resources.SERVICES,
        "ConfigMap": resources.CONFIG_MAPS,
        "PodDisruptionBudget": resources.POD_DISRUPTION_BUDGETS,
    }[body["kind"]]
    meta = body["metadata"]
    key = f"{body['kind']}/{meta['name']}"
    digest = hash(body)
    if memory.applied.get(key) == digest:
        return
    meta.setdefault("annotations", {})[HASH_ANNOTATION] = digest
    current = await ctx.client.get(resource, name=meta["name"], namespace=meta["namespace"])
    if current is None:
        try:
            await ctx.client.create(resource, body=body, namespace=meta["namespace"])
            cycle.writes += 1
        except kube_client.Conflict:
            return  # someone else created it: compare next cycle
    elif (current["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) != digest:
        patch: dict[str, Any] = {
            "metadata": {
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "ownerReferences": meta["ownerReferences"],
            },
        }
        for field in ("spec", "data"):
            if field in body:
                patch[field] = body[field]
        if body["kind"] == "StatefulSet":
            template = patch["spec"]["template"]["spec"]
            for optional in ("nodeSelector", "tolerations"):
                template.setdefault(optional, None)  # merge patch: null removes a dropped field
        await ctx.client.patch(
            resource, name=meta["name"], namespace=meta["namespace"], patch=patch
        )
        cycle.writes += 1
    memory.applied[key] = digest


async def read_dkim_keys(
    ctx: ctx_module.Context, namespace: str, wanted: Sequence[str], memory: PoolMemory
) -> dict[str, str]:
    """The private keys (base64, as stored) of the key Secrets the pool's senders may use.
    Keys are never rewritten, so a key read once is kept until the DomainAuths are re-read;
    an unreadable one is left out (and retried next cycle)."""
    found: dict[str, str] = {}
    for secret_name in wanted:
        if secret_name in memory.dkim_keys:
            found[secret_name] = memory.dkim_keys[secret_name]
            continue
        raw = await ctx.client.get(resources.SECRETS, name=secret_name, namespace=namespace)
        data = (raw or {}).get("data") or {}
        value = data.get(sender_config.DKIM_SECRET_KEY)
        if value is None and (raw or {}).get("stringData"):
            text = raw["stringData"].get(sender_config.DKIM_SECRET_KEY)  # type: ignore[index]
            value = base64.b64encode(text.encode()).decode() if text else None
        if value:
            found[secret_name] = value
    memory.dkim_keys = dict(found)
    return found


async def apply_dkim_secret(
    ctx: ctx_module.Context,
    pool: children.PoolObjects,
    keys: Mapping[str, str],
    memory: PoolMemory,
    cycle: Cycle,
) -> None:
    """Make `<pool>-dkim` hold exactly `keys` (by `children.dkim_key_name`). Its files change
    in place in the pods (the kubelet swaps them), so a rotation never touches the pod
    template. Keys dropped from it are removed (null in the merge patch)."""
    data = {children.dkim_key_name(name): value for name, value in keys.items()}
    if memory.dkim_applied == data:
        return
    body = children.build_dkim_secret(pool, data=data)
    meta = body["metadata"]
    current = await ctx.client.get(resources.SECRETS, name=meta["name"], namespace=pool.namespace)
    if current is None:
        try:
            await ctx.client.create(resources.SECRETS, body=body, namespace=pool.namespace)
            cycle.writes += 1
        except kube_client.Conflict:
            return  # created meanwhile: compare next cycle
    else:
        have = current.get("data") or {}
        if have != body["data"]:
            stale: dict[str, str | None] = {key: None for key in have if key not in data}
            await ctx.client.patch(
                resources.SECRETS,
                name=meta["name"],
                namespace=pool.namespace,
                patch={
                    "metadata": {
                        "labels": meta["labels"],
                        "ownerReferences": meta["ownerReferences"],
                    },
                    "data": {**stale, **body["data"]},
                },
            )
            cycle.writes += 1
    memory.dkim_applied = data


async def label_serving(
    ctx: ctx_module.Context,
    spec: sp.SendingPoolSpec,
    plan: assigning.AssignmentPlan,
    pods: Sequence[Mapping[str, Any]],
    leaving: set[str],
    cycle: Cycle,
) -> None:
    """`mailfleet.io/serving=true` on the pods that take submissions, removed from the others:
    the IP holders, or in relay mode (no leases) every pod that stays."""
    if spec.egress.mode == "relay" or not spec.egress.ips:
        serving = {p["metadata"]["name"] for p in pods if p["metadata"]["name"] not in leaving}
    else:
        serving = {p.pod for p in plan.pods if p.ips}

    async def one(pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        want = "true" if meta["name"] in serving else None
        if (meta.get("labels") or {}).get(children.SERVING_LABEL) == want:
            return
        if meta.get("deletionTimestamp"):
            return
        try:
            await ctx.client.patch(
                resources.PODS,
                name=meta["name"],
                namespace=meta.get("namespace"),
                patch={"metadata": {"labels": {children.SERVING_LABEL: want}}},
            )
            cycle.writes += 1
        except kube_client.ApiError:
            pass  # gone, or the index lags: next cycle

    await asyncio.gather(*(one(p) for p in pods))


def hostport(text: str) -> tuple[str, int]:
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


async def apply_egress_objects(
    ctx: ctx_module.Context,
    spec: sp.SendingPoolSpec | None,
    namespace: str,
    name: str,
    uid: str,
    cycle: Cycle | None,
) -> None:
    """The per-IP CNI egress objects of `spec.egress.attachment` (cluster-scoped: found by
    the pool's labels, not owner references): created or patched to the desired content,
    and the pool's others deleted (an IP removed, a mode switch, or `spec` None: the pool is
    gone). A kind the cluster does not serve (that CNI is not installed) has nothing to
    delete; a desired object of such a kind is an error of the cycle."""
    desired = (
        egress_attachment.build_egress_objects(spec, namespace, name, uid)
        if spec is not None else []
    )
    selector = egress_attachment.owner_selector(namespace, name)

    def wanted(kind: str) -> dict[str, Mapping[str, Any]]:
        return {o["metadata"]["name"]: o for o in desired if o["kind"] == kind}

    cilium, antrea, ovn = (
        resources.CILIUM_EGRESS_GATEWAY_POLICIES, resources.ANTREA_EGRESSES,
        resources.OVN_EGRESS_IPS,
    )
    await _apply_egress_kind(
        ctx, resources.CILIUM_EGRESS_GATEWAY_POLICIES, wanted(cilium.kind), selector, cycle
    )
    await _apply_egress_kind(
        ctx, resources.ANTREA_EGRESSES, wanted(antrea.kind), selector, cycle
    )
    await _apply_egress_kind(ctx, resources.OVN_EGRESS_IPS, wanted(ovn.kind), selector, cycle)


async def _apply_egress_kind(
    ctx: ctx_module.Context,
    resource: resources.Resource,
    wanted: Mapping[str, Mapping[str, Any]],
    selector: str,
    cycle: Cycle | None,
) -> None:
    try:
        existing = await ctx.client.list(resource, label_selector=selector)
    except kube_client.ApiError:
        if wanted:
            raise
        existing = []  # the kind is not served here: nothing of ours to delete
    have = {o["metadata"]["name"]: o for o in existing}
    for obj_name, body in wanted.items():
        current = have.get(obj_name)
        if current is None:
            try:
                await ctx.client.create(resource, body=body)
            except kube_client.Conflict:
                continue  # not listed by our labels: someone else's object, never taken
        elif current.get("spec") != body["spec"] or any(
            (current["metadata"].get("labels") or {}).get(k) != v
            for k, v in body["metadata"]["labels"].items()
        ):
            await ctx.client.patch(
                resource,
                name=obj_name,
                patch={"metadata": {"labels": body["metadata"]["labels"]}, "spec": body["spec"]},
            )
        else:
            continue
        if cycle is not None:
            cycle.writes += 1
    for obj_name in set(have) - set(wanted):
        await ctx.client.delete(resource, name=obj_name)
        if cycle is not None:
            cycle.writes += 1
