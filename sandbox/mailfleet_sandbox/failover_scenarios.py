"""Failover scenarios on the sandbox world: one failure caused to the holder of an egress IP
while mail flows, judged from what the receivers recorded (issue 14 item 5). Used by
`bench/failover.py` (timings) and tests/e2e/test_failover_scenarios.py (safety).

The pool `failover` has two egress IPs, two active pods and a standby; a `Traffic` loop submits
mail to the pods its client Service routes to during the whole scenario, each submission in
the scenes' `Ledger`. The failures:

- `killed`: SIGKILL of the holder's sender process (the node agent restarts it);
- `frozen`: SIGSTOP of the holder's process, SIGCONT once the IP moved and mail flowed from
  its new pod, so that a thawed process that still believed in its lease would show;
- `partitioned`: the holder's node stops heartbeating, its pods keep running (the
  node-lifecycle controller's grace decides when it is noticed), healed afterwards;
- `api-blip`: the operator's API traffic answers 503 for 5 s (the world's operator fault
  proxy): no IP may move;
- `leader-killed`: SIGKILL of the leading operator replica: the other replica takes over and
  waits out the IP leases it did not grant, so mail may pause, but no IP may have two pods.

Which pod sent a received message: the receivers record the peer address (the egress IP) and
the HELO name, which is the lease's, the same for every pod. What tells the pods apart is the
pool's own mark on every copy it sends, the sealed trace header (`X-Mailfleet-Trace`), whose
message reference starts with the sending pod's name (`mailfleet_sender.deliverability.
message_ref`); it opens with the pool's link keys (its `-links` Secret), as the pool's
feedback port opens the copies that come back in reports.

Two pods "sent from one IP at once" when, on that IP, pod B's messages fall inside pod A's
span: a pod's span joins its messages that are less than a lease apart (a pod that sent twice
within one lease may have held the IP all along in between). A lease moves only after the
old holder's lease expired or it confirmed a release, so a genuine hand-over never comes back
to the first pod that fast; the rule can over-report a hand-back after a quick release, never
miss two senders. Times are the receivers' own (`received_at`), one clock for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from mailfleet_operator import settings as operator_settings
from mailfleet_sender import deliverability

from mailfleet_sandbox import attribution, fencing, scenes
from mailfleet_sandbox.kube.errors import ApiError
from mailfleet_sandbox.providers import ReceivedMessage
from mailfleet_sandbox.world import (
    API_VERSION,
    OPERATOR_NODE,
    SandboxWorld,
    WorldSettings,
    condition,
    pod_ready,
    sample_files,
    wait_until,
)

JSON = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger(__name__)

SCENARIOS = ("killed", "frozen", "partitioned", "api-blip", "leader-killed")
POOL = "failover"
IPS = (("127.0.20.1", "mta1.example.test"), ("127.0.20.2", "mta2.example.test"))
LEADER_LEASE = "mailfleet-operator-leader"
IP_LEASE_PREFIX = "mailfleet-ip-"
API_BLIP_SECONDS = 5.0


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Profile:
    """The lease settings a run uses: `default` is the operator's defaults and the pool's
    default `unhealthyAfter`; `aggressive` a short-lease setting."""

    name: str
    lease_duration: float
    renew_interval: float
    skew: float
    pod_admin_timeout: float
    unhealthy_after: str
    leader_lease_duration: float
    leader_renew_deadline: float
    leader_retry_period: float

    def to_json(self) -> JSON:
        return {"profile": self.name, "lease_duration": self.lease_duration,
                "renew_interval": self.renew_interval, "skew": self.skew,
                "pod_admin_timeout": self.pod_admin_timeout,
                "unhealthy_after": self.unhealthy_after,
                "leader_lease_duration": self.leader_lease_duration,
                "leader_renew_deadline": self.leader_renew_deadline,
                "leader_retry_period": self.leader_retry_period}


def profile(name: str) -> Profile:
    fields = operator_settings.Settings.model_fields

    def default(key: str) -> float:
        return float(fields[key].default)

    leader = (default("leader_lease_duration"), default("leader_renew_deadline"),
              default("leader_retry_period"))
    if name == "default":
        return Profile("default", default("lease_duration"), default("lease_renew_interval"),
                       default("lease_clock_skew"), default("pod_admin_timeout"), "5s", *leader)
    if name == "aggressive":
        return Profile("aggressive", 2.0, 0.5, 0.25, 0.5, "1s", *leader)
    raise ValueError(f"unknown settings profile {name!r} (default, aggressive)")


def world_settings(root: Path, prof: Profile, control_plane: str = "") -> WorldSettings:
    """The world for failover runs: the profile's leases, two operator replicas behind the
    operator fault proxy, and warm-up days too long to matter."""
    return WorldSettings(root=root, pool=POOL, warmup_day_seconds=86400.0,
                         lease_duration=prof.lease_duration,
                         lease_renew_interval=prof.renew_interval,
                         lease_clock_skew=prof.skew, pod_admin_timeout=prof.pod_admin_timeout,
                         operator_replicas=2, operator_api_proxy=True,
                         control_plane=control_plane)


def pool_body(prof: Profile, namespace: str) -> JSON:
    return {
        "apiVersion": API_VERSION, "kind": "SendingPool",
        "metadata": {"name": POOL, "namespace": namespace},
        "spec": {
            "replicas": 2, "standbyReplicas": 1, "storage": {"size": "1Gi"},
            "egress": {"mode": "direct",
                       "ips": [{"address": a, "heloName": h} for a, h in IPS]},
            "domains": [scenes.DOMAINAUTH],
            "classes": [{"name": "transactional", "priority": 100, "maxAge": "10m"}],
            "throttling": {"rate": "500/s",
                           "defaults": {"messagesPerSecond": 100, "maxConnections": 4}},
            "retry": {"schedule": ["1s", "2s", "4s"], "maxAge": "10m"},
            "failover": {"unhealthyAfter": prof.unhealthy_after},
            "submission": {"smtp": {"port": 2587}, "http": {"port": 8080}},
        },
    }


# ------------------------------------------------------------------ API calls off the loop
async def call(world: SandboxWorld, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A world API call: blocking HTTPS on the real control plane (run in a thread, so the
    receivers and DNS on this loop keep their timing); in-process with the emulator."""
    if world.control is None:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def poll(world: SandboxWorld, check: Callable[[], Awaitable[Any]], *, within: float,
               what: str, interval: float = 0.2) -> Any:
    """`wait_until` for a coroutine check (API errors count as "not yet")."""
    async def guarded() -> Any:
        try:
            return await check()
        except (LookupError, ApiError, OSError):
            return None
    return await wait_until(guarded, within=within, what=what, interval=interval)


