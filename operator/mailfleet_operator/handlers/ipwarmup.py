"""kopf handlers for IPWarmup: thin and level-based, all calling `reconcile_warmup`.

Create, update and resume run a cycle at once (a `spec.paused` flip must reach the pool's
leases within a cycle); a per-object daemon runs the next cycle when the reconciler asks:
at the latest every `stats_interval`, and exactly at the end of the warm-up day. The pool's
pods come from the SendingPool controller's kopf index, so reading their stats costs no
list call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from mailfleet_operator.api import common, ipwarmup
from mailfleet_operator.handlers import reconciling
from mailfleet_operator.reconcile import context, pod_admin
from mailfleet_operator.reconcile import ipwarmup as reconciler

RESOURCE = (common.GROUP, common.VERSION, ipwarmup.PLURAL)
POD_INDEX = "sendingpool_pods"  # defined by handlers.sendingpool, keyed (namespace, pool)


def _admin(memo: kopf.Memo) -> pod_admin.PodAdmin:
    admin = memo.get("pod_admin")
    if admin is None:
        ctx: context.Context = memo.ctx
        admin = pod_admin.PodAdmin(timeout=ctx.settings.pod_admin_timeout)
        memo.pod_admin = admin
    assert isinstance(admin, pod_admin.PodAdmin)
    return admin


def _pods(
    body: Mapping[str, Any], namespace: str, kwargs: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]] | None:
    index = kwargs.get(POD_INDEX)
    pool = ((body.get("spec") or {}).get("poolRef") or {}).get("name")
    if index is None or not pool:
        return None  # the reconciler lists them
    return list(index.get((namespace, pool), []))


def _cycle(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, kwargs: Mapping[str, Any]
) -> reconciling.Cycle:
    ctx: context.Context = memo.ctx
    ns = namespace or "default"

    async def reconcile() -> float:
        if not context.leading(ctx):
            return context.FOLLOWER_DELAY
        outcome = await reconciler.reconcile_warmup(
            ctx, _admin(memo), dict(body), pods=_pods(body, ns, kwargs)
        )
        return outcome.requeue_after

    return lambda: reconciling.measured(ipwarmup.KIND, reconcile)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def ipwarmup_changed(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, **kwargs: Any
) -> None:
    await reconciling.run_now(
        _cycle(memo, body, namespace, kwargs), error_delay=memo.ctx.settings.error_delay
    )


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def ipwarmup_timer(
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    body: kopf.Body,
    namespace: str | None,
    logger: Any,
    **kwargs: Any,
) -> None:
    settings = memo.ctx.settings
    await reconciling.run_timer(
        stopped,
        _cycle(memo, body, namespace, kwargs),
        first_delay=min(settings.error_delay, settings.stats_interval),  # then as it asks
        error_delay=settings.error_delay,
        logger=logger,
    )


@kopf.on.delete(*RESOURCE, optional=True)
async def ipwarmup_deleted(body: kopf.Body, **_: Any) -> None:
    """Nothing to clean up in the API; only the operator's memory of the warm-up is dropped."""
    reconciler.forget(body["metadata"]["uid"])
