"""kopf handlers for SendingPool: thin, level-based, all calling `reconcile_pool`.

Pods and nodes come from kopf watch indexes, so a cycle costs no API list calls; the
per-pool daemon runs a cycle every half lease-renewal interval (renewals must never lapse),
and change handlers run one at once. The reconciler serializes cycles of one pool.
Children are deleted by the garbage collector through their owner references.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from mailfleet_operator import metrics
from mailfleet_operator.api import common, sendingpool
from mailfleet_operator.logic import children
from mailfleet_operator.reconcile import context, pod_admin
from mailfleet_operator.reconcile import sendingpool as reconciler

RESOURCE = (common.GROUP, common.VERSION, sendingpool.PLURAL)


@kopf.index("pods", labels={children.POOL_LABEL: kopf.PRESENT})
def sendingpool_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "default", labels[children.POOL_LABEL]): dict(body)}


@kopf.index("nodes")
def sendingpool_nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(body)}


def _admin(memo: kopf.Memo) -> pod_admin.PodAdmin:
    admin = memo.get("pod_admin")
    if admin is None:
        ctx: context.Context = memo.ctx
        admin = pod_admin.PodAdmin(timeout=ctx.settings.pod_admin_timeout)
        memo.pod_admin = admin
    assert isinstance(admin, pod_admin.PodAdmin)
    return admin


def _world(
    namespace: str, name: str, pods: kopf.Index[Any, Any], nodes: kopf.Index[Any, Any]
) -> reconciler.World:
    pool_pods = list(pods.get((namespace, name), []))
    node_map: dict[str, dict[str, Any]] = {}
    for key in nodes:
        for node in nodes[key]:
            node_map[key] = node
    return reconciler.World(pods=pool_pods, nodes=node_map)


async def _cycle(
    memo: kopf.Memo, body: kopf.Body, namespace: str, name: str, pods: Any, nodes: Any
) -> float:
    ctx: context.Context = memo.ctx
    metrics.RECONCILES.labels(kind=sendingpool.KIND).inc()
    with metrics.RECONCILE_SECONDS.labels(kind=sendingpool.KIND).time():
        try:
            outcome = await reconciler.reconcile_pool(
                ctx, _admin(memo), dict(body), _world(namespace, name, pods, nodes)
            )
        except Exception as error:
            metrics.RECONCILE_ERRORS.labels(kind=sendingpool.KIND, error=type(error).__name__).inc()
            raise
    return outcome.requeue_after


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def sendingpool_changed(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any
) -> None:
    pods, nodes = kwargs["sendingpool_pods"], kwargs["sendingpool_nodes"]
    try:
        await _cycle(memo, body, namespace or "default", name, pods, nodes)
    except Exception as error:
        raise kopf.TemporaryError(
            f"reconcile failed: {type(error).__name__}: {error}",
            delay=memo.ctx.settings.error_delay,
        ) from error


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
    pods, nodes = kwargs["sendingpool_pods"], kwargs["sendingpool_nodes"]
    delay = memo.ctx.settings.lease_renew_interval / 2
    while not stopped:
        await stopped.wait(delay)
        if stopped:
            break
        try:
            delay = await _cycle(memo, body, namespace or "default", name, pods, nodes)
        except Exception as error:  # logged and retried; never fatal
            logger.warning(f"reconcile failed: {type(error).__name__}: {error}")
            delay = memo.ctx.settings.error_delay
        await asyncio.sleep(0)


@kopf.on.delete(*RESOURCE, optional=True)
async def sendingpool_deleted(body: kopf.Body, **_: Any) -> None:
    """Children go by owner reference; only the operator's memory of the pool is dropped."""
    reconciler.forget(body["metadata"]["uid"])