# ------------------------------------------------------------------ who sent what
def trace_key(world: SandboxWorld) -> list[bytes]:
    """The failover pool's link keys (any may have sealed a trace)."""
    return attribution.trace_key(world, POOL)


sending_pod = attribution.sending_pod


@dataclass(frozen=True)
class Delivery:
    """One received message: from which IP, which pod (its message-reference prefix), when."""

    ip: str
    pod: str
    at: float
    message_id: str


def pod_ref(pod: str) -> str:
    """A pod name as the message reference writes it."""
    return deliverability.message_ref(pod, "0").rpartition(".")[0]


_ATTRIBUTED: dict[int, tuple[ReceivedMessage, Delivery]] = {}
"""id(message) -> (message, its Delivery): each copy is opened once (the message is kept, so
its id is not reused)."""


def deliveries(world: SandboxWorld, key: list[bytes], *, since: float) -> list[Delivery]:
    out = []
    for m in world.fleet.messages:
        if m.received_at < since:
            continue
        known = _ATTRIBUTED.get(id(m))
        if known is None or known[0] is not m:
            known = (m, Delivery(m.peer_ip, sending_pod(m, key), m.received_at,
                                 scenes.message_id_of(m)))
            _ATTRIBUTED[id(m)] = known
        out.append(known[1])
    return sorted(out, key=lambda d: d.at)


