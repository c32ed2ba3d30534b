"""Applying a SendingPool's owned children: the admin, submission and DKIM Secrets, the
StatefulSet, Services, ConfigMap, PodDisruptionBudget and NetworkPolicy (built by
`logic.children` and `logic.submission_access`), and the serving label.

Level-based: every cycle compares each desired child with the live one (from the watch of
the owned kinds, else a read) and server-side applies it when it differs (`logic.child_drift`),
so a child deleted or edited by hand is back within a cycle. An object of a child's name that
the pool does not own is never written.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    assigning,
    child_drift,
    children,
    egress_attachment,
    pool_secrets,
    sender_config,
    submission_access,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile.pool_state import Cycle, PoolMemory

log = logging.getLogger(__name__)

Live = Mapping[tuple[str, str], Mapping[str, Any]]
"""A pool's children as the watch last saw them, by (kind, name)."""


@dataclasses.dataclass
class Applied:
    """What applying a cycle's children found: objects it must not touch (someone else's)
    and objects it could not write, each as a sentence for the Ready condition."""

    clashes: list[str] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)


async def read_live(
    ctx: ctx_module.Context, kind: str, name: str, namespace: str, live: Live | None
) -> Mapping[str, Any] | None:
    """The live child: from the watch when it has it, else from the API (an object the
    watch does not show may still exist: a foreign one without the pool's labels)."""
    if live is not None:
        found = live.get((kind, name))
        if found is not None:
            return found
    resource = {  # spelled out (not a shared table): the RBAC test reads the calls' kinds
        "StatefulSet": resources.STATEFUL_SETS,
        "Service": resources.SERVICES,
        "ConfigMap": resources.CONFIG_MAPS,
        "PodDisruptionBudget": resources.POD_DISRUPTION_BUDGETS,
        "NetworkPolicy": resources.NETWORK_POLICIES,
        "Secret": resources.SECRETS,
    }[kind]
    return await ctx.client.get(resource, name=name, namespace=namespace)


