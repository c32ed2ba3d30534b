"""The demo's scenes, each a function that acts on a running `SandboxWorld` and returns a
`SceneResult` with its timings and checks. `make demo` runs them in order and the e2e tests
(tests/e2e/) run them one per test, on one shared world.

Every check reads what the receiving side recorded (the provider simulators' messages with
their peer IP, verdicts and arrival time, and the answers they gave), the sandbox DNS server
and the API objects; never the senders' own counters. What the scenes know first-hand is what
a client knows: which message (by Message-ID) it handed to which pod, and when.

Order matters only where a scene says so: `fleet_up` first; `campaign` before `warmup_quotas`,
`suppression` and `accounting`; `gateway_mode` (a second pool, Cilium attachment) after the
failure scenes and before `accounting`, which then counts its mail too; `accounting` last.
The transport-security scene is in `transport_scenes` (this module is long enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import json
import math
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from mailfleet_sandbox import attribution, egress_gateway, fencing, reports, verifying
from mailfleet_sandbox.dns import SANDBOX_DNSBL_ZONE
from mailfleet_sandbox.kube.errors import ApiError
from mailfleet_sandbox.providers import ReceivedMessage
from mailfleet_sandbox.world import (
    API_VERSION,
    OPERATOR_NODE,
    SandboxWorld,
    condition,
    pod_ready,
    wait_until,
)

JSON = dict[str, Any]
FROM = "news@example.test"
DOMAIN = "example.test"
DOMAINAUTH = "example-test"
WARMUP = "marketing-ips"
BAD_ADDRESSES = ("nobody@gmail.test", "ghost@outlook.test", "gone@yahoo.test",
                 "inconnu@orange.test")
"""Addresses the providers answer 550 5.1.1 (user unknown): the campaign's bad addresses."""
COMPLAINT_RATE = {"yahoo": 0.1}
"""Every 10th message accepted by the Yahoo-like receiver is reported as spam (ARF)."""
PROVIDER_DOMAINS = ("gmail.test", "outlook.test", "yahoo.test", "orange.test")


# ------------------------------------------------------------------ results
@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class SceneResult:
    """What one scene did, how long it took, and what the receivers say about it."""

    name: str
    title: str
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    skipped: str = ""
    """Why the scene did not run here (a host tool it needs is missing); not a failure."""

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.checks)

    @property
    def outcome(self) -> str:
        if self.skipped and self.ok:
            return "skipped"
        return "passed" if self.ok else "failed"

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def failures(self) -> list[str]:
        out = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        return ([f"error: {self.error}"] if self.error else []) + out

    def to_json(self) -> JSON:
        data = asdict(self)
        data["ok"] = self.ok
        data["outcome"] = self.outcome
        return data


# ------------------------------------------------------------------ what the client knows
@dataclass(frozen=True)
class Sent:
    """One message handed to a pod: what the submitting client knows first-hand."""

    message_id: str
    rcpt: str
    klass: str
    pod: str
    scene: str
    accepted_at: float
    status: int


class Ledger:
    """Every submission of the run, and the quota observations of the warm-up."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._ids = itertools.count(1)
        self._rr = itertools.count()
        self.quotas: dict[tuple[str, int], int] = {}
        """(ip, epoch day) -> highest dailyQuota the IPWarmup showed that day."""
        self.unlimited_days: set[tuple[str, int]] = set()
        """(ip, epoch day) on which the warm-up showed the IP Completed (no quota)."""
        self.warmup_days: list[tuple[float, int, int]] = []
        """(time, warm-up day, dailyQuota) each time the IPWarmup's day changed."""

    def next_id(self, scene: str) -> str:
        return f"{scene}-{next(self._ids):05d}@demo.example.test"

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.status == 202]

    def pod_of(self) -> dict[str, str]:
        return {s.message_id: s.pod for s in self.accepted}


def message_id_of(message: ReceivedMessage) -> str:
    return (message.header("Message-ID") or "").strip().strip("<>")


def received_index(world: SandboxWorld) -> dict[str, list[ReceivedMessage]]:
    out: dict[str, list[ReceivedMessage]] = defaultdict(list)
    for message in world.fleet.messages:
        out[message_id_of(message)].append(message)
    return out


def bounced_addresses(world: SandboxWorld) -> dict[str, str]:
    """rcpt -> the permanent (5xx) answer a receiver gave it, as the receivers recorded."""
    out: dict[str, str] = {}
    for receiver in world.fleet:
        for attempt in receiver.attempts:
            if attempt.code >= 500:
                out.setdefault(attempt.rcpt.lower(), f"{receiver.name} {attempt.code}")
    return out


def complained_addresses(world: SandboxWorld) -> set[str]:
    """Recipients a receiver reported as complaining (ARF Original-Rcpt-To)."""
    out: set[str] = set()
    for receiver in world.fleet:
        for report in receiver.complaints:
            for line in report.replace(b"\r\n", b"\n").split(b"\n"):
                if line.lower().startswith(b"original-rcpt-to:"):
                    out.add(line.split(b":", 1)[1].strip().strip(b"<>").decode().lower())
    return out


def epoch_day(t: float, day_seconds: float) -> int:
    return math.floor(t / day_seconds)


# ------------------------------------------------------------------ client actions
async def submit(world: SandboxWorld, ledger: Ledger, session: aiohttp.ClientSession, *,
                 rcpt: str, klass: str, scene: str, tier: str = "high",
                 pod: str | None = None) -> Sent:
    """POST one message as an application would: to a pod the pool's client Service routes
    to (round robin), or to `pod`."""
    if pod is None:
        candidates = submission_pods(world)
        if not candidates:
            raise RuntimeError("no ready sender pod to submit to")
        pod = candidates[next(ledger._rr) % len(candidates)]
    obj = world.api.get("v1", "Pod", pod, world.settings.namespace)
    url = f"http://{obj['status']['podIP']}:{world.pool_http_port()}/v1/messages"
    mid = ledger.next_id(scene)
    body = {
        "from": f"Example News <{FROM}>", "to": [rcpt], "class": klass, "tier": tier,
        "subject": f"{klass} message {mid.split('@')[0]}",
        "text": f"Hello {rcpt},\nthis is a {klass} message from the mailfleet demo.\n",
        "headers": {"Message-ID": f"<{mid}>"},
    }
    status = 0
    # As an application: the submission key of the pool the pod belongs to.
    key = world.pool_api_key((obj["metadata"].get("labels") or {}).get("mailfleet.io/pool"))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with session.post(url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=3)) as resp:
            status = resp.status
            await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    sent = Sent(mid, rcpt.lower(), klass, pod, scene, time.time(), status)
    ledger.sent.append(sent)
    return sent


def submission_pods(world: SandboxWorld) -> list[str]:
    """Where the client Service sends submissions: the serving pods it selects. Until the
    Service selects on the serving label, the Ready pods that hold an IP per the pool status
    (else any Ready pod)."""
    routed = world.client_service_pods()
    if routed is not None:
        return [p["metadata"]["name"] for p in routed]
    holders = sorted(set(world.ip_holders().values()))
    ready = {p["metadata"]["name"] for p in world.ready_pods()}
    return [p for p in holders if p in ready] or sorted(ready)


