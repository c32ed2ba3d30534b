"""Run the operator in-process: kopf plus the probe/metrics server, until a stop flag is set.

Used by `mailfleet operator run` and by tests (tests/sandbox_fixtures/operator.py), which
start and stop it as an asyncio task to simulate restarts. Handler modules are imported
here (they register with kopf's default registry on import).

Leader election (`leadership`) starts before kopf, as a task of its own, and is handed to the
controllers as `memo.leadership`. Losing the Lease stops kopf and ends the run with
`LeadershipLost` (exit code 1), so the pod restarts with a clean memory.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from collections.abc import Callable

import kopf

from mailfleet_operator import handlers, leadership, metrics
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.logic import leader_election

log = logging.getLogger(__name__)


def load_handlers() -> None:
    for module in handlers.HANDLER_MODULES:
        importlib.import_module(module)


async def run_operator(
    settings: settings_module.Settings,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    clock: settings_module.Clock | None = None,
    on_http_port: Callable[[int], None] | None = None,
) -> None:
    """Serve until `stop_flag` is set (or the task is cancelled, or a signal stops kopf).

    Embedding note: when kopf stops it cancels every task created after it started, so an
    embedding program (a test) should run this on a loop of its own (a thread), with
    `threading.Event` flags, which kopf accepts.
    """
    load_handlers()
    connection = kube_config.load_connection(settings.kubeconfig)
    ready: asyncio.Event | threading.Event = ready_flag or asyncio.Event()
    operator_task: asyncio.Task[None] | None = None

    runner = None
    if settings.http_port >= 0:
        runner, port = await metrics.start_http_server(
            host=settings.http_host,
            port=settings.http_port,
            ready=ready.is_set,
            alive=lambda: operator_task is not None and not operator_task.done(),
        )
        log.info("probes and metrics listening", extra={"port": port})
        if on_http_port is not None:
            on_http_port(port)
    lost = False

    def on_lost() -> None:
        nonlocal lost
        lost = True
        if operator_task is not None:
            operator_task.cancel()

    elected = _leadership(settings, connection, on_lost=on_lost)
    metrics.LEADER.set_function(lambda: 1.0 if elected.is_leading() else 0.0)
    # Before kopf: kopf cancels the tasks created after it started when it stops.
    election_task = (
        asyncio.create_task(elected.run(), name="leader-election")
        if isinstance(elected, leadership.Leadership) else None
    )
    memo = kopf.Memo(settings=settings, connection=connection, clock=clock, leadership=elected)
    if settings.all_namespaces:
        scope: dict[str, object] = {"clusterwide": True}
    else:
        scope = {"namespaces": list(settings.namespaces) or [connection.default_namespace]}
    # With leader election, the elected leader is the only one that acts, so kopf runs
    # standalone: kopf peering could pick another replica than the Lease did, and then
    # neither would act. Peering serves only when election is off.
    peering = not settings.standalone and not settings.leader_election
    if peering:
        # A peering name makes peering mandatory: replicas wait for the peering object
        # rather than run unsupervised side by side.
        scope.update(peering_name=settings.peering_name, priority=settings.priority)
    elif not settings.standalone:
        log.info("kopf peering is not used: leader election decides which replica acts")
    try:
        operator_task = asyncio.create_task(
            kopf.operator(
                standalone=not peering,
                stop_flag=stop_flag,
                ready_flag=ready,
                memo=memo,
                **scope,  # type: ignore[arg-type]
            )
        )
        await operator_task
    except asyncio.CancelledError:
        if not lost:
            raise
    finally:
        if operator_task is not None and not operator_task.done():
            operator_task.cancel()
            await asyncio.gather(operator_task, return_exceptions=True)
        if election_task is not None:
            election_task.cancel()  # releases the Lease if still leading
            await asyncio.gather(election_task, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
    if lost:
        raise leadership.LeadershipLost(
            "leader election: the Lease was lost; exiting so that the pod restarts"
        )


def _leadership(
    settings: settings_module.Settings,
    connection: kube_config.Connection,
    *,
    on_lost: Callable[[], None],
) -> leadership.Leadership | leadership.Unelected:
    if not settings.leader_election:
        return leadership.Unelected()
    namespace = (
        settings.leader_election_namespace
        or os.environ.get("POD_NAMESPACE")
        or connection.default_namespace
    )
    return leadership.Leadership(
        connection=connection,
        namespace=namespace,
        name=settings.leader_lease_name,
        identity=leadership.default_identity(),
        settings=leader_election.ElectionSettings(
            lease_duration=settings.leader_lease_duration,
            renew_deadline=settings.leader_renew_deadline,
            retry_period=settings.leader_retry_period,
        ),
        on_lost=on_lost,
    )
