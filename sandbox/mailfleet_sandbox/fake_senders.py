"""Fake sender pods: only the admin API the operator calls (`PUT /v1/assignment`,
`GET /v1/stats`, `POST /v1/drain`, `DELETE /v1/drain`), one tiny aiohttp app per pod on its
own loopback address.

Controller tests and benchmarks use these instead of real senders so that a reconcile cycle
costs milliseconds and time can be a manual clock: what a pod holds, reports and was asked
to do is plain data the caller reads and sets. Every grant is checked against the one rule
that must never break: no IP validly leased to two pods at the same moment (`violations`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import socket
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from mailfleet_sender import wire

DEFAULT_DAY_SECONDS = 86400.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (every fake pod listens on it, each on its own host)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pool_body(
    name: str, *, port: int, ips: Sequence[str], namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    """A SendingPool whose pods serve their admin API on `port` (adminPort: fake senders),
    one pod, egress `ips` with HELO names mta<N>.example.com; `spec` adds or overrides."""
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "egress": {
                "ips": [{"address": ip, "heloName": f"mta{i}.example.com"}
                        for i, ip in enumerate(ips)]
            },
            "submission": {"adminPort": port},
            **spec,
        },
    }


def _wall_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class FakeSender:
    """What one pod holds and reports; the test reads and sets these fields."""

    pod: str
    host: str
    leases: list[wire.Lease] = dataclasses.field(default_factory=list)
    expiries: dict[str, datetime.datetime] = dataclasses.field(default_factory=dict)
    """When each lease of the last assignment ends: its TTL counted from receipt (`clock`)."""
    epochs: dict[str, int] = dataclasses.field(default_factory=dict)
    """The highest epoch accepted per IP; an assignment with an older one is refused (409)."""
    queue: int = 0
    """Depth of the `default` class queue reported in stats."""
    drains: list[bool] = dataclasses.field(default_factory=list)
    """The `handoff` flag of every drain request, in order."""
    targets: list[dict[str, Any] | None] = dataclasses.field(default_factory=list)
    """The hand-off `target` of every drain request (another pool's pods), in order."""
    draining: bool = False
    """Set by a drain, cleared by its cancellation (`DELETE /v1/drain`); reported in stats."""
    undrains: int = 0
    """How many times the drain was cancelled."""
    handoff: str = "idle"
    """The hand-off state reported in stats (`idle`, `running`, `done`)."""
    stats_reads: int = 0
    reachable: bool = True
    """False: every admin call answers 503, like a pod behind a network partition."""
    stalled: bool = False
    """True: admin calls get no answer until it is False again, like a frozen process
    (SIGSTOP) whose kernel still accepts connections."""
    counts: dict[tuple[str, int], dict[str, int]] = dataclasses.field(default_factory=dict)
    """(ip, sender day) -> sent, delivered, bounced, complained, deferred."""
    signing: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """domain -> algorithm (rsa, ed25519) -> the DKIM selector the pod reports signing with."""
    kpis: dict[str, Any] | None = None
    """The `kpis` object of its stats (issue 20's shape); left out when None."""

    @property
    def addresses(self) -> list[str]:
        """The IPs of the last assignment, valid or not."""
        return [lease.address for lease in self.leases]

    def holds(self, address: str, now: datetime.datetime) -> bool:
        expiry = self.expiries.get(address)
        return expiry is not None and expiry > now


class FakeSenders:
    """The admin endpoints of a pool's pods, all on `port` (each pod on its own host).

    `clock` is what "now" means for lease validity and for the sender day (days of
    `day_seconds` counted from the epoch, as the real sender counts them). `past_days`: how
    many days before today stats report in `days`, as the real sender does (7); None for a
    sender that does not report them.
    """

    def __init__(
        self,
        port: int,
        *,
        clock: Callable[[], datetime.datetime] = _wall_clock,
        day_seconds: float = DEFAULT_DAY_SECONDS,
        past_days: int | None = 7,
    ) -> None:
        self.port, self.clock, self.day_seconds = port, clock, day_seconds
        self.past_days = past_days
        self.pods: dict[str, FakeSender] = {}
        self.violations: list[str] = []
        self._granted = asyncio.Event()
        self._runners: list[web.AppRunner] = []

    def __getitem__(self, pod: str) -> FakeSender:
        return self.pods[pod]

    def day(self) -> int:
        return math.floor(self.clock().timestamp() / self.day_seconds)

    def report(self, pod: str, ip: str, **counts: int) -> None:
        """What `pod` has sent from `ip` so far in the current sender day; once the day is
        over its counts move from `ips` to `days`, as in a real sender."""
        self.pods[pod].counts[(ip, self.day())] = counts

    def holders(self, address: str) -> list[str]:
        """Pods whose lease on `address` is valid now."""
        now = self.clock()
        return sorted(s.pod for s in self.pods.values() if s.holds(address, now))

    async def next_grant(self, *, within: float) -> None:
        """Wake on the next assignment any pod receives, or after `within` seconds (leases
        also end by time alone)."""
        self._granted.clear()
        try:
            await asyncio.wait_for(self._granted.wait(), within)
        except TimeoutError:
            pass

    def _check(self, sender: FakeSender) -> None:
        for lease in sender.leases:
            holders = self.holders(lease.address)
            if len(holders) > 1:
                self.violations.append(f"{lease.address} held by {holders} at {self.clock()}")

    def _stats(self, sender: FakeSender) -> wire.Stats:
        today = self.day()
        ips = [
            wire.IPStats(
                address=ip,
                sent_today=c.get("sent", 0),
                delivered_today=c.get("delivered", c.get("sent", 0)),
                bounced_today=c.get("bounced", 0),
                complained_today=c.get("complained", 0),
                deferred_today=c.get("deferred", 0),
            )
            for (ip, day), c in sender.counts.items()
            if day == today
        ]
        days = None
        if self.past_days is not None:
            days = [
                wire.DayStats(
                    day=day,
                    ips=[
                        wire.DayIPStats(
                            address=ip,
                            sent=c.get("sent", 0),
                            delivered=c.get("delivered", c.get("sent", 0)),
                            bounced=c.get("bounced", 0),
                            complained=c.get("complained", 0),
                            deferred=c.get("deferred", 0),
                        )
                        for (ip, counted), c in sender.counts.items()
                        if counted == day
                    ],
                )
                for day in range(today - self.past_days, today)
            ]
        return wire.Stats(
            pod=sender.pod,
            day=today,
            days=days,
            draining=sender.draining,
            handoff=wire.HandoffStats(state=sender.handoff),  # type: ignore[arg-type]
            queues={"default": wire.QueueStats(depth=sender.queue)},
            ips=ips,
            dkim={
                domain: wire.DKIMDomainStats(selectors=dict(selectors))
                for domain, selectors in sender.signing.items()
            },
        )

    async def start(self, pod: str, host: str) -> FakeSender:
        """Serve `pod`'s admin API on `host`:`port` (idempotent per pod)."""
        if pod in self.pods:
            return self.pods[pod]
        sender = self.pods[pod] = FakeSender(pod=pod, host=host)

        def unreachable() -> web.Response | None:
            return None if sender.reachable else web.Response(status=503)

        async def thawed() -> None:
            while sender.stalled:  # noqa: ASYNC110 - a plain flag the test sets, as all fields
                await asyncio.sleep(0.01)

        async def assignment(request: web.Request) -> web.Response:
            await thawed()
            if (refused := unreachable()) is not None:
                return refused
            body = wire.Assignment.model_validate(await request.json())
            if any(lease.epoch < sender.epochs.get(lease.address, 0) for lease in body.leases):
                return web.json_response({"code": "stale"}, status=409)
            received = self.clock()
            sender.leases = list(body.leases)
            sender.expiries = {
                lease.address: received + datetime.timedelta(seconds=lease.ttl_seconds)
                for lease in body.leases
            }
            for lease in body.leases:
                sender.epochs[lease.address] = lease.epoch
            self._check(sender)
            self._granted.set()
            answer = wire.AssignmentStatus(
                pod=pod,
                generation=body.generation,
                day=self.day(),
                leases=[
                    wire.LeaseStatus(
                        address=lease.address,
                        helo_name=lease.helo_name,
                        epoch=lease.epoch,
                        expires_in_seconds=lease.ttl_seconds,
                        valid=True,
                    )
                    for lease in body.leases
                ],
            )
            return web.json_response(answer.model_dump(mode="json", by_alias=True))

        async def stats(request: web.Request) -> web.Response:
            await thawed()
            if (refused := unreachable()) is not None:
                return refused
            sender.stats_reads += 1
            body = self._stats(sender).model_dump(mode="json", by_alias=True)
            if sender.kpis is not None:
                body["kpis"] = sender.kpis
            return web.json_response(body)

        async def drain(request: web.Request) -> web.Response:
            await thawed()
            if (refused := unreachable()) is not None:
                return refused
            sender.drains.append(request.query.get("handoff") == "true")  # as the sender reads it
            body = await request.json() if request.can_read_body else {}
            sender.targets.append((body or {}).get("target"))
            sender.draining = True
            return web.json_response({"draining": True})

        async def undrain(request: web.Request) -> web.Response:
            await thawed()
            if (refused := unreachable()) is not None:
                return refused
            sender.undrains += 1
            sender.draining = False
            return web.json_response(self._stats(sender).model_dump(mode="json", by_alias=True))

        app = web.Application()
        app.router.add_put("/v1/assignment", assignment)
        app.router.add_get("/v1/stats", stats)
        app.router.add_post("/v1/drain", drain)
        app.router.add_delete("/v1/drain", undrain)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, self.port).start()
        self._runners.append(runner)
        return sender

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