async def ensure_admin_secret(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    names: children.Names,
    memory: PoolMemory,
    cycle: Cycle,
    live: Live | None = None,
    applied: Applied | None = None,
) -> str:
    """The pods' admin token, its Secret applied like any child. A Secret deleted by hand
    comes back with the token the operator remembers, which the pods still hold (they read
    the file at start and on a config reload); only an operator that restarted meanwhile
    has none to give and makes a new one. A foreign Secret of that name is not written, but
    its token is the one the pods mount, so it is the one used."""
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    current = await read_live(ctx, "Secret", names.admin_secret, namespace, live)
    if current is not None and not child_drift.owned_by(current, meta["uid"]):
        token = children.admin_token(current) or memory.token or ""
    else:
        # The token the pods hold first: an edited or deleted Secret gets it back.
        token = memory.token or children.admin_token(current) or secrets.token_urlsafe(32)
    pool = children.PoolObjects(
        name=meta["name"], namespace=namespace, uid=meta["uid"], replicas=0
    )
    desired = children.build_admin_secret(pool, token=token)
    text = desired.pop("stringData")
    # `data` as the API stores it, so the live Secret compares equal.
    desired["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in text.items()}
    await apply_child(
        ctx, desired, meta["uid"], memory, cycle, live=live,
        applied=applied if applied is not None else Applied(), current=current,
    )
    memory.token = token
    return token


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def ensure_generated_secrets(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    names: children.Names,
    memory: PoolMemory,
    cycle: Cycle,
    now: float,
    live: Live | None = None,
    *,
    tracking: bool = False,
) -> None:
    """The pool's links and peers Secrets, and with `tracking` its tracking key Secret
    (`logic.pool_secrets`): created when missing, never written otherwise (their content is
    the user's once made: a rotation adds a key). A deleted one comes back with the content
    the operator last saw (the pods still hold it); only an operator that never saw it makes
    new random content. A foreign Secret of the name is used as it is (it is what the pods
    mount). The tracking key stays when tracking is turned off (links already sent still
    point at it) and goes with the pool."""
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    pool = children.PoolObjects(
        name=meta["name"], namespace=namespace, uid=meta["uid"], replicas=0
    )
    wanted = [names.links_secret, names.peers_secret]
    if tracking:
        wanted.append(names.tracking_secret)
    for name in wanted:
        current = await read_live(ctx, "Secret", name, namespace, live)
        if current is not None:
            memory.generated[name] = dict(current.get("data") or {})
            continue
        data = memory.generated.get(name)
        random = _b64(secrets.token_urlsafe(32).encode())
        if name == names.links_secret:
            data = data or {pool_secrets.link_key_name(int(now)): random}
            secret = pool_secrets.build_links_secret(pool, data=data)
        elif name == names.tracking_secret:
            data = data or {pool_secrets.TRACKING_KEY: random}
            secret = pool_secrets.build_tracking_secret(pool, data=data)
        else:
            data = data or {pool_secrets.PEER_TOKEN_KEY: random}
            secret = pool_secrets.build_peers_secret(pool, data=data)
        try:
            await ctx.client.create(resources.SECRETS, body=secret, namespace=namespace)
        except kube_client.Conflict:
            continue  # appeared since the read (the index lags): judged next cycle
        cycle.writes += 1
        if name in memory.generated:
            cycle.event("Normal", "ChildRecreated",
                        f"Secret {name} was missing: recreated with the keys the pods hold")
        memory.generated[name] = dict(data)


async def ensure_submission_secret(
    ctx: ctx_module.Context,
    spec: sp.SendingPoolSpec,
    pool: children.PoolObjects,
    memory: PoolMemory,
    cycle: Cycle,
    *,
    live: Live | None = None,
    applied: Applied | None = None,
) -> str | None:
    """The generated submission Secret (`submission_access`) when a listener uses it; its
    name, else None. Created once with random values, never rewritten: a live Secret's values
    are kept, one deleted by hand comes back with the values the operator remembers (which
    the applications hold). A Secret of that name the pool does not own is left alone, and
    used as it is."""
    name = submission_access.credentials(spec, pool.name).generated
    if name is None:
        return None
    current = await read_live(ctx, "Secret", name, pool.namespace, live)
    if current is not None and not child_drift.owned_by(current, pool.uid):
        return name  # made by the user under that name: the pods mount it as it is
    values = (
        submission_access.submission_values(current)
        or memory.submission
        or submission_access.new_submission_values()
    )
    desired = submission_access.build_submission_secret(pool, values)
    await apply_child(
        ctx, desired, pool.uid, memory, cycle, live=live,
        applied=applied if applied is not None else Applied(), current=current,
    )
    memory.submission = dict(values)
    return name


async def apply_child(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    uid: str,
    memory: PoolMemory,
    cycle: Cycle,
    *,
    live: Live | None,
    applied: Applied,
    current: Mapping[str, Any] | None = None,
) -> child_drift.Action:
    """Make one owned child look like `body` (server-side apply), compared with the live
    object every cycle: a deletion or a hand edit is repaired; an object of that name the
    pool does not own is never written (noted in `applied.clashes`)."""
    kind, meta = body["kind"], body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    resource = {
        "StatefulSet": resources.STATEFUL_SETS,
        "Service": resources.SERVICES,
        "ConfigMap": resources.CONFIG_MAPS,
        "PodDisruptionBudget": resources.POD_DISRUPTION_BUDGETS,
        "NetworkPolicy": resources.NETWORK_POLICIES,
        "Secret": resources.SECRETS,
    }[kind]
    desired = child_drift.stamped(body)
    if current is None:
        current = await read_live(ctx, kind, name, namespace, live)
    verdict = child_drift.judge(desired, current, uid)
    key = f"{kind}/{name}"
    if verdict.action is child_drift.Action.CLASH:
        applied.clashes.append(
            child_drift.describe_clash(kind, namespace, name, meta["ownerReferences"][0]["name"])
        )
        return verdict.action
    if verdict.action is child_drift.Action.KEEP:
        memory.applied[key] = desired["metadata"]["annotations"][child_drift.DIGEST_ANNOTATION]
        return verdict.action
    digest = desired["metadata"]["annotations"][child_drift.DIGEST_ANNOTATION]
    if (
        verdict.action is child_drift.Action.REPAIR
        and memory.normalized.get(key) == (digest, verdict.why)
    ):
        # The API server itself answered our apply with that field otherwise (a quantity
        # it normalizes, "0.5" -> "500m"): not drift, and applying again would change nothing.
        return child_drift.Action.KEEP
    try:
        answer = await ctx.client.apply(
            resource, body=desired, namespace=namespace,
            force=verdict.action is child_drift.Action.REPAIR,
        )
    except kube_client.Conflict as error:
        # Only an apply without force conflicts: an object appeared under the name since it
        # was read as absent, with other values. Not ours: left alone, judged next cycle.
        log.info("child appeared before its creation", extra={"child": key, "error": str(error)})
        return verdict.action
    except kube_client.ApiError as error:
        applied.failures.append(f"{kind} {namespace}/{name} could not be applied: {error}"[:500])
        return verdict.action
    cycle.writes += 1
    rest = child_drift.first_difference(answer, desired)
    if rest is None:
        memory.normalized.pop(key, None)
    else:
        memory.normalized[key] = (digest, rest.lstrip(".") or "object")
    before = memory.applied.get(key)
    if verdict.action is child_drift.Action.CREATE and before is not None:
        cycle.event("Normal", "ChildRecreated", f"{kind} {name} was missing: recreated")
    elif verdict.action is child_drift.Action.REPAIR and before == digest:
        cycle.event(
            "Normal", "ChildRepaired", f"{kind} {name} differed at {verdict.why}: repaired"
        )
    memory.applied[key] = digest
    return verdict.action


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
    *,
    live: Live | None = None,
    applied: Applied | None = None,
) -> None:
    """Make `<pool>-dkim` hold exactly `keys` (by `children.dkim_key_name`). Its files change
    in place in the pods (the kubelet swaps them), so a rotation never touches the pod
    template. Keys dropped from it are removed (server-side apply drops what the operator
    no longer applies)."""
    data = {children.dkim_key_name(name): value for name, value in keys.items()}
    body = children.build_dkim_secret(pool, data=data)
    await apply_child(
        ctx, body, pool.uid, memory, cycle, live=live,
        applied=applied if applied is not None else Applied(),
    )
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
