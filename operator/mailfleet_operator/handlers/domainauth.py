"""kopf handlers for DomainAuth: thin, level-based, all calling the same reconcile.

create, update (spec or annotations, e.g. `mailfleet.io/rotate`) and resume reconcile at
once; a per-object daemon is the timer: it reconciles again when the last reconcile asked to
(soon after a rotation step, at the verification interval otherwise, or exactly when an
overlap ends). A per-object lock keeps the handlers and the daemon from overlapping.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import kopf

from mailfleet_operator.api import common, domainauth
from mailfleet_operator.handlers import reconciling
from mailfleet_operator.kube import resources
from mailfleet_operator.reconcile import context
from mailfleet_operator.reconcile import domainauth as reconciler

RESOURCE = (common.GROUP, common.VERSION, domainauth.PLURAL)


@dataclasses.dataclass
class _ObjectState:
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    deadline: float = 0.0


def _state(memo: Any) -> _ObjectState:
    state = memo.get("domainauth_state")
    if state is None:
        state = _ObjectState()
        memo.domainauth_state = state
    assert isinstance(state, _ObjectState)
    return state


async def _run(memo: Any, *, namespace: str, name: str) -> None:
    """One reconcile under the object's lock; schedules the next one (after `error_delay`
    when it failed)."""
    ctx: context.Context = memo.ctx
    state = _state(memo)
    loop = asyncio.get_running_loop()

    async def reconcile() -> float:
        if not context.leading(ctx):
            return context.FOLLOWER_DELAY
        outcome = await reconciler.reconcile(ctx, namespace=namespace, name=name)
        return outcome.requeue_after

    async with state.lock:
        delay = ctx.settings.error_delay
        try:
            delay = await reconciling.measured(domainauth.KIND, reconcile)
        finally:
            state.deadline = loop.time() + delay
            state.wake.set()


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def domainauth_changed(*, memo: Any, namespace: str | None, name: str, **_: Any) -> None:
    await reconciling.run_now(
        lambda: _run(memo, namespace=namespace or "default", name=name),
        error_delay=memo.ctx.settings.error_delay,
    )


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def domainauth_timer(
    *, stopped: kopf.DaemonStopped, memo: Any, namespace: str | None, name: str, logger: Any,
    **_: Any,
) -> None:
    state = _state(memo)
    loop = asyncio.get_running_loop()
    if state.deadline == 0.0:
        state.deadline = loop.time() + memo.ctx.settings.step_delay
    while not stopped:
        remaining = state.deadline - loop.time()
        if remaining > 0:
            state.wake.clear()
            await _sleep(stopped, state.wake, remaining)
            continue
        try:
            await _run(memo, namespace=namespace or "default", name=name)
        except Exception as error:  # logged and retried after error_delay; never fatal
            logger.warning(f"reconcile failed: {type(error).__name__}: {error}")


async def _sleep(stopped: kopf.DaemonStopped, wake: asyncio.Event, seconds: float) -> None:
    """Until `seconds` pass, a handler reconciled (wake), or the daemon is stopped."""
    waiters = {
        asyncio.ensure_future(wake.wait()),
        asyncio.ensure_future(stopped.wait()),
    }
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@kopf.on.delete(*RESOURCE)
async def domainauth_deleted(
    *, body: kopf.Body, memo: Any, namespace: str | None, name: str, **_: Any
) -> None:
    """Warn when pools still sign for the domain; remove the DNSEndpoint now. Key Secrets
    stay with `keyRetention: Retain` (the default: a DomainAuth re-created with the same
    name and domain adopts them) and go by owner reference with `Delete`."""
    ctx: context.Context = memo.ctx
    raw = dict(body)
    pools = reconciler.referencing_pools(
        await ctx.client.list(resources.SENDING_POOLS, namespace=namespace or "default"),
        name=name,
    )
    if pools:
        names = ", ".join(sorted(p["metadata"]["name"] for p in pools))
        await ctx.client.post_event(
            regarding=raw,
            type_="Warning",
            reason="StillReferenced",
            message=(
                f"deleted while SendingPool(s) {names} list it in spec.domains: they can no "
                "longer sign for this domain"
            ),
            now=ctx.clock.now(),
        )
    await reconciler.delete_dns_endpoint(ctx, raw)
    retention = ((raw.get("spec") or {}).get("dkim") or {}).get("keyRetention", "Retain")
    if retention == "Retain":
        kept = await reconciler.key_secret_names(ctx, raw)
        if kept:
            await ctx.client.post_event(
                regarding=raw,
                type_="Normal",
                reason="KeysRetained",
                message=(
                    f"{len(kept)} private-key Secret(s) kept (keyRetention: Retain); a "
                    f"DomainAuth {name} for the same domain adopts them. Remove them with "
                    f"kubectl delete secret -l mailfleet.io/domainauth={name}"
                ),
                now=ctx.clock.now(),
            )
