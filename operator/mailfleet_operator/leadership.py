"""Leader election of operator replicas through a coordination.k8s.io/v1 Lease (issue 14).

Only the leader grants and renews egress IP leases: the SendingPool lease loop asks
`is_leading()` before every write and waits out, from `leading_since()`, the IP leases it did
not grant. kopf peering is not this: a peer cut off from the API server keeps acting.

`Leadership.run()` reads the Lease every retry period and acquires or renews it with a
resourceVersion precondition (a create that may fail with 409, or a merge patch carrying
metadata.resourceVersion that fails with 409 when someone else wrote in between); the rules are
in `logic.leader_election`. Leadership is a function of time, not of the loop's progress:
`is_leading()` compares the monotonic time of the last successful renewal with the renew
deadline at every call, so a leader whose requests hang stops leading at the deadline. Every
request has a timeout well below the deadline, so the loop itself never hangs for long.

Losing leadership after having held it is final: `on_lost` is called once (production: stop
kopf and exit non-zero so the pod restarts with a clean memory) and `run()` returns. A graceful
stop (the task cancelled while leading) releases the Lease, so a successor need not wait.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping

from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config, resources
from mailfleet_operator.logic import leader_election as rules

log = logging.getLogger(__name__)


class LeadershipLost(SystemExit):
    """Raised by the operator's runner once the Lease was lost: the process must exit (code 1),
    and nothing that catches `Exception` may swallow it."""

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


def default_identity(env: Mapping[str, str] | None = None) -> str:
    """The pod's name (downward API) or the host name, plus a random suffix: a restarted
    process is a new candidate and waits out the Lease of its previous incarnation."""
    env = os.environ if env is None else env
    return f"{env.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


class Leadership:
    """One candidate in the election for the Lease `namespace`/`name`."""

    def __init__(
        self,
        *,
        connection: config.Connection,
        namespace: str,
        name: str,
        identity: str,
        settings: rules.ElectionSettings,
        on_lost: Callable[[], None] | None = None,
        request_timeout: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
            datetime.UTC
        ),
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.settings = settings
        self.request_timeout = (
            request_timeout if request_timeout is not None else settings.renew_deadline / 4
        )
        if not 0 < self.request_timeout < settings.renew_deadline / 2:
            # Two requests (read, write) per attempt must fit well inside the deadline.
            raise ValueError("request_timeout must be below half of the renew deadline")
        self._on_lost = on_lost
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._observation: rules.Observation | None = None
        self._last_renew: float | None = None
        self._leading_since: float | None = None
        self._lost = False
        self._done = asyncio.Event()
        self._acquired = asyncio.Event()
        self._watchdog: asyncio.TimerHandle | None = None

    # --- what the rest of the operator asks ---------------------------------------------------

    def is_leading(self) -> bool:
        """True only while the last successful renewal was sent less than the renew deadline
        ago by the monotonic clock (computed now, whatever the loop is doing)."""
        return not self._lost and rules.is_leading(
            last_renew=self._last_renew,
            now=self._monotonic(),
            renew_deadline=self.settings.renew_deadline,
        )

    def leading_since(self) -> float | None:
        """Monotonic time leadership was acquired, or None when not leading."""
        return self._leading_since if self.is_leading() else None

    @property
    def lost(self) -> bool:
        """Leadership was held and then lost (final)."""
        return self._lost

    async def wait_leading(self) -> None:
        while not self.is_leading():
            if self._lost:
                raise LeadershipLost(f"leader election {self.namespace}/{self.name}: lost")
            self._acquired.clear()
            await self._acquired.wait()

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Acquire, then renew every retry period, until the task is cancelled (the Lease is
        then released) or leadership is lost (`on_lost` is called, then this returns)."""
        client = kube_client.Client(self.connection, timeout=self.request_timeout)
        await client.open()
        log.info("leader election started", extra={
            "lease": f"{self.namespace}/{self.name}", "identity": self.identity})
        try:
            while not self._lost:
                try:
                    await asyncio.wait_for(
                        self._attempt(client), timeout=2 * self.request_timeout
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # any failure is a missed attempt, never a crash
                    log.warning("leader election attempt failed", extra={
                        "lease": f"{self.namespace}/{self.name}", "error": repr(error)})
                self._check_deadline()
                try:
                    await asyncio.wait_for(self._done.wait(), timeout=self._next_delay())
                except TimeoutError:
                    pass
        finally:
            self._disarm()
            if self.is_leading():
                await self._release(client)
            await client.close()

    def _next_delay(self) -> float:
        delay = self.settings.retry_period
        if self._last_renew is not None:
            # Retry sooner rather than let the deadline pass between attempts.
            remaining = self._last_renew + self.settings.renew_deadline - self._monotonic()
            delay = min(delay, max(remaining / 2, 0.05))
        return delay

    async def _attempt(self, client: kube_client.Client) -> None:
        current = rules.read_lease(
            await client.get(resources.LEASES, name=self.name, namespace=self.namespace)
        )
        self._observation = rules.observe(self._observation, current, now=self._monotonic())
        decision = rules.decide(
            lease=current,
            identity=self.identity,
            observation=self._observation,
            now=self._monotonic(),
            settings=self.settings,
        )
        if decision.action is rules.Action.WAIT:
            if self._leading_since is not None and current is not None:
                self._lose(f"the Lease is held by {current.holder!r}")
            return
        spec = rules.build_lease_spec(
            current=current, identity=self.identity, settings=self.settings,
            now=self._wall_clock(),
        )
        body = rules.build_lease(
            name=self.name, namespace=self.namespace, spec=spec,
            resource_version=current.resource_version if current is not None else None,
        )
        sent = self._monotonic()  # the write lands after this: others count from later
        try:
            if current is None:
                written = await client.create(
                    resources.LEASES, body=body, namespace=self.namespace
                )
            else:
                written = await client.patch(
                    resources.LEASES, name=self.name, namespace=self.namespace, patch=body
                )
        except kube_client.Conflict:
            # Someone wrote first; the next read tells who.
            log.info("leader election write lost a race", extra={
                "lease": f"{self.namespace}/{self.name}", "reason": decision.reason})
            return
        self._renewed(sent=sent, written=written, reason=decision.reason)

    def _renewed(self, *, sent: float, written: Mapping[str, object], reason: str) -> None:
        self._check_deadline()  # a renewal that comes back after the deadline is too late
        if self._lost:
            return
        was_leading = self.is_leading()
        self._last_renew = sent
        self._observation = rules.observe(None, rules.read_lease(written), now=sent)
        if not was_leading:
            self._leading_since = sent
            log.info("became leader", extra={
                "lease": f"{self.namespace}/{self.name}", "identity": self.identity,
                "reason": reason})
        self._acquired.set()
        self._arm(sent + self.settings.renew_deadline)

    # --- losing -------------------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Check at the deadline itself, not at the loop's next turn."""
        self._disarm()
        delay = max(deadline - self._monotonic(), 0.0)
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check_deadline)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_deadline(self) -> None:
        if self._leading_since is not None and not self.is_leading():
            self._lose(f"no renewal for {self.settings.renew_deadline} s")

    def _lose(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._last_renew = None
        self._disarm()
        self._done.set()
        self._acquired.set()  # wake wait_leading() callers: they raise
        log.error("leadership lost", extra={
            "lease": f"{self.namespace}/{self.name}", "identity": self.identity,
            "reason": reason})
        if self._on_lost is not None:
            self._on_lost()

    async def _release(self, client: kube_client.Client) -> None:
        """Graceful stop: stop leading first, then clear the holder so a successor need not
        wait a lease duration. Best effort: a failure only makes the successor wait."""
        self._last_renew = None
        self._leading_since = None
        observation = self._observation
        try:
            await asyncio.wait_for(
                client.patch(
                    resources.LEASES, name=self.name, namespace=self.namespace,
                    patch={
                        "metadata": {"resourceVersion": observation.resource_version}
                        if observation is not None else {},
                        "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                                 "renewTime": rules.format_micro_time(self._wall_clock())},
                    },
                ),
                timeout=self.request_timeout,
            )
        except Exception as error:
            log.info("leader Lease not released", extra={
                "lease": f"{self.namespace}/{self.name}", "error": repr(error)})
        else:
            log.info("leader Lease released", extra={"lease": f"{self.namespace}/{self.name}"})


class Unelected:
    """Stands in for `Leadership` when leader election is off (one replica): always leading
    since the process started."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._since = monotonic()

    def is_leading(self) -> bool:
        return True

    def leading_since(self) -> float | None:
        return self._since

    async def wait_leading(self) -> None:
        return None