def campaign_recipients(count: int) -> list[tuple[str, str, str]]:
    """(rcpt, class, tier): a quarter transactional, the rest marketing, spread over the
    providers, with each bad address once."""
    out: list[tuple[str, str, str]] = []
    tiers = ("high", "medium", "low")
    for i in range(count - len(BAD_ADDRESSES)):
        domain = PROVIDER_DOMAINS[i % len(PROVIDER_DOMAINS)]
        klass = "transactional" if i % 4 == 0 else "marketing"
        out.append((f"user{i:04d}@{domain}", klass, tiers[i % 3]))
    for j, bad in enumerate(BAD_ADDRESSES):
        out.insert(7 + j * 11, (bad, "marketing", "low"))
    return out


class Feeder:
    """A steady trickle of mail to the IP holders, so that every IP has traffic to carry
    while a failure scene runs (what a failover is measured against)."""

    def __init__(self, world: SandboxWorld, ledger: Ledger, scene: str,
                 rate: float = 6.0) -> None:
        self.world, self.ledger, self.scene, self.rate = world, ledger, scene, rate
        self._task: asyncio.Task[None] | None = None
        self._n = itertools.count()

    async def _one(self, session: aiohttp.ClientSession, i: int) -> None:
        domain = PROVIDER_DOMAINS[i % len(PROVIDER_DOMAINS)]
        with contextlib.suppress(RuntimeError, LookupError, ApiError):
            await submit(self.world, self.ledger, session,
                         rcpt=f"{self.scene}{i:04d}@{domain}",
                         klass="transactional" if i % 3 == 0 else "marketing",
                         scene=self.scene)

    async def _run(self) -> None:
        # Concurrent submissions: a frozen pod must not hold up mail to the others.
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession() as session:
            try:
                while True:
                    task = asyncio.create_task(self._one(session, next(self._n)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(1.0 / self.rate)
            finally:
                for task in list(pending):
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> Feeder:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def watch_quotas(world: SandboxWorld, ledger: Ledger, interval: float = 0.3) -> None:
    """Sample the IPWarmup's status: per (IP, epoch day) the quota the API showed."""
    day_s = world.settings.warmup_day_seconds
    last_day = None
    while True:
        with contextlib.suppress(LookupError, ApiError):
            obj = world.api.get(API_VERSION, "IPWarmup", WARMUP, world.settings.namespace)
            status = obj.get("status") or {}
            today = epoch_day(time.time(), day_s)
            phase = status.get("phase")
            for ip in status.get("ips") or []:
                key = (ip["address"], today)
                if phase == "Completed":
                    ledger.unlimited_days.add(key)
                quota = int(ip.get("dailyQuota") or 0)
                ledger.quotas[key] = max(ledger.quotas.get(key, 0), quota)
            if status.get("day") != last_day:
                last_day = status.get("day")
                ledger.warmup_days.append((time.time(), int(last_day or 0),
                                           int(status.get("dailyQuota") or 0)))
        await asyncio.sleep(interval)


async def settle(world: SandboxWorld, ledger: Ledger, *, within: float,
                 scene: str | None = None) -> list[Sent]:
    """Wait until every accepted message (of `scene`) is delivered or its address bounced;
    returns the ones still outstanding at the deadline."""
    def outstanding() -> list[Sent]:
        got = received_index(world)
        bounced = bounced_addresses(world)
        complained = complained_addresses(world)
        return [s for s in ledger.accepted if (scene is None or s.scene == scene)
                and s.message_id not in got and s.rcpt not in bounced
                and s.rcpt not in complained]

    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: not outstanding(), within=within,
                         what="every accepted message delivered or bounced", interval=0.3)
    return outstanding()


def ip_overlaps(world: SandboxWorld, window: float) -> list[str]:
    """Signs of one IP used by two pods at once, from the receivers' records: on an IP, mail
    sent by pod A, then by pod B, then by A again, all within `window` seconds (a lease can
    only move once the previous holder released it or its lease expired, so a genuine
    hand-over never flips back that fast). The sending pod is read from each message's sealed
    trace (`attribution`), not from the ledger: a hand-off sends a pod's accepted mail from
    another pod."""
    keys = []
    with contextlib.suppress(LookupError, ApiError):
        for pool in world.api.list(API_VERSION, "SendingPool", world.settings.namespace):
            with contextlib.suppress(LookupError, ApiError, KeyError, ValueError):
                keys.append(attribution.trace_key(world, pool["metadata"]["name"]))
    by_ip: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for message in world.fleet.messages:
        pod = next((p for key in keys if (p := attribution.sending_pod(message, key))), "")
        if pod:
            by_ip[message.peer_ip].append((message.received_at, pod))
    problems = []
    for ip, seq in by_ip.items():
        seq.sort()
        runs: list[tuple[str, float, float]] = []
        for t, pod in seq:
            if runs and runs[-1][0] == pod:
                runs[-1] = (pod, runs[-1][1], t)
            else:
                runs.append((pod, t, t))
        for a, b, c in zip(runs, runs[1:], runs[2:], strict=False):
            if a[0] == c[0] and c[1] - a[2] < window:
                problems.append(f"{ip}: {a[0]} -> {b[0]} -> {c[0]} within "
                                f"{c[1] - a[2]:.1f}s")
    return problems


def _pass_rate(messages: list[ReceivedMessage], key: str) -> float:
    if not messages:
        return 0.0
    return sum(1 for m in messages if m.verdicts.get(key) == "pass") / len(messages)


def _tls_rate(messages: list[ReceivedMessage]) -> float:
    """Share of messages the receivers got over TLS (STARTTLS in effect at DATA)."""
    if not messages:
        return 0.0
    return sum(1 for m in messages if m.tls) / len(messages)


def _first_from(world: SandboxWorld, ip: str, after: float) -> float | None:
    times = [m.received_at for m in world.fleet.messages
             if m.peer_ip == ip and m.received_at > after]
    return min(times) if times else None


async def flowing(world: SandboxWorld, *, since: float, count: int, within: float,
                  ip: str | None = None, not_ip: str | None = None) -> None:
    """Wait until the receivers got `count` messages after `since` (from `ip`, or from any
    IP but `not_ip`): mail is flowing, so what a scene looks at next has traffic to show."""
    def enough() -> bool:
        return sum(1 for m in world.fleet.messages if m.received_at > since
                   and (ip is None or m.peer_ip == ip)
                   and (not_ip is None or m.peer_ip != not_ip)) >= count

    where = f" from {ip}" if ip else f" from IPs other than {not_ip}" if not_ip else ""
    await wait_until(enough, within=within, what=f"{count} messages received{where}")


def _scene(name: str, title: str) -> Callable[[Callable[..., Awaitable[None]]],
                                               Callable[..., Awaitable[SceneResult]]]:
    """Run the body with a SceneResult, time it, and turn an exception into a failed scene."""
    def wrap(body: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[SceneResult]]:
        async def run(*args: Any, **kwargs: Any) -> SceneResult:
            result = SceneResult(name, title)
            started = time.monotonic()
            try:
                await body(result, *args, **kwargs)
            except (TimeoutError, RuntimeError, LookupError, OSError, AssertionError,
                    ApiError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            result.duration_s = round(time.monotonic() - started, 2)
            return result
        run.__name__ = body.__name__
        run.__doc__ = body.__doc__
        return run
    return wrap


# ------------------------------------------------------------------ scenes
@_scene("fleet_up", "The fleet comes up and the domain is authenticated")
async def fleet_up(result: SceneResult, world: SandboxWorld, within: float = 90.0) -> None:
    """kubectl apply crds/ and the sandbox samples; wait for Ready pods, a Ready DomainAuth
    whose records the sandbox DNS serves, and a Ready SendingPool with every IP Active."""
    t0 = time.monotonic()
    result.details["kubectl"] = (await world.apply_samples()).strip().splitlines()
    ns = world.settings.namespace

    def da_ready() -> bool:
        obj = world.api.get(API_VERSION, "DomainAuth", DOMAINAUTH, ns)
        return (condition(obj, "Ready") or {}).get("status") == "True"

    await wait_until(da_ready, within=within, what="DomainAuth Ready")
    result.timings["domain_ready_s"] = round(time.monotonic() - t0, 2)
    expected = {ip for ip, _ in world.settings.egress}

    def pool_ready() -> bool:
        pool = world.pool()
        holders = world.ip_holders()
        ready = {p["metadata"]["name"] for p in world.ready_pods()}
        return ((condition(pool, "Ready") or {}).get("status") == "True"
                and set(holders) == expected and set(holders.values()) <= ready
                and len(ready) == len(world.pods()))

    await wait_until(pool_ready, within=within, what="SendingPool Ready with every IP Active")
    result.timings["fleet_ready_s"] = round(time.monotonic() - t0, 2)
    pods = world.pods()
    result.details["pods"] = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods}
    result.details["ips"] = world.ip_holders()
    result.details["attachments"] = {world.settings.pool: attachment_mode(world.pool())}
    result.check("every sender pod Running and Ready", all(pod_ready(p) for p in pods),
                 f"{len(pods)} pods")
    # What DNS says, asked like a receiver would.
    resolver = world.dns.resolver()
    lookup = verifying.make_lookup(resolver)
    status = world.api.get(API_VERSION, "DomainAuth", DOMAINAUTH, ns).get("status") or {}
    active = ((status.get("dkim") or {}).get("active")) or ""
    dkim_txt = await lookup(f"{active}._domainkey.{DOMAIN}", "TXT") if active else []
    spf = [t for t in await lookup(DOMAIN, "TXT") if t.startswith("v=spf1")]
    dmarc = await lookup(f"_dmarc.{DOMAIN}", "TXT")
    result.details["dns"] = {"dkim_selector": active, "spf": spf, "dmarc": dmarc}
    result.check("DKIM key of the active selector served by DNS",
                 any("p=" in t for t in dkim_txt), f"selector {active!r}")
    result.check("SPF lists every egress IP",
                 len(spf) == 1 and all(f"ip4:{ip}" in spf[0] for ip in expected), str(spf))
    result.check("DMARC record served", any(t.startswith("v=DMARC1") for t in dmarc),
                 str(dmarc))


@_scene("campaign", "A campaign: transactional and marketing, some bad addresses")
async def campaign(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                   count: int = 150, within: float = 100.0) -> None:
    """Send `count` messages (a quarter transactional) to the four providers, with a few
    unknown users and a provider that reports complaints; wait until every accepted message
    is delivered or bounced per the receivers, through warm-up days that defer the rest."""
    for receiver in world.fleet:
        receiver.behaviour.unknown_users.update(BAD_ADDRESSES)
        receiver.behaviour.complaint_rate = COMPLAINT_RATE.get(receiver.name, 0.0)
    world.fleet["orange"].behaviour.rate_limit_per_ip = 5.0
    t0 = time.time()
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(8)

        async def one(rcpt: str, klass: str, tier: str) -> Sent:
            async with sem:
                return await submit(world, ledger, session, rcpt=rcpt, klass=klass, tier=tier,
                                    scene="campaign")

        sent = await asyncio.gather(*(one(*r) for r in campaign_recipients(count)))
    result.timings["submit_s"] = round(time.time() - t0, 2)
    accepted = [s for s in sent if s.status == 202]
    result.check("every submission accepted (202)", len(accepted) == len(sent),
                 f"{len(accepted)}/{len(sent)}")
    left = await settle(world, ledger, within=within, scene="campaign")
    result.timings["delivered_s"] = round(time.time() - t0, 2)
    got = received_index(world)
    delivered = [m for s in accepted for m in got.get(s.message_id, [])]
    bounced = bounced_addresses(world)
    result.details.update(
        accepted=len(accepted), delivered=len({message_id_of(m) for m in delivered}),
        bounced=sum(1 for s in accepted if s.rcpt in bounced),
        outstanding=[s.message_id for s in left][:20])
    result.check("every accepted message delivered or bounced, none lost", not left,
                 f"{len(left)} outstanding")
    result.check("every bad address bounced with a 5xx from its provider",
                 all(b in bounced for b in BAD_ADDRESSES),
                 ", ".join(f"{b}: {bounced.get(b, 'no 5xx')}" for b in BAD_ADDRESSES))
    for key in ("dkim", "spf", "dmarc"):
        failing = [message_id_of(m) for m in delivered if m.verdicts.get(key) != "pass"]
        result.check(f"{key.upper()} pass for every delivered message", not failing,
                     f"{len(failing)} not passing, e.g. {failing[:3]}")
    transactional = [m.received_at for s in accepted if s.klass == "transactional"
                     for m in got.get(s.message_id, [])]
    marketing = [m.received_at for s in accepted if s.klass == "marketing"
                 for m in got.get(s.message_id, [])]
    if transactional and marketing:
        result.details["transactional_p50_s"] = round(
            sorted(transactional)[len(transactional) // 2] - t0, 2)
        result.details["marketing_p50_s"] = round(sorted(marketing)[len(marketing) // 2] - t0, 2)


@_scene("warmup", "IPs warm up: days at a time scale, quotas never exceeded")
async def warmup_quotas(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                        min_days: int = 2, within: float = 60.0) -> None:
    """Wait until the warm-up has moved at least `min_days` days; then compare, per IP and
    quota day, what the receivers got from that IP with the quota the IPWarmup showed."""
    ns = world.settings.namespace
    t0 = time.monotonic()

    def day() -> int:
        status = world.api.get(API_VERSION, "IPWarmup", WARMUP, ns).get("status") or {}
        return int(status.get("day") or 0)

    first = day()
    await wait_until(lambda: day() >= max(first, 1) + min_days - 1 or _phase(world) ==
                     "Completed", within=within, what=f"{min_days} warm-up days")
    result.timings["waited_s"] = round(time.monotonic() - t0, 2)
    status = world.api.get(API_VERSION, "IPWarmup", WARMUP, ns).get("status") or {}
    result.details["phase"] = status.get("phase")
    result.details["day"] = status.get("day")
    result.details["history"] = status.get("history") or []
    counts = per_ip_day_counts(world)
    rows, violations = quota_rows(world, ledger, counts, boundary_counts(world))
    result.details["per_ip_day"] = rows
    result.details["quota_violations"] = violations
    result.check("no source IP exceeded its warm-up quota on any day", not violations,
                 "; ".join(violations[:5]))
    result.check("the warm-up advanced by days at the sandbox time scale",
                 len({d for _, d, _ in ledger.warmup_days if d}) >= min_days,
                 str([(d, q) for _, d, q in ledger.warmup_days]))


@_scene("warmup_held", "Every warm-up day held its quota, quota-0 days and failovers included")
async def warmup_held(result: SceneResult, world: SandboxWorld, ledger: Ledger) -> None:
    """The quota check over every day seen so far, run again after the failure scenes: a
    failover, a healed pod or a hand-off must not have pushed any IP over a day's quota."""
    rows, violations = quota_rows(world, ledger, per_ip_day_counts(world),
                                  boundary_counts(world))
    result.details["per_ip_day"] = rows
    result.details["quota_violations"] = violations
    result.details["zero_quota_days"] = sum(1 for r in rows if r["quota"] == 0)
    result.check("no source IP exceeded its warm-up quota on any day, quota-0 days included",
                 not violations, "; ".join(violations[:5]))


def _phase(world: SandboxWorld) -> str:
    obj = world.api.get(API_VERSION, "IPWarmup", WARMUP, world.settings.namespace)
    return str((obj.get("status") or {}).get("phase") or "")


def per_ip_day_counts(world: SandboxWorld) -> Counter[tuple[str, int]]:
    day_s = world.settings.warmup_day_seconds
    return Counter((m.peer_ip, epoch_day(m.received_at, day_s)) for m in world.fleet.messages)


def boundary_counts(world: SandboxWorld) -> Counter[tuple[str, int]]:
    """Per (IP, day): messages received so early in the day that the sender may have counted
    them on the day before. The sender counts a message on the quota day (`clock.day`: wall
    seconds // day length, the same as `epoch_day`) when its attempt *starts*, and an attempt
    runs at most until its lease's deadline minus the margin, at most a TTL after the start;
    the receivers see the end of DATA. So mail received within a TTL of a day's start may
    belong to either day."""
    day_s = world.settings.warmup_day_seconds
    slack = world.settings.lease_duration
    return Counter((m.peer_ip, epoch_day(m.received_at, day_s)) for m in world.fleet.messages
                   if m.received_at - epoch_day(m.received_at, day_s) * day_s < slack)


def quota_rows(world: SandboxWorld, ledger: Ledger, counts: Counter[tuple[str, int]],
               early: Counter[tuple[str, int]] | None = None) -> tuple[list[JSON], list[str]]:
    """Per IP and day, what the receivers got against the quota the IPWarmup showed, every
    day included: a day whose quota was 0 must carry nothing. Mail received within a TTL of a
    day's start (`early`) is put on the day before while that day's quota has room, as the
    sender may have counted it there; the rest counts on the day it arrived."""
    rows: list[JSON] = []
    violations: list[str] = []
    warming = {ip for ip, _ in world.settings.egress}
    early = early if early is not None else Counter()
    room: dict[str, tuple[int, float]] = {}  # ip -> (day, quota left that day)
    for (ip, day), sent in sorted(counts.items()):
        if ip not in warming:
            continue
        quota = ledger.quotas.get((ip, day))
        unlimited = (ip, day) in ledger.unlimited_days
        carried = 0
        before, left = room.get(ip, (day - 2, 0.0))
        if before != day - 1:  # nothing arrived the day before: all its quota is room
            left = (float("inf") if (ip, day - 1) in ledger.unlimited_days
                    else float(ledger.quotas.get((ip, day - 1), 0)))
        carried = int(min(early[(ip, day)], left))
        own = sent - carried
        rows.append({"ip": ip, "day": day, "sent": sent, "carried_to_day_before": carried,
                     "quota": None if unlimited else quota})
        if unlimited:
            room[ip] = (day, float("inf"))
            continue
        if quota is None:
            violations.append(f"{ip} day {day}: {sent} sent with no quota observed")
            continue
        if own > quota:
            note = f" ({carried} early ones put on day {day - 1})" if carried else ""
            violations.append(f"{ip} day {day}: {own} > {quota}{note}")
        room[ip] = (day, max(0, quota - own))
    return rows, violations


@_scene("sender_killed", "A sender is killed (SIGKILL) and its IP fails over")
async def sender_killed(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                        ip: str = "127.0.20.1", within: float = 30.0) -> None:
    """SIGKILL the processes of the pod holding `ip` while mail flows; the IP must carry
    mail again within the pool's failover bound, with no IP used by two pods at once, and
    nothing the killed pod had accepted may be lost."""
    assert world.agent is not None
    holder = world.ip_holders().get(ip)
    if not holder:
        raise RuntimeError(f"{ip} has no holder")
    bound = failover_bound(world)
    async with Feeder(world, ledger, "killed"):
        await flowing(world, since=time.time(), ip=ip, count=2, within=within)
        killed_at = time.time()
        pids = world.agent.kill_pod_process(world.settings.namespace, holder, signal.SIGKILL)
        result.details.update(pod=holder, ip=ip, pids=pids)
        first = await wait_until(lambda: _first_from(world, ip, killed_at), within=within,
                                 what=f"mail from {ip} again")
        result.timings["failover_s"] = round(first - killed_at, 2)
        await flowing(world, since=first, ip=ip, count=3, within=within)
    result.details["new_holder"] = world.ip_holders().get(ip)
    result.check(f"{ip} carries mail again within the failover bound ({bound:.1f}s)",
                 first - killed_at <= bound, f"{first - killed_at:.1f}s")
    left = await settle(world, ledger, within=within, scene="killed")
    result.check("no accepted message lost", not left, f"{len(left)} outstanding")
    overlaps = ip_overlaps(world, world.settings.lease_duration)
    result.check("no IP used by two pods at once", not overlaps, "; ".join(overlaps[:3]))


def _warming(world: SandboxWorld, ip: str) -> bool:
    """Whether the IPWarmup currently puts a daily quota on `ip`."""
    with contextlib.suppress(LookupError, ApiError):
        obj = world.api.get(API_VERSION, "IPWarmup", WARMUP, world.settings.namespace)
        status = obj.get("status") or {}
        if status.get("phase") == "Completed":
            return False
        return any(e.get("address") == ip and e.get("dailyQuota")
                   for e in status.get("ips") or [])
    return False


def failover_bound(world: SandboxWorld, *, node_lost: bool = False) -> float:
    """unhealthyAfter + lease duration + clock skew (docs/sendingpool.md), plus the time a
    message takes through the queue (a scheduler tick and a delivery, a second). When the
    holder's node is lost, its pod turns unready only once the node-lifecycle controller
    notices (`world.node_detection_seconds()`): a cut-off kubelet reports nothing."""
    spec = world.pool().get("spec") or {}
    text = str((spec.get("failover") or {}).get("unhealthyAfter") or "5s")
    unhealthy = float(text[:-1]) * {"s": 1, "m": 60}.get(text[-1], 1)
    s = world.settings
    detection = world.node_detection_seconds() if node_lost else 0.0
    return (detection + unhealthy + s.lease_duration + s.lease_clock_skew
            + s.lease_renew_interval + 1.0)


@_scene("node_failed", "A node fails (partition): its IPs move to another pod")
async def node_failed(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                      ip: str = "127.0.20.2", within: float = 40.0) -> None:
    """Freeze the node of the pod holding `ip` (Ready=Unknown, processes stopped). The IP
    must be Active on another pod within the failover bound and carry mail from it within
    the bound too, warming or not: warm-up quota is leased in chunks, so a holder lost mid-day
    blocks only its outstanding chunk (docs/sendingpool.md, "Warm-up quotas in leases"). After
    healing, the old pod must not send from the IP again (its lease expired: self-fencing),
    by its own counters and lease table (`fencing`), and its accepted mail is not lost."""
    assert world.agent is not None
    ns = world.settings.namespace
    holders = world.ip_holders()
    nodes = {ip_: world.api.get("v1", "Pod", pod, ns)["spec"]["nodeName"]
             for ip_, pod in holders.items()}
    if nodes.get(ip) in (None, OPERATOR_NODE):
        ip = next((i for i in sorted(nodes) if nodes[i] != OPERATOR_NODE), ip)
    holder, node = holders.get(ip), nodes.get(ip)
    if not holder or not node:
        raise RuntimeError(f"{ip} has no holder")
    bound = failover_bound(world, node_lost=True)
    old = fencing.admin(world, holder, pool=world.settings.pool)
    epoch = (await fencing.read_when_answering(old, ip, within=within)).epoch
    pids = world.agent.pod_pids(ns, holder)
    async with Feeder(world, ledger, "partition"):
        await flowing(world, since=time.time(), ip=ip, count=2, within=within)
        failed_at = time.time()
        await world.agent.fail_node(node)
        result.details.update(pod=holder, ip=ip, node=node)
        # Once every thread stopped the pod can begin nothing until the node heals.
        await wait_until(lambda: fencing.stopped(pids), within=within, interval=0.02,
                         what=f"{holder} stopped")
        stopped_at = time.time()
        warming = _warming(world, ip)
        try:
            def moved() -> str | None:
                now_holder = world.ip_holders().get(ip)
                return now_holder if now_holder not in (None, holder) else None

            # The pod the status named when the IP moved (a later read may fall between the
            # lease loop's writes).
            result.details["new_holder"] = await wait_until(
                moved, within=within, what=f"{ip} Active on another pod", interval=0.05)
            reassigned = time.time() - failed_at
            result.timings["reassigned_s"] = round(reassigned, 2)
            first = await wait_until(lambda: _first_from(world, ip, failed_at), within=within,
                                     what=f"mail from {ip} from another pod")
            result.timings["failover_s"] = round(first - failed_at, 2)
            result.details["holder_after_first_mail"] = world.ip_holders().get(ip)
            await flowing(world, since=first, ip=ip, count=3, within=within)
            # The new holder wrote messages from the IP under a newer epoch (its own count).
            new = fencing.admin(world, world.ip_holders()[ip], pool=world.settings.pool)
            carried = fencing.carried(await fencing.read(new, ip, above=epoch))
        finally:
            await world.agent.heal_node(node)
        healed_at = time.time()
        result.timings["healed_after_s"] = round(healed_at - failed_at, 2)
        # The healed pod is back (its processes resumed, Ready again) while mail flows: if it
        # still believed it held the IP, the receivers would see it now.
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: pod_ready(world.api.get("v1", "Pod", holder, ns)),
                             within=within, what=f"{holder} Ready again after healing")
        result.check("the healed pod is Ready again",
                     pod_ready(world.api.get("v1", "Pod", holder, ns)), holder)
        # Ask the healed pod itself: under its lost lease (that epoch or older) it wrote
        # nothing from the IP since it stopped, and holds no valid lease of it. The pod may
        # have been deleted and made again while its node was out (the frozen process is
        # killed once the node is back): then its process of now is asked, and what the
        # frozen one did between the thaw and the kill is seen only at the receivers.
        pool = world.settings.pool
        healed, gone = await fencing.read_pod(world, holder, pids, old, ip, pool=pool,
                                              within=within, upto=epoch)
        await flowing(world, since=time.time(), ip=ip, count=6, within=within)
        final, gone_at_end = await fencing.read_pod(world, holder, pids, old, ip, pool=pool,
                                                    within=within, upto=epoch)
        if gone_at_end and not gone:  # killed in between: each process judged on its own
            fence = [*fencing.problems(lost_at=stopped_at, baseline=healed, final=healed),
                     *fencing.problems(lost_at=stopped_at, baseline=final, final=final)]
        else:
            fence = fencing.problems(lost_at=stopped_at, baseline=healed, final=final)
        result.details["fence_readings"] = [healed.describe(), final.describe()]
        result.details["frozen_process_gone"] = gone_at_end
        result.check("the new holder wrote the IP's mail under a newer epoch (its counters)",
                     not carried, "; ".join(carried))
        result.check("the healed pod wrote nothing from the IP after it stopped and holds no "
                     "valid lease of it (its own counters and lease table)", not fence,
                     "; ".join(fence))
    result.check(f"{ip} Active on another pod within the failover bound ({bound:.1f}s)",
                 reassigned <= bound, f"{reassigned:.1f}s")
    result.details["warming"] = warming
    result.details["failover_limit_s"] = round(bound, 2)
    result.check(f"{ip} carries mail again within the failover bound ({bound:.1f}s)",
                 first - failed_at <= bound, f"{first - failed_at:.1f}s, limit {bound:.1f}s")
    result.check("the IP moved to another pod", result.details.get("new_holder") not in
                 (None, holder), str(result.details.get("new_holder")))
    left = await settle(world, ledger, within=within, scene="partition")
    result.check("no accepted message lost", not left,
                 f"{len(left)} outstanding, e.g. {[s.message_id for s in left[:3]]}")
    overlaps = ip_overlaps(world, world.settings.lease_duration)
    result.check("no IP used by two pods at once", not overlaps, "; ".join(overlaps[:3]))


@_scene("blocklisted", "An IP is listed on the DNSBL: it is drained, then comes back")
async def blocklisted(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                      ip: str = "127.0.20.3", within: float = 30.0) -> None:
    """List `ip` in the sandbox DNSBL zone while mail flows: the pool must show it
    Blocklisted and the receivers must get nothing from it once its lease is revoked; after
    delisting it carries mail again."""
    ns = world.settings.namespace

    def state_of() -> str:
        for entry in (world.pool().get("status") or {}).get("ips") or []:
            if entry["address"] == ip:
                return str(entry.get("state"))
        return ""

    async with Feeder(world, ledger, "dnsbl"):
        await flowing(world, since=time.time(), ip=ip, count=2, within=within)
        listed_at = time.time()
        world.dns.list_on_dnsbl(SANDBOX_DNSBL_ZONE, ip, "demo listing")
        await wait_until(lambda: state_of() == "Blocklisted", within=within,
                         what=f"{ip} Blocklisted in the pool status")
        seen_at = time.time()
        result.timings["detected_s"] = round(seen_at - listed_at, 2)
        quiet_from = seen_at + world.settings.lease_renew_interval + 1.0
        # Absence is only meaningful while mail flows: wait for plenty from the other IPs.
        await wait_until(lambda: time.time() > quiet_from, within=within, what="the lease")
        await flowing(world, since=quiet_from, not_ip=ip, count=12, within=within)
        late = [m for m in world.fleet.messages if m.peer_ip == ip and
                m.received_at > quiet_from]
        result.check(f"nothing received from {ip} while it is listed", not late,
                     f"{len(late)} messages")
        events = [e for e in world.api.list("v1", "Event", ns)
                  if "lock" in (e.get("reason") or "") or "lock" in (e.get("message") or "")]
        result.details["events"] = [f"{e.get('reason')}: {e.get('message')}"
                                    for e in events][:5]
        world.dns.delist_from_dnsbl(SANDBOX_DNSBL_ZONE, ip)
        delisted_at = time.time()
        await wait_until(lambda: state_of() == "Active", within=within,
                         what=f"{ip} Active again after delisting")
        back = await wait_until(lambda: _first_from(world, ip, delisted_at), within=within,
                                what=f"mail from {ip} after delisting")
        result.timings["back_s"] = round(back - delisted_at, 2)
    left = await settle(world, ledger, within=within, scene="dnsbl")
    result.check("no accepted message lost", not left, f"{len(left)} outstanding")


@_scene("dkim_rotation", "The DKIM key rotates; old and new signatures verify")
async def dkim_rotation(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                        within: float = 60.0) -> None:
    """Rotate the key with the `mailfleet.io/rotate` annotation while mail flows. Mail
    received after the switch carries the new selector and verifies; mail signed just before
    with the old selector still verifies against DNS during the overlap."""
    ns = world.settings.namespace

    def active() -> str:
        status = world.api.get(API_VERSION, "DomainAuth", DOMAINAUTH, ns).get("status") or {}
        return str((status.get("dkim") or {}).get("active") or "")

    old = active()
    async with Feeder(world, ledger, "rotation"):
        await flowing(world, since=time.time(), count=5, within=within)
        before = [m for m in world.fleet.messages
                  if verifying.dkim_signatures(m.data) and
                  verifying.dkim_signatures(m.data)[0][1] == old]
        started = time.time()
        await world.kubectl("annotate", "--overwrite", "-n", ns, f"da/{DOMAINAUTH}",
                            f"mailfleet.io/rotate=demo-{int(started)}")
        new = await wait_until(lambda: active() if active() != old else "", within=within,
                               what="a new active DKIM selector")
        result.timings["key_active_s"] = round(time.time() - started, 2)

        def first_new() -> float | None:
            times = [m.received_at for m in world.fleet.messages if m.received_at > started
                     and any(s == new for _, s in verifying.dkim_signatures(m.data))]
            return min(times) if times else None

        first = await wait_until(first_new, within=within,
                                 what=f"mail signed with the new selector {new}")
        result.timings["rotation_s"] = round(first - started, 2)
        switched_at = first
        await flowing(world, since=switched_at + 1.0, count=8, within=within)
    result.details.update(old_selector=old, new_selector=new)
    after = [m for m in world.fleet.messages if m.received_at > switched_at + 1.0]
    stale = [message_id_of(m) for m in after
             if all(s != new for _, s in verifying.dkim_signatures(m.data))]
    result.check("mail after the switch is signed with the new selector", not stale,
                 f"{len(stale)} of {len(after)} with another selector")
    failing = [message_id_of(m) for m in after if m.verdicts.get("dkim") != "pass"]
    result.check("mail after the switch passes DKIM at the receivers", not failing,
                 f"{len(failing)} failing")
    # The old key is Retiring but still published: a message signed with it just before
    # the rotation verifies now, as a receiver that is slow to process it would see it.
    recheck = before[-5:]
    lookup = verifying.make_lookup(world.dns.resolver())
    verdicts = [(await verifying.verify_dkim(lookup, m.data))[0] for m in recheck]
    result.check("mail signed just before the rotation still verifies (overlap)",
                 bool(recheck) and all(v == "pass" for v in verdicts),
                 f"{verdicts.count('pass')}/{len(recheck)} pass")
    status = world.api.get(API_VERSION, "DomainAuth", DOMAINAUTH, ns).get("status") or {}
    result.details["keys"] = [(k.get("selector"), k.get("state"))
                              for k in (status.get("dkim") or {}).get("keys") or []]


@_scene("suppression", "Hard-bounced and complained addresses are not attempted again")
async def suppression(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                      within: float = 30.0) -> None:
    """Send again to every address a receiver refused with a 5xx or reported as a complaint,
    through every pod; no receiver may see an attempt for them afterwards."""
    bounced = set(bounced_addresses(world))
    complained = complained_addresses(world)
    targets = sorted(bounced | complained)
    result.details.update(bounced=sorted(bounced), complained=sorted(complained))
    if not targets:
        raise RuntimeError("the campaign left no bounced or complained address")
    await asyncio.sleep(1.0)  # suppression entries replicate between pods
    started = time.time()
    attempts_before = _attempt_counts(world, targets)
    pods = [p["metadata"]["name"] for p in world.ready_pods()]
    sentinels: list[Sent] = []
    async with aiohttp.ClientSession() as session:
        for pod in pods:
            for rcpt in targets:
                await submit(world, ledger, session, rcpt=rcpt, klass="marketing",
                             scene="suppression", pod=pod)
        holders = set(world.ip_holders().values())
        for i, pod in enumerate(sorted(holders)):
            sentinels.append(await submit(world, ledger, session,
                                          rcpt=f"sentinel{i}@gmail.test", klass="marketing",
                                          scene="sentinel", pod=pod))
    # The sentinels were queued after the re-sends on the same pods: once they arrived, the
    # pods have had their chance to try the suppressed addresses.
    await wait_until(lambda: all(s.message_id in received_index(world) for s in sentinels),
                     within=within, what="the sentinel messages")
    await asyncio.sleep(2.0)
    wanted = {t.lower() for t in targets}
    resent = [m for m in world.fleet.messages if m.received_at > started
              and any(r.lower() in wanted for r in m.rcpt_to)]
    result.check("no complained or bounced address received mail again", not resent,
                 ", ".join(sorted({r for m in resent for r in m.rcpt_to}))[:200])
    attempts_after = _attempt_counts(world, targets)
    again = {rcpt: n - attempts_before.get(rcpt, 0) for rcpt, n in attempts_after.items()
             if n > attempts_before.get(rcpt, 0)}
    result.details["resubmitted"] = len(targets) * len(pods)
    result.check("no pod attempted a suppressed address again (RCPT at the receivers)",
                 not again, json.dumps(again))
    result.timings["checked_after_s"] = round(time.time() - started, 2)


def _attempt_counts(world: SandboxWorld, addresses: Iterable[str]) -> dict[str, int]:
    wanted = {a.lower() for a in addresses}
    counts: Counter[str] = Counter()
    for receiver in world.fleet:
        for attempt in receiver.attempts:
            if attempt.stage == "RCPT" and attempt.rcpt.lower() in wanted:
                counts[attempt.rcpt.lower()] += 1
    return dict(counts)


GATEWAY_POOL = "mail-gw"
GATEWAY_IP = ("127.0.20.4", "mta4.example.test")
"""The gateway pool's one egress IP: in the sandbox's 127.0.20.x range, not the main pool's."""
GATEWAY_NODE_SELECTOR = {"matchLabels": {"topology.kubernetes.io/zone": "c"}}
"""Cilium's gateway nodes (`egressGateway.nodeSelector`): node-c by its zone label. The
stand-in NATs on the one host, so the selector is carried but does not move traffic."""
GATEWAY_STANDIN = "sandbox egress gateway stand-in, nftables SNAT"


def attachment_mode(pool: JSON) -> str:
    """`spec.egress.attachment.mode` of a SendingPool (Bind when unset, the default)."""
    egress = (pool.get("spec") or {}).get("egress") or {}
    return str((egress.get("attachment") or {}).get("mode") or "Bind")


def holder_label(address: str) -> tuple[str, str]:
    """The label the operator puts on an IP's holder in the CNI modes (docs/sendingpool.md)."""
    return f"egress.mailfleet.io/{address.replace('.', '-')}", "holder"


def gateway_pool_object(world: SandboxWorld) -> JSON:
    """The gateway pool: the main pool's spec (domains, classes, throttling, submission
    ports, retry and failover settings) with one pod, one warm standby, one egress IP and the
    Cilium attachment."""
    spec = json.loads(json.dumps(world.pool().get("spec") or {}))
    address, helo = GATEWAY_IP
    spec.update(replicas=1, standbyReplicas=1)
    spec["egress"] = {**(spec.get("egress") or {}),
                      "ips": [{"address": address, "heloName": helo}],
                      "attachment": {"mode": "Cilium",
                                     "cilium": {"nodeSelector": GATEWAY_NODE_SELECTOR}}}
    return {"apiVersion": API_VERSION, "kind": "SendingPool",
            "metadata": {"name": GATEWAY_POOL, "namespace": world.settings.namespace},
            "spec": spec}


def _gateway_policies(world: SandboxWorld, address: str) -> list[JSON]:
    return [p for p in world.api.list(egress_gateway.API_VERSION, egress_gateway.KIND)
            if ((p.get("spec") or {}).get("egressGateway") or {}).get("egressIP") == address]


@_scene("gateway_mode", "A second pool in the Cilium attachment mode: mail leaves through "
                        "the egress gateway")
async def gateway_mode(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                       count: int = 8, within: float = 60.0) -> None:
    """Create the SendingPool `mail-gw` (mode Cilium, one egress IP, one pod and a standby,
    the main pool's domain), send a few messages to its holder and check at the receivers
    that they arrived from the egress IP, while the holder connects from its pod IP and the
    sandbox's egress gateway stand-in source-NATs it as Cilium would. Checks that a
    CiliumEgressGatewayPolicy for the IP selects the holder's label. Deletes the pool at the
    end. Skipped, with the reason, where the stand-in cannot run (nft missing, not root)."""
    result.details["attachments"] = {
        world.settings.pool: attachment_mode(world.pool()),
        GATEWAY_POOL: f"Cilium ({GATEWAY_STANDIN})"}
    if world.egress_gateway is None:
        reason = egress_gateway.nft_unusable_reason() or "the stand-in was not started"
        result.skipped = f"no egress gateway stand-in here: {reason}"
        result.details["attachments"][GATEWAY_POOL] = "Cilium (not run: no stand-in)"
        return
    gateway = world.egress_gateway
    ns = world.settings.namespace
    address, helo = GATEWAY_IP
    # The address is the network's (as on the gateway nodes): A and PTR records for its name.
    world.dns.set_records(helo, "A", [address])
    world.dns.add_ptr(address, helo)
    t0 = time.monotonic()
    world.api.create(gateway_pool_object(world))
    key, value = holder_label(address)
    try:
        def holder_ready() -> str:
            pool = world.pool(GATEWAY_POOL)
            holder = world.ip_holders(GATEWAY_POOL).get(address, "")
            ready = {p["metadata"]["name"] for p in world.ready_pods(GATEWAY_POOL)}
            pod = world.api.get("v1", "Pod", holder, ns) if holder in ready else {}
            labelled = ((pod.get("metadata") or {}).get("labels") or {}).get(key) == value
            up = (condition(pool, "Ready") or {}).get("status") == "True"
            return holder if up and labelled else ""

        holder = await wait_until(holder_ready, within=within,
                                  what=f"{GATEWAY_POOL} Ready with {address} Active on a "
                                       "labelled holder")
        result.timings["pool_ready_s"] = round(time.monotonic() - t0, 2)
        pod_ip = world.api.get("v1", "Pod", holder, ns)["status"]["podIP"]
        result.details.update(holder=holder, pod_ip=pod_ip,
                              pods=[p["metadata"]["name"] for p in world.pods(GATEWAY_POOL)])

        policies = _gateway_policies(world, address)
        result.details["policies"] = [p["metadata"]["name"] for p in policies]
        selecting = [p for p in policies if any(
            ((sel.get("podSelector") or {}).get("matchLabels") or {}).get(key) == value
            for sel in (p.get("spec") or {}).get("selectors") or [])]
        result.check("one CiliumEgressGatewayPolicy for the IP selects the holder label",
                     len(policies) == 1 and len(selecting) == 1,
                     f"{len(policies)} for {address}, {len(selecting)} selecting {key}={value}")
        others = [p["metadata"]["name"] for p in world.pods(GATEWAY_POOL)
                  if p["metadata"]["name"] != holder
                  and ((p["metadata"].get("labels") or {}).get(key)) == value]
        result.check("only the holder pod carries the holder label", not others,
                     f"also on {others}" if others else f"{holder} ({pod_ip})")

        def translated() -> bool:
            return any(r.pod_ip == pod_ip and r.egress_ip == address
                       for r in gateway.ruleset.rules)

        await wait_until(translated, within=within,
                         what=f"the stand-in's SNAT rule {pod_ip} -> {address}")
        lookup = verifying.make_lookup(world.dns.resolver())

        async def spf_lists_ip() -> bool:
            return any(f"ip4:{address}" in t for t in await lookup(DOMAIN, "TXT")
                       if t.startswith("v=spf1"))

        await wait_until(spf_lists_ip, within=within, what=f"SPF of {DOMAIN} to list {address}")
        result.timings["gateway_ready_s"] = round(time.monotonic() - t0, 2)

        started = time.time()
        async with aiohttp.ClientSession() as session:
            sent = [await submit(world, ledger, session, klass="transactional",
                                 rcpt=f"gateway{i:03d}@{PROVIDER_DOMAINS[i % 4]}",
                                 scene="gateway_mode", pod=holder)
                    for i in range(count)]
        accepted = [s for s in sent if s.status == 202]
        result.check("the gateway pool accepted every submission", len(accepted) == count,
                     f"{len(accepted)}/{count} accepted (HTTP to {pod_ip}; answers "
                     f"{sorted(Counter(s.status for s in sent).items())})")
        left = await settle(world, ledger, within=within, scene="gateway_mode")
        got = received_index(world)
        arrived = [got[s.message_id][0] for s in accepted if s.message_id in got]
        result.timings["delivered_s"] = round(time.time() - started, 2)
        peers = Counter(m.peer_ip for m in arrived)
        result.details["peers"] = dict(peers)
        result.check("every message delivered", bool(accepted) and not left,
                     f"{len(arrived)}/{len(accepted)} received")
        result.check(f"receivers saw the egress IP {address} as the peer, not the pod IP",
                     bool(arrived) and set(peers) == {address},
                     ", ".join(f"{ip}: {n}" for ip, n in sorted(peers.items())))
        result.check("HELO is the egress IP's name",
                     bool(arrived) and all(m.helo == helo for m in arrived),
                     ", ".join(sorted({m.helo for m in arrived})))
        result.check("DKIM/SPF/DMARC pass at the receivers",
                     bool(arrived) and all(m.verdicts.get(k) == "pass" for m in arrived
                                           for k in ("dkim", "spf", "dmarc")),
                     f"dkim {_pass_rate(arrived, 'dkim')}, spf {_pass_rate(arrived, 'spf')}, "
                     f"dmarc {_pass_rate(arrived, 'dmarc')}")
    finally:
        # The main pool's scenes and checks count its own pods and IPs only, but leave the
        # world as the samples made it.
        with contextlib.suppress(LookupError, ApiError):
            world.api.delete(API_VERSION, "SendingPool", GATEWAY_POOL, ns)

    def gone() -> bool:
        return not world.pods(GATEWAY_POOL) and not _gateway_policies(world, address)

    with contextlib.suppress(TimeoutError):
        await wait_until(gone, within=within, what=f"{GATEWAY_POOL}'s pods and policies gone")
    result.check("pool deleted: its pods and egress policies are gone", gone(),
                 f"{len(world.pods(GATEWAY_POOL))} pods, "
                 f"{len(_gateway_policies(world, address))} policies left")


@_scene("accounting", "Every accepted message delivered or bounced; figures per provider")
async def accounting(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                     within: float = 30.0) -> None:
    """The final ledger: accepted = delivered + bounced (with the receivers' reason); lost
    must be 0. Per provider: delivered, bounced, deferred and pass rates as seen there."""
    left = await settle(world, ledger, within=within)
    figures = summarize(world, ledger)
    result.details.update(figures)
    result.check("messages lost: 0", figures["lost"] == 0,
                 f"{figures['lost']} lost, e.g. {[s.message_id for s in left[:3]]}")
    result.check("every delivered message came over TLS (every provider offers it)",
                 figures["tls_rate"] == 1.0, f"tls_rate {figures['tls_rate']}")
    result.check("DKIM/SPF/DMARC pass for every delivered message",
                 figures["dkim_pass_rate"] == figures["spf_pass_rate"] ==
                 figures["dmarc_pass_rate"] == 1.0,
                 f"dkim {figures['dkim_pass_rate']}, spf {figures['spf_pass_rate']}, "
                 f"dmarc {figures['dmarc_pass_rate']}")


def summarize(world: SandboxWorld, ledger: Ledger) -> JSON:
    """Figures from the receivers' records against what was accepted."""
    got = received_index(world)
    bounced_rcpts = bounced_addresses(world)
    complained = complained_addresses(world)
    accepted = ledger.accepted
    delivered_ids = {s.message_id for s in accepted if s.message_id in got}
    bounced = [s for s in accepted if s.message_id not in delivered_ids
               and (s.rcpt in bounced_rcpts or s.rcpt in complained)]
    lost = len(accepted) - len(delivered_ids) - len(bounced)
    delivered_msgs = [got[mid][0] for mid in delivered_ids]
    per_provider: dict[str, JSON] = {}
    for receiver in world.fleet:
        mine = [m for m in delivered_msgs if m.provider == receiver.name]
        per_provider[receiver.name] = {
            "delivered": len(mine),
            "bounced": sum(1 for a in receiver.attempts if a.code >= 500),
            "deferred": sum(1 for a in receiver.attempts if 400 <= a.code < 500),
            "complaints": len(receiver.complaints),
            "dkim_pass_rate": round(_pass_rate(mine, "dkim"), 4),
            "spf_pass_rate": round(_pass_rate(mine, "spf"), 4),
            "dmarc_pass_rate": round(_pass_rate(mine, "dmarc"), 4),
            "tls_rate": round(_tls_rate(mine), 4),
        }
    duplicates = sum(len(v) - 1 for mid, v in got.items() if len(v) > 1 and mid)
    return {
        "accepted": len(accepted),
        "delivered": len(delivered_ids),
        "bounced": len(bounced),
        "deferred": sum(p["deferred"] for p in per_provider.values()),
        "lost": lost,
        "duplicates": duplicates,
        "rejected_submissions": sum(1 for s in ledger.sent if s.status != 202),
        "dkim_pass_rate": round(_pass_rate(delivered_msgs, "dkim"), 4),
        "spf_pass_rate": round(_pass_rate(delivered_msgs, "spf"), 4),
        "dmarc_pass_rate": round(_pass_rate(delivered_msgs, "dmarc"), 4),
        "tls_rate": round(_tls_rate(delivered_msgs), 4),
        "tlsrpt_reports": world.transport.tlsrpt_reports(world.fleet),
        "providers": per_provider,
    }


def from_domain(message: ReceivedMessage) -> str:
    return email.utils.parseaddr(reports.header_value(message.data, "From") or "")[1] \
        .rpartition("@")[2].lower()