@dataclass
class Overlap:
    ip: str
    pods: tuple[str, str]
    seconds: float
    messages: int
    """Messages of the second pod inside the first pod's span."""

    def describe(self) -> str:
        return (f"{self.ip}: {self.messages} messages of {self.pods[1]} inside the span of "
                f"{self.pods[0]} ({self.seconds:.2f}s of both)")


def spans(times: Sequence[float], gap: float) -> list[tuple[float, float]]:
    """Join sorted times less than `gap` apart into closed intervals."""
    out: list[tuple[float, float]] = []
    for t in times:
        if out and t - out[-1][1] < gap:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


def overlaps(found: Sequence[Delivery], gap: float) -> list[Overlap]:
    """Pairs of pods whose spans on one IP intersect (see the module docstring)."""
    by_ip: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d in found:
        if d.pod:
            by_ip[d.ip][d.pod].append(d.at)
    problems = []
    for ip, pods in sorted(by_ip.items()):
        joined = {pod: spans(sorted(times), gap) for pod, times in pods.items()}
        for a, b in itertools.permutations(sorted(pods), 2):
            inside = [t for t in pods[b] if any(s <= t <= e for s, e in joined[a])]
            if not inside:
                continue
            both = 0.0
            for s1, e1 in joined[a]:
                for s2, e2 in joined[b]:
                    both = max(both, min(e1, e2) - max(s1, s2))
            problems.append(Overlap(ip, (a, b), round(max(both, 0.0), 3), len(inside)))
    return problems


