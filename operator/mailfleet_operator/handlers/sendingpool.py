"""kopf handlers for SendingPool: thin, level-based, all calling `reconcile_pool`.

Pods, nodes, the pool's IPWarmups and its IP Leases come from kopf watch indexes, so a cycle
costs no API list calls. Each pool has two daemons: the main cycle (children, policy, status)
every renewal interval, and the lease loop every half renewal interval, on its own so that
renewals never wait for a slow read (DESIGN.md §4). Change handlers run a main cycle at once.
A deleted pool drains first (`pool_deletion`, under the operator's finalizer); its children
then go by the garbage collector through their owner references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from mailfleet_operator import settings as settings_module
from mailfleet_operator.api import common, ipwarmup, sendingpool
from mailfleet_operator.handlers import pool_children as pool_children_watch
from mailfleet_operator.handlers import reconciling
from mailfleet_operator.logic import children, ip_leases
from mailfleet_operator.reconcile import context, pod_admin, pool_children, pool_deletion
from mailfleet_operator.reconcile import sendingpool as reconciler

RESOURCE = (common.GROUP, common.VERSION, sendingpool.PLURAL)


@kopf.index("pods", labels={children.POOL_LABEL: kopf.PRESENT})
def sendingpool_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "default", labels[children.POOL_LABEL]): dict(body)}


@kopf.index(common.GROUP, common.VERSION, ipwarmup.PLURAL)
def sendingpool_warmups(
    namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """IPWarmups by pool: their quotas are read every cycle, so not from the API."""
    pool = (spec.get("poolRef") or {}).get("name") or ""
    return {(namespace or "default", pool): dict(body)}


@kopf.index("coordination.k8s.io", "v1", "leases", labels={ip_leases.POOL_LABEL: kopf.PRESENT})
def sendingpool_leases(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """The pools' IP Leases: read every lease step, so from the watch (the last known state
    survives an API outage)."""
    return {(namespace or "default", labels[ip_leases.POOL_LABEL]): dict(body)}


@kopf.index(*RESOURCE)
def sendingpool_all(body: kopf.Body, **_: Any) -> dict[None, dict[str, Any]]:
    """Every pool served, for "an IP is in at most one pool"."""
    return {None: {"metadata": dict(body["metadata"]), "spec": dict(body.get("spec") or {})}}


@kopf.index("nodes")
def sendingpool_nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(body)}


def _admin(memo: kopf.Memo) -> pod_admin.PodAdmin:
    admin = memo.get("pod_admin")
    assert isinstance(admin, pod_admin.PodAdmin), "created by sendingpool_startup"
    return admin


def _world(namespace: str, name: str, indexes: Mapping[str, Any]) -> reconciler.World:
    pods: kopf.Index[Any, Any] = indexes["sendingpool_pods"]
    nodes: kopf.Index[Any, Any] = indexes["sendingpool_nodes"]
    warmups: kopf.Index[Any, Any] = indexes["sendingpool_warmups"]
    leases: kopf.Index[Any, Any] = indexes["sendingpool_leases"]
    pools: kopf.Index[Any, Any] = indexes["sendingpool_all"]
    node_map: dict[str, dict[str, Any]] = {}
    for key in nodes:
        for node in nodes[key]:
            node_map[key] = node
    return reconciler.World(
        pods=list(pods.get((namespace, name), [])),
        nodes=node_map,
        warmups=list(warmups.get((namespace, name), [])),
        leases=list(leases.get((namespace, name), [])),
        pools=list(pools.get(None, [])),
        children=pool_children_watch.live_children(namespace, name, indexes),
    )


def _cycle(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, name: str,
    indexes: Mapping[str, Any],
) -> reconciling.Cycle:
    ctx: context.Context = memo.ctx
    ns = namespace or "default"

    async def reconcile() -> float:
        outcome = await reconciler.reconcile_pool(
            ctx, _admin(memo), dict(body), _world(ns, name, indexes)
        )
        return outcome.requeue_after

    return lambda: reconciling.measured(sendingpool.KIND, reconcile)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def sendingpool_changed(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any
) -> None:
    await reconciling.run_now(
        _cycle(memo, body, namespace, name, kwargs), error_delay=memo.ctx.settings.error_delay
    )


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def sendingpool_timer(
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    logger: Any,
    **kwargs: Any,
) -> None:
    settings = memo.ctx.settings
    await reconciling.run_timer(
        stopped,
        _cycle(memo, body, namespace, name, kwargs),
        first_delay=settings.lease_renew_interval / 2,
        error_delay=settings.error_delay,
        logger=logger,
    )


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def sendingpool_lease_loop(
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    logger: Any,
    **kwargs: Any,
) -> None:
    """The safety-critical loop: grants and renewals of the pool's egress-IP leases."""
    settings = memo.ctx.settings
    ns = namespace or "default"

    async def step() -> float:
        return await reconciler.renew_leases(
            memo.ctx, _admin(memo), dict(body), _world(ns, name, kwargs)
        )

    await reconciling.run_timer(
        stopped,
        lambda: reconciling.measured("SendingPoolLeases", step),
        first_delay=0.0,
        error_delay=max(settings.lease_renew_interval / 2, 0.2),
        logger=logger,
    )


@kopf.on.startup()
async def sendingpool_startup(memo: kopf.Memo, **_: Any) -> None:
    """One admin client for every pool, in the operator-wide memo (kopf gives each object a
    shallow copy of it, so one set later on a copy would never be closed). A (re)started
    operator remembers nothing: its memory is keyed by its new API client, and leases come
    back from the IP Leases in the API."""
    settings: settings_module.Settings = memo.settings
    memo.pod_admin = pod_admin.PodAdmin(timeout=settings.pod_admin_timeout)


@kopf.on.cleanup()
async def sendingpool_cleanup(memo: kopf.Memo, **_: Any) -> None:
    admin = memo.get("pod_admin")
    if isinstance(admin, pod_admin.PodAdmin):
        await admin.close()
    ctx = memo.get("ctx")
    if ctx is not None:
        reconciler.forget(owner=ctx.client)


@kopf.on.delete(*RESOURCE)
async def sendingpool_deleted(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any
) -> None:
    """The operator's finalizer holds the pool until its accepted mail has left
    (`pool_deletion`): intake stops, the queues drain from the pool's IPs within
    `spec.deletion.drainTimeout`, or the pool stays until they do or a person abandons the
    mail. Then the cluster-scoped CNI egress objects are deleted here (namespaced children
    go by owner reference) and the operator's memory of the pool is dropped."""
    ns = namespace or "default"
    await pool_deletion.drain_until_done(
        memo.ctx, _admin(memo), dict(body), lambda: _world(ns, name, kwargs)
    )
    meta = body["metadata"]
    await pool_children.apply_egress_objects(memo.ctx, None, ns, meta["name"], meta["uid"], None)
    reconciler.forget(meta["uid"])  # every instance's memory of the pool
