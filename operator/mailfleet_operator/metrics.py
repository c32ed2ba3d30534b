"""The operator's Prometheus metrics and its small HTTP server (/metrics, /healthz, /readyz).

Metrics live in their own registry so that an operator run in-process (tests) does not mix
with other instruments of the process. Labels are low-cardinality: kind, outcome, reason;
per-object detail belongs in status and events, not in metric labels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import prometheus_client
from aiohttp import web

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

RECONCILES = prometheus_client.Counter(
    "mailfleet_operator_reconciles_total",
    "Reconcile cycles run, by kind.",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = prometheus_client.Counter(
    "mailfleet_operator_reconcile_errors_total",
    "Reconcile cycles that failed, by kind and error class.",
    ["kind", "error"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = prometheus_client.Histogram(
    "mailfleet_operator_reconcile_duration_seconds",
    "Time spent in one reconcile cycle, by kind.",
    ["kind"],
    registry=REGISTRY,
)
DKIM_TRANSITIONS = prometheus_client.Counter(
    "mailfleet_operator_dkim_transitions_total",
    "DKIM key state transitions, by reason (KeyGenerated, KeyPublished, KeyVerified, "
    "KeyActivated, KeyRetired, RotationDue, RotationRequested, AlgorithmChanged).",
    ["reason"],
    registry=REGISTRY,
)
DKIM_ROTATIONS = prometheus_client.Counter(
    "mailfleet_operator_dkim_rotations_total",
    "Completed switches to a new DKIM key.",
    registry=REGISTRY,
)
DNS_VERIFICATIONS = prometheus_client.Counter(
    "mailfleet_operator_dns_verifications_total",
    "Records checked against DNS, by record family and result (published, missing, wrong, "
    "failed).",
    ["family", "result"],
    registry=REGISTRY,
)


POOL_FAILOVERS = prometheus_client.Counter(
    "mailfleet_operator_ip_failovers_total",
    "Egress IPs taken from their pod, by reason (HolderFailed, ListedOnDNSBL, Fenced).",
    ["reason"],
    registry=REGISTRY,
)
POOL_LEASE_GRANTS = prometheus_client.Counter(
    "mailfleet_operator_ip_lease_grants_total",
    "Egress IP leases granted to a pod that did not hold them before.",
    registry=REGISTRY,
)
POOL_IPS = prometheus_client.Gauge(
    "mailfleet_operator_pool_ips",
    "Egress IPs of all pools, by state (Active, Standby, Draining, Blocklisted, Unassigned).",
    ["state"],
    registry=REGISTRY,
)
POOL_AUTOSCALES = prometheus_client.Counter(
    "mailfleet_operator_pool_autoscales_total",
    "Changes of an autoscaled SendingPool's active replicas, by direction (up, down).",
    ["direction"],
    registry=REGISTRY,
)
WARMUPS = prometheus_client.Gauge(
    "mailfleet_operator_warmups",
    "IPWarmups served by this operator, by namespace and phase (Pending, WarmingUp, Held, "
    "RolledBack, Paused, Completed).",
    ["namespace", "phase"],
    registry=REGISTRY,
)
POOL_PAUSES = prometheus_client.Counter(
    "mailfleet_operator_reputation_pauses_total",
    "Reputation circuit-breaker trips, by scope (pool or class).",
    ["scope"],
    registry=REGISTRY,
)
LEADER = prometheus_client.Gauge(
    "mailfleet_operator_leader",
    "1 while this replica holds the leader Lease (renewed within the renew deadline), else 0; "
    "1 when leader election is off.",
    registry=REGISTRY,
)


async def start_http_server(
    *, host: str, port: int, ready: Callable[[], bool], alive: Callable[[], bool]
) -> tuple[web.AppRunner, int]:
    """Serve the probes and metrics; returns the runner (to clean up) and the bound port."""

    async def metrics(_request: web.Request) -> web.Response:
        body = await asyncio.to_thread(prometheus_client.generate_latest, REGISTRY)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n") if alive() else web.Response(status=503, text="dead\n")

    async def readyz(_request: web.Request) -> web.Response:
        return web.Response(text="ready\n") if ready() else web.Response(
            status=503, text="not ready\n"
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:  # the real port when 0 was asked for
        bound = int(address[1])
        break
    return runner, bound