def longest_gap(found: Sequence[Delivery], ip: str, start: float, end: float) -> float:
    times = [start, *(d.at for d in found if d.ip == ip and start <= d.at <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


# ------------------------------------------------------------------ traffic
class Traffic:
    """Steady submissions (`rate` per second, each its own task so a frozen pod holds up
    nothing) to the pods the pool's client Service routes to, as an application would; the
    routing table is refreshed in the background."""

    def __init__(self, world: SandboxWorld, ledger: scenes.Ledger, scene: str,
                 rate: float = 25.0) -> None:
        self.world, self.ledger, self.scene, self.rate = world, ledger, scene, rate
        self.routes: list[tuple[str, str]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._n = itertools.count()
        self._port = 8080
        self._headers: dict[str, str] = {}

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(LookupError, ApiError, OSError):
                routed = await call(self.world, self.world.client_service_pods)
                if routed is not None:
                    self.routes = sorted((p["metadata"]["name"], p["status"]["podIP"])
                                         for p in routed if p.get("status", {}).get("podIP"))
            await asyncio.sleep(0.3)

    async def _one(self, session: aiohttp.ClientSession, i: int) -> None:
        routes = self.routes
        if not routes:
            return
        pod, ip = routes[i % len(routes)]
        mid = self.ledger.next_id(self.scene)
        rcpt = f"{self.scene}{i:05d}@{scenes.PROVIDER_DOMAINS[i % len(scenes.PROVIDER_DOMAINS)]}"
        body = {"from": f"Example News <{scenes.FROM}>", "to": [rcpt], "class": "transactional",
                "subject": f"failover {mid}", "text": "Hello,\nfailover traffic.\n",
                "headers": {"Message-ID": f"<{mid}>"}}
        status = 0
        try:
            async with session.post(f"http://{ip}:{self._port}/v1/messages", json=body,
                                    headers=self._headers,
                                    timeout=aiohttp.ClientTimeout(total=3)) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = 0
        self.ledger.sent.append(scenes.Sent(mid, rcpt.lower(), "transactional", pod,
                                            self.scene, time.time(), status))

    async def _submit(self) -> None:
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession() as session:
            try:
                loop = asyncio.get_running_loop()
                next_at = loop.time()
                while True:
                    task = asyncio.create_task(self._one(session, next(self._n)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    next_at = max(next_at + 1.0 / self.rate, loop.time() - 1.0)
                    await asyncio.sleep(max(0.0, next_at - loop.time()))
            finally:
                if pending:
                    await asyncio.wait(pending, timeout=5)

    async def __aenter__(self) -> Traffic:
        self._port = await call(self.world, self.world.pool_http_port)
        key = await call(self.world, self.world.pool_api_key)  # as an application would
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._tasks = [asyncio.create_task(self._refresh())]
        await wait_until(lambda: self.routes, within=60, what="pods to submit to")
        self._tasks.append(asyncio.create_task(self._submit()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ------------------------------------------------------------------ the world's state
async def ip_leases(world: SandboxWorld) -> dict[str, tuple[str, int]]:
    """address -> (holder pod name or "", epoch) from the pool's IP Leases."""
    items = await call(world, world.api.list, "coordination.k8s.io/v1", "Lease",
                       world.settings.namespace)
    out = {}
    for lease in items:
        name = lease["metadata"]["name"]
        if not name.startswith(IP_LEASE_PREFIX):
            continue
        address = next((a for a, _ in IPS if name.endswith(a.replace(".", "-"))
                        or name.endswith(a)), "")
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "").partition("/")[0]
        if address:
            out[address] = (holder, int(spec.get("leaseTransitions") or 0))
    return out


def operator_pods(world: SandboxWorld) -> list[JSON]:
    return [p for p in world.api.list("v1", "Pod", world.settings.operator_namespace)
            if not p["metadata"].get("deletionTimestamp")]


def leader(world: SandboxWorld) -> tuple[str, str]:
    """(pod, identity) of the operator process holding the leader Lease, ("", "") when none.
    The identity, not the pod, names a leader: a killed replica's container restarts in the
    same pod as a new candidate with a new identity, and may win the next election."""
    lease = world.api.get("coordination.k8s.io/v1", "Lease", LEADER_LEASE,
                          world.settings.operator_namespace)
    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
    for pod in operator_pods(world):
        name = pod["metadata"]["name"]
        if holder == name or holder.startswith(name + "_"):
            return str(name), holder
    return "", ""


def leader_pod(world: SandboxWorld) -> str:
    """The operator pod whose process holds the leader Lease ("" when none)."""
    return leader(world)[0]


def healthy(world: SandboxWorld) -> bool:
    """Both IPs Active on Ready pods, every pool pod Ready, both operator replicas Ready and
    a leader elected: the state each scenario starts from."""
    holders = world.ip_holders()
    pods = world.pods()
    ready = {p["metadata"]["name"] for p in pods if pod_ready(p)
             and not p["metadata"].get("deletionTimestamp")}
    ops = operator_pods(world)
    return (set(holders) == {a for a, _ in IPS} and set(holders.values()) <= ready
            and len(ready) == len(pods) == 3
            and len(ops) == world.settings.operator_replicas and all(map(pod_ready, ops))
            and bool(leader_pod(world)))


async def start_pool(world: SandboxWorld, prof: Profile, *, within: float = 240.0) -> None:
    """The DomainAuth of the samples (kubectl apply) and the failover pool; returns once the
    pool is healthy."""
    ns = world.settings.namespace
    domainauth = next(p for p in sample_files() if "domainauth" in p.name)
    await world.kubectl("apply", "-n", ns, "-f", str(domainauth))
    await call(world, world.api.create, pool_body(prof, ns))

    async def domain_ready() -> bool:
        obj = await call(world, world.api.get, API_VERSION, "DomainAuth", scenes.DOMAINAUTH, ns)
        return (condition(obj, "Ready") or {}).get("status") == "True"

    await poll(world, domain_ready, within=within, what="DomainAuth Ready")
    await wait_healthy(world, within=within)


async def wait_healthy(world: SandboxWorld, *, within: float) -> None:
    await poll(world, lambda: call(world, healthy, world), within=within,
               what="the failover pool healthy (IPs Active, pods Ready, operator leading)",
               interval=0.5)


async def flowing(world: SandboxWorld, key: list[bytes], *, since: float, ip: str | None = None,
                  count: int = 3, within: float, not_pod: str | None = None) -> float:
    """Wait for `count` messages received after `since` (from `ip`, from a pod other than
    `not_pod`); returns the time of the first of them."""
    def found() -> float | None:
        got = [d for d in deliveries(world, key, since=since) if (ip is None or d.ip == ip)
               and (not_pod is None or (d.pod and d.pod != not_pod))]
        return got[0].at if len(got) >= count else None

    where = f" from {ip}" if ip else ""
    where += f" not sent by {not_pod}" if not_pod else ""
    return float(await wait_until(found, within=within, what=f"{count} messages{where}",
                                  interval=0.25))


# ------------------------------------------------------------------ results
@dataclass
class Outcome:
    """What one scenario did and what the receivers say about it; `to_json` is the bench's
    last line."""

    scenario: str
    control_plane: str
    settings: JSON
    ip: str = ""
    holder: str = ""
    failed_at: float = 0.0
    failover_s: float | None = None
    failover_note: str = ""
    moved_to: str = ""
    pause_s: float = 0.0
    overlaps: list[Overlap] = field(default_factory=list)
    accepted: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    holders_changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    """IP -> (pod before, another pod that sent from it during the run), from the receivers."""
    fence: list[str] | None = None
    """What the old holder's own counters and lease table say against its fence (`fencing`);
    None when the scenario does not check it."""
    details: JSON = field(default_factory=dict)

    @property
    def overlap_s(self) -> float:
        return max((o.seconds for o in self.overlaps), default=0.0)

    def to_json(self) -> JSON:
        return {"scenario": self.scenario, "control_plane": self.control_plane,
                "settings": self.settings, "ip": self.ip, "holder": self.holder,
                "failover_s": self.failover_s, "failover_note": self.failover_note,
                "moved_to": self.moved_to, "pause_s": round(self.pause_s, 2),
                "overlap_s": self.overlap_s,
                "overlapping_messages": sum(o.messages for o in self.overlaps),
                "overlaps": [o.describe() for o in self.overlaps][:5],
                "accepted": self.accepted, "delivered": self.delivered,
                "lost": len(self.lost), "lost_ids": self.lost[:5],
                "holders_changed": {ip: list(v) for ip, v in self.holders_changed.items()},
                "fence": self.fence,
                **self.details}


# ------------------------------------------------------------------ the scenarios
@dataclass
class Run:
    """The shared state of one scenario run."""

    world: SandboxWorld
    ledger: scenes.Ledger
    prof: Profile
    key: list[bytes]
    within: float
    outcome: Outcome
    started: float = field(default_factory=time.time)

    @property
    def ns(self) -> str:
        return self.world.settings.namespace


def pick_holder(world: SandboxWorld, *, off_node: str = OPERATOR_NODE) -> tuple[str, str, str]:
    """(ip, pod, node) of an IP whose holder is not on `off_node` (the operator's node, which
    a partition scenario must not take down), else the first IP."""
    holders = world.ip_holders()
    choices = []
    for ip, _ in IPS:
        pod = holders.get(ip, "")
        node = world.api.get("v1", "Pod", pod, world.settings.namespace)["spec"]["nodeName"]
        choices.append((ip, pod, str(node)))
    return next((c for c in choices if c[2] != off_node), choices[0])


async def _moved(run: Run, ip: str, holder: str, *, restarted: Callable[[], float | None]
                 ) -> float:
    """Time of the first message from `ip` after the failure sent by another pod, or by the
    holder's restarted process (`restarted()`: when it started, None while it has not)."""
    def first() -> float | None:
        for d in deliveries(run.world, run.key, since=run.outcome.failed_at):
            if d.ip != ip or not d.pod:
                continue
            again = restarted()
            if d.pod != pod_ref(holder) or (again is not None and d.at > again):
                run.outcome.moved_to = d.pod
                return d.at
        return None

    return float(await wait_until(first, within=run.within, interval=0.1,
                                  what=f"mail from {ip} sent by another pod"))


async def scenario_killed(run: Run) -> None:
    world, out = run.world, run.outcome
    assert world.agent is not None
    ip, holder, _ = await call(world, pick_holder, world)
    out.ip, out.holder = ip, holder
    agent = world.agent
    old = set(agent.pod_pids(run.ns, holder))
    restarted_at: list[float] = []

    async def watch_restart() -> None:
        # when the holder's container runs again: its mail after that is the new process's
        while True:
            with contextlib.suppress(KeyError):
                pids = set(agent.pod_pids(run.ns, holder))
                if pids and not pids & old:
                    restarted_at.append(time.time())
                    return
            await asyncio.sleep(0.05)

    out.failed_at = time.time()
    out.details["pids"] = agent.kill_pod_process(run.ns, holder, signal.SIGKILL)
    watcher = asyncio.create_task(watch_restart())
    try:
        first = await _moved(run, ip, holder,
                             restarted=lambda: restarted_at[0] if restarted_at else None)
    finally:
        watcher.cancel()
    out.failover_s = round(first - out.failed_at, 2)
    if restarted_at:
        out.details["restarted_after_s"] = round(restarted_at[0] - out.failed_at, 2)
    await flowing(world, run.key, since=first, ip=ip, count=20, within=run.within)


async def old_lease(run: Run, endpoint: fencing.Admin) -> int:
    """The epoch of the holder's valid lease for the scenario's IP, from the pod itself."""
    held = await fencing.read_when_answering(endpoint, run.outcome.ip, within=run.within)
    if not held.lease_valid or held.epoch is None:
        raise RuntimeError(f"{held.pod} holds no valid lease for {held.ip}: {held.describe()}")
    run.outcome.details["old_epoch"] = held.epoch
    return held.epoch


async def new_holder_carried(run: Run, epoch: int) -> None:
    """The pod now holding the IP wrote messages from it under a newer epoch than `epoch`."""
    holders = await call(run.world, run.world.ip_holders)
    new = await call(run.world, fencing.admin, run.world, holders[run.outcome.ip], pool=POOL)
    reading = await fencing.read(new, run.outcome.ip, above=epoch)
    run.outcome.details["new_holder_reading"] = reading.describe()
    run.outcome.fence = [*(run.outcome.fence or []), *fencing.carried(reading)]


async def check_fence(run: Run, old: fencing.Admin, *, epoch: int, lost_at: float) -> None:
    """After the failure: the old holder's own counters for the IP under its lost lease
    (`epoch` and older), read once it answers and again after 20 more messages from the IP,
    must show it wrote nothing from the IP after `lost_at`, and its table no valid lease of
    that epoch (`fencing`)."""
    world, out = run.world, run.outcome
    baseline = await fencing.read_when_answering(old, out.ip, within=run.within, upto=epoch)
    await flowing(world, run.key, since=time.time(), ip=out.ip, count=20, within=run.within)
    final = await fencing.read(old, out.ip, upto=epoch)
    out.fence = [*(out.fence or []),
                 *fencing.problems(lost_at=lost_at, baseline=baseline, final=final)]
    out.details["old_holder_readings"] = [baseline.describe(), final.describe()]


async def scenario_frozen(run: Run) -> None:
    world, out = run.world, run.outcome
    assert world.agent is not None
    ip, holder, _ = await call(world, pick_holder, world)
    out.ip, out.holder = ip, holder
    pids = world.agent.pod_pids(run.ns, holder)
    old = await call(world, fencing.admin, world, holder, pool=POOL)
    epoch = await old_lease(run, old)
    out.failed_at = time.time()
    world.agent.kill_pod_process(run.ns, holder, signal.SIGSTOP)
    # From the moment every thread stopped it can begin nothing: any connection or
    # transaction it counts later began after the thaw.
    await wait_until(lambda: fencing.stopped(pids), within=run.within, interval=0.02,
                     what=f"{holder} stopped")
    stopped_at = time.time()
    try:
        first = await _moved(run, ip, holder, restarted=lambda: None)
        out.failover_s = round(first - out.failed_at, 2)
        await flowing(world, run.key, since=first, ip=ip, count=20, within=run.within)
        await new_holder_carried(run, epoch)
    finally:
        thawed_at = time.time()
        with contextlib.suppress(KeyError):
            world.agent.kill_pod_process(run.ns, holder, signal.SIGCONT)
    # The thawed process must see its lease gone and send nothing from the IP: the
    # receivers keep recording while mail flows on.
    with contextlib.suppress(KeyError):
        same = world.agent.pod_pids(run.ns, holder) == pids
        out.details["thawed_same_process"] = same
    out.details["frozen_s"] = round(thawed_at - out.failed_at, 2)
    await check_fence(run, old, epoch=epoch, lost_at=stopped_at)


async def scenario_partitioned(run: Run) -> None:
    world, out = run.world, run.outcome
    assert world.agent is not None
    ip, holder, node = await call(world, pick_holder, world)
    out.ip, out.holder = ip, holder
    out.details["node"] = node
    old = await call(world, fencing.admin, world, holder, pool=POOL)
    epoch = await old_lease(run, old)
    out.failed_at = time.time()
    await world.agent.fail_node(node, processes="keep")
    try:
        first = await _moved(run, ip, holder, restarted=lambda: None)
        out.failover_s = round(first - out.failed_at, 2)
        await flowing(world, run.key, since=first, ip=ip, count=20, within=run.within)
        await new_holder_carried(run, epoch)
    finally:
        await world.agent.heal_node(node)
    out.details["healed_after_s"] = round(time.time() - out.failed_at, 2)
    # The pod ran all along; its lease had ended (revoked, or run out) before the operator
    # granted the IP again, so before another pod's first message from it arrived.
    await check_fence(run, old, epoch=epoch, lost_at=first)


async def scenario_api_blip(run: Run) -> None:
    world, out = run.world, run.outcome
    proxy = world.operator_api_proxy
    if proxy is None:
        raise RuntimeError("the world runs without an operator API proxy")
    ip, holder, _ = await call(world, pick_holder, world)
    out.ip, out.holder = ip, holder
    out.details["epochs_before"] = await ip_leases(world)
    out.failed_at = time.time()
    proxy.error(seconds=API_BLIP_SECONDS)
    window = API_BLIP_SECONDS + 3 * run.prof.lease_duration
    await wait_until(lambda: time.time() > out.failed_at + window, within=window + 5,
                     what="the observation window", interval=0.2)
    out.details["epochs_after"] = await ip_leases(world)
    out.details["observed_s"] = round(window, 1)
    out.failover_note = "no failover expected"


async def scenario_leader_killed(run: Run) -> None:
    world, out = run.world, run.outcome
    assert world.agent is not None
    ip, holder, _ = await call(world, pick_holder, world)
    out.ip, out.holder = ip, holder
    pod, identity = await call(world, leader, world)
    out.details["leader"] = identity
    out.details["epochs_before"] = await ip_leases(world)
    out.failed_at = time.time()
    world.agent.kill_pod_process(world.settings.operator_namespace, pod, signal.SIGKILL)

    async def new_leader() -> str:
        _, current = await call(world, leader, world)
        return current if current and current != identity else ""

    # The other replica (or the restarted one, under a new identity) leads ...
    out.details["new_leader"] = await poll(world, new_leader, within=run.within,
                                           what="a new operator leader")
    out.details["new_leader_after_s"] = round(time.time() - out.failed_at, 2)
    # ... and, once it has waited out the leases it did not grant, renews or re-grants them:
    # mail flows again from every IP.
    since = time.time()
    for address, _ in IPS:
        await flowing(world, run.key, since=since, ip=address, count=20, within=run.within)
    out.details["epochs_after"] = await ip_leases(world)
    out.failover_note = "no IP move expected; pause_s is the longest silence of the IP"


SCENARIO_BODIES: dict[str, Callable[[Run], Awaitable[None]]] = {
    "killed": scenario_killed, "frozen": scenario_frozen, "partitioned": scenario_partitioned,
    "api-blip": scenario_api_blip, "leader-killed": scenario_leader_killed,
}


async def run_scenario(world: SandboxWorld, ledger: scenes.Ledger, name: str, prof: Profile,
                       *, rate: float = 25.0, within: float = 180.0) -> Outcome:
    """Cause `name` while mail flows and judge it from the receivers; the world is healthy
    again (or an error says why not) when this returns."""
    body = SCENARIO_BODIES[name]
    scene = f"fo-{name}"
    out = Outcome(name, world.control_plane, prof.to_json())
    await wait_healthy(world, within=within)
    key = await call(world, trace_key, world)
    run = Run(world, ledger, prof, key, within, out)
    async with Traffic(world, ledger, scene, rate=rate):
        for address, _ in IPS:
            await flowing(world, key, since=run.started, ip=address, count=5, within=within)
        await body(run)
        ended = time.time()
    left = await scenes.settle(world, ledger, within=within, scene=scene)
    out.lost = [s.message_id for s in left]
    _count(out, world, ledger, scene)
    found = deliveries(world, key, since=run.started)
    out.overlaps = overlaps(found, gap=prof.lease_duration)
    out.pause_s = longest_gap(found, out.ip, out.failed_at, ended)
    before = [d for d in found if d.at < out.failed_at]
    for address, _ in IPS:
        first = next((d.pod for d in reversed(before) if d.ip == address and d.pod), "")
        other = next((d.pod for d in found if d.ip == address and d.at >= out.failed_at
                      and d.pod and d.pod != first), "")
        if first and other:
            out.holders_changed[address] = (first, other)
    out.details["unattributed"] = sum(1 for d in found if not d.pod)
    # Back to a healthy world for whatever runs next (a partitioned node's pods are
    # replaced, a killed operator restarted).
    await wait_healthy(world, within=within)
    return out


async def forced_delete_on_partitioned_node(world: SandboxWorld, ledger: scenes.Ledger,
                                            prof: Profile, *, rate: float = 25.0,
                                            within: float = 180.0) -> Outcome:
    """The holder's node is partitioned (its pods keep running), then its pod object is
    force-deleted (`kubectl delete pod --force --grace-period=0`): the process still sends
    on its lease, so the IP may only move once that lease expired. Judged at the receivers."""
    assert world.agent is not None
    scene = "fo-forced-delete"
    out = Outcome("forced-delete", world.control_plane, prof.to_json())
    await wait_healthy(world, within=within)
    key = await call(world, trace_key, world)
    run = Run(world, ledger, prof, key, within, out)
    async with Traffic(world, ledger, scene, rate=rate):
        for address, _ in IPS:
            await flowing(world, key, since=run.started, ip=address, count=5, within=within)
        ip, holder, node = await call(world, pick_holder, world)
        out.ip, out.holder = ip, holder
        out.details["node"] = node
        old_pids = world.agent.pod_pids(run.ns, holder)
        out.failed_at = time.time()
        await world.agent.fail_node(node, processes="keep")
        try:
            await world.kubectl("delete", "pod", "-n", run.ns, holder, "--force",
                                "--grace-period=0")
            out.details["deleted_after_s"] = round(time.time() - out.failed_at, 2)
            out.details["old_process_running"] = all(_alive(p) for p in old_pids)
            first = await _moved(run, ip, holder, restarted=lambda: None)
            out.failover_s = round(first - out.failed_at, 2)
            await flowing(world, key, since=first, ip=ip, count=20, within=within)
        finally:
            await world.agent.heal_node(node)
        ended = time.time()
    left = await scenes.settle(world, ledger, within=within, scene=scene)
    out.lost = [s.message_id for s in left]
    _count(out, world, ledger, scene)
    found = deliveries(world, key, since=run.started)
    out.overlaps = overlaps(found, gap=prof.lease_duration)
    out.pause_s = longest_gap(found, ip, out.failed_at, ended)
    await wait_healthy(world, within=within)
    return out


def _count(out: Outcome, world: SandboxWorld, ledger: scenes.Ledger, scene: str) -> None:
    accepted = [s for s in ledger.accepted if s.scene == scene]
    got = scenes.received_index(world)
    out.accepted = len(accepted)
    out.delivered = sum(1 for s in accepted if s.message_id in got)


def _alive(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}").stat()
    except FileNotFoundError:
        return False
    return True


def summary_lines(outcome: Outcome) -> Iterator[str]:
    o = outcome.to_json()
    yield (f"{o['scenario']} on {o['control_plane']}: ip {o['ip']} held by {o['holder']}; "
           f"failover {o['failover_s']} s to {o['moved_to'] or '-'} {o['failover_note']}")
    yield (f"  pause {o['pause_s']} s, overlap {o['overlap_s']} s "
           f"({o['overlapping_messages']} messages), accepted {o['accepted']}, "
           f"delivered {o['delivered']}, lost {o['lost']}")
