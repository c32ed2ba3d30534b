"""The delivery engine: moves spooled deliveries through the scheduled and ready tiers
(`scheduling`) and runs the connections that drain the ready queues (`delivering`).

One asyncio task (`_run`) owns the scheduled tier: it wakes for due retries, new submissions,
lease changes and expiries, resolves domains to sites (`mx`), and pushes due mail into lanes.
A lane is one (source IP, site) pair with up to `maxConnections` worker tasks; each worker holds
one SMTP connection and, per message: takes tokens from the gate in priority order, pops the
best delivery, re-checks its lease and quota, signs, sends, and records the outcome.

Leases bound every attempt: a worker starts no connection or transaction on a source with less
than `delivery.leaseMargin` of lease left, and each attempt (signing, connect, MAIL..end of
DATA) runs under an `asyncio.timeout` set to the lease's deadline minus that margin, moved
when a renewal extends the lease and brought forward to now when the IP is revoked. An attempt
cut short this way is not a delivery failure: its connection is dropped and the message goes
back through source choice (parked until a lease is granted again); its quota reservation is
kept only if the end of DATA had been written (it may have been delivered).

Every outcome goes to the spool without waiting (see `spool` for why that is safe) and to the
deliverability hooks, which also decide the envelope sender (VERP), the headers added before
and after signing, and slow a provider down (`pace`: its token buckets run at a fraction of
their rate, or the lane waits while the provider is suspended).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import heapq
import logging
import math
from collections.abc import Iterable, Sequence

from mailfleet_sender import (
    clock,
    config,
    delivering,
    dkim_signing,
    egress_counts,
    event_publishing,
    events,
    hooks,
    keys,
    leases,
    metrics,
    mishaps,
    mx,
    paging,
    scheduling,
    spool,
    throttles,
    tls_policy,
    transport_security,
    units,
)

log = logging.getLogger(__name__)

TICK = 0.2
"""Longest sleep of the scheduler loop: bounds how late a lease expiry is noticed."""
LOCAL_SOURCE = "local"
"""Name of the pod's own address when it sends without a lease (requireLease: false)."""
PAGE_TICK = 1.0
"""Seconds between reads of newly due rows while pending mail waits on disk."""
COUNT_SHARE = 20
"""The spool's depth is recounted at most every COUNT_SHARE x what a count takes (<= 5 %)."""
DATA_CACHE_BYTES = 256 * 1024 * 1024
"""Message bodies kept in memory after submission; beyond it they are read from the spool."""


@dataclasses.dataclass
class Lane:
    """Ready queue and connections of one (source IP, site)."""

    address: str
    site: str
    route: mx.Route | None
    provider: str
    max_connections: int
    buckets: tuple[throttles.TokenBucket, ...]
    rated: tuple[tuple[tuple[str, ...], throttles.TokenBucket], ...] = ()
    """The provider's own rate buckets (key, bucket): what reactive shaping scales."""
    queue: scheduling.ReadyQueue = dataclasses.field(default_factory=scheduling.ReadyQueue)
    workers: int = 0
    idle: int = 0
    event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    closed: bool = False


@dataclasses.dataclass
class Reservation:
    """One message counted against a source's quota before its attempt starts."""

    day: int
    open: bool = True


@dataclasses.dataclass(eq=False)
class Attempt:
    """One delivery attempt under its source's lease deadline (see `Engine._cutoff`)."""

    source: leases.Source
    timeout: asyncio.Timeout
    session: delivering.Session | None = None
    sending: bool = False
    """The transaction (MAIL..DATA) has started on `session`."""


class LeaseEnding(Exception):
    """Less than the lease margin is left: the attempt must not start anything new."""


@dataclasses.dataclass
class DayCounts:
    day: int
    per_ip: dict[tuple[str, str], int] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(int)
    )


class Engine:
    def __init__(
        self,
        *,
        cfg: config.SenderConfig,
        spool_: spool.Spool,
        resolver: mx.MXResolver,
        keystore: keys.KeyStore,
        lease_table: leases.LeaseTable,
        hook_set: hooks.Hooks,
        metric_set: metrics.Metrics,
        clock_: clock.Clock,
        pod_ip: str | None = None,
        hostname: str = "localhost",
    ) -> None:
        self.cfg = cfg
        self.spool = spool_
        self.resolver = resolver
        self.keys = keystore
        self.leases = lease_table
        self.hooks = hook_set
        self.metrics = metric_set
        self.clock = clock_
        self.pod_ip = pod_ip
        self.hostname = hostname
        self.gate = throttles.TokenGate(clock_.monotonic)
        self._timers: list[tuple[float, int, spool.Delivery]] = []
        self._routing: dict[str, list[spool.Delivery]] = collections.defaultdict(list)
        self._resolving: set[str] = set()
        self._parked: list[spool.Delivery] = []
        self._held: list[spool.Delivery] = []
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._queued: dict[str, int] = collections.defaultdict(int)
        self._pending: dict[str, dict[int, spool.Delivery]] = collections.defaultdict(dict)
        self._remaining: dict[int, int] = collections.defaultdict(int)
        self._data: dict[int, bytes] = {}
        self._data_bytes = 0
        self._signed: dict[int, tuple[int, bytes]] = {}
        self._buckets: dict[tuple[str, ...], throttles.TokenBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._halt = False
        self._run_task: asyncio.Task[None] | None = None
        self._turn = 0
        self._sign_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="dkim")
        self._inflight = 0
        self._inflight_by_ip: dict[str, int] = collections.defaultdict(int)
        self._attempts: set[Attempt] = set()
        self._settled = asyncio.Event()
        self.totals: collections.Counter[str] = collections.Counter()
        self.egress = egress_counts.EgressCounts(clock_)
        self.today = DayCounts(day=clock_.day())
        self._shape_buckets: dict[str, throttles.TokenBucket] = {}
        self.pager = paging.Pager(cfg.spool_window)
        self._busy: set[int] = set()
        self._page_wake = asyncio.Event()
        self.events: event_publishing.Publisher | None = None
        """Builds the event each outcome update carries (no events when unset)."""
        self.transport = transport_security.TransportSecurity(
            cfg, resolver=resolver.resolver, metric_set=metric_set, clock=clock_.monotonic,
            wall=clock_.wall,
        )

    # --- lifecycle ------------------------------------------------------------------------

    def load(self, deliveries: Iterable[spool.Delivery] | None = None) -> None:
        """At start (before `start`): the first page of the spool (what is due, up to the
        window), or the given deliveries."""
        counts = self.spool.load_counters(self.today.day)
        for (address, kind), n in counts.items():
            self.today.per_ip[(address, kind)] = n
        if deliveries is None:
            self._add_page(self._first_page())
        else:
            self.add(deliveries, data=None)

    async def reload(self) -> None:
        """After `forget_pending` and `resume`: page the spool in again."""
        self.pager.reset()
        self.pager.begin()
        try:
            depth = await asyncio.to_thread(paging.count_depth, self.spool)
            self.pager.depth = depth
            self.pager.classes.update(depth)
            page = await asyncio.to_thread(
                paging.read_page, self.spool, {}, self._class_order(), now=self.clock.wall(),
                room=self.pager.window,
            )
        except BaseException:
            self.pager.reading = False  # the pager's next tick reads from the beginning
            raise
        self._add_page(page)

    def _first_page(self) -> paging.Page:
        self.pager.reset()
        self.pager.depth = paging.count_depth(self.spool)
        self.pager.classes.update(self.pager.depth)
        self.pager.begin()
        return paging.read_page(
            self.spool, {}, self._class_order(), now=self.clock.wall(), room=self.pager.window
        )

    def _add_page(self, page: paging.Page) -> None:
        live = (i for p in self._pending.values() for i in p)
        rows = self.pager.fresh(page, live)
        if not self.pager.on_disk:
            self.pager.depth.clear()
        self.add(rows, data=None)

    def _class_order(self) -> list[str]:
        self.pager.classes.update(c.name for c in self.cfg.classes)
        return sorted(
            self.pager.classes, key=lambda n: (-scheduling.class_priority(n, self.cfg), n)
        )

    def start(self) -> None:
        self._run_task = asyncio.create_task(self._run(), name="scheduler")
        self._spawn(self._page_in())

    async def _page_in(self) -> None:
        """Refill the window from the spool as it drains, and count the true depth."""
        next_count = last_read = 0.0
        while not self._halt:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._page_wake.wait(), timeout=PAGE_TICK)
            self._page_wake.clear()
            tick = self.clock.monotonic() - last_read >= PAGE_TICK  # newly due rows on disk
            if self.pager.wants_refill(self.pending_count(), tick=tick):
                last_read = self.clock.monotonic()
                try:
                    await self._refill()
                except Exception:  # the rows stay on disk; the next tick tries again
                    self.pager.reading = False
                    log.exception("reading the next page of the spool failed")
            if self.pager.on_disk and self.clock.monotonic() >= next_count:
                began = self.clock.monotonic()
                with contextlib.suppress(Exception):
                    self.pager.depth = await asyncio.to_thread(paging.count_depth, self.spool)
                cost = self.clock.monotonic() - began  # ~0.2 s for a million rows
                next_count = began + max(2 * PAGE_TICK, COUNT_SHARE * cost)

    async def _refill(self) -> None:
        cursors = self.pager.begin()
        await self.spool.flush()  # every outcome queued so far is on disk before the read
        page = await asyncio.to_thread(
            paging.read_page, self.spool, cursors, self._class_order(),
            now=self.clock.wall(), room=self.pager.room(self.pending_count()),
        )
        if not self._halt:
            self._add_page(page)
        else:
            self.pager.reading = False

    async def stop(self, *, grace: float) -> None:
        """Stop taking mail out of the queues, let in-flight transactions finish (up to
        `grace` seconds), then cancel what is left; the spool keeps every undelivered row."""
        self._halt = True
        self._wake.set()
        for lane in self._lanes.values():
            lane.event.set()
        if self._inflight:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
        self._sign_pool.shutdown(wait=False, cancel_futures=True)

    def resume(self) -> None:
        """Run again after `stop` (an undrain cancelled the hand-off); call `forget_pending`
        first and `add` the spool's pending rows after."""
        self._halt = False
        self._sign_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="dkim")
        self.start()

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        """Apply a reloaded config: classes, retries, throttles, DKIM domains, day length."""
        self.cfg = cfg
        self.transport.reconfigure(cfg)
        self.clock.day_length = units.duration_seconds(cfg.clock.day_length)
        self.clock.timezone = cfg.clock.timezone
        for key, bucket in list(self._buckets.items()):
            rate = self._rate_for(key)
            if rate is None:
                del self._buckets[key]
            else:
                bucket.reconfigure(rate, None, self.clock.monotonic())
        for lane in list(self._lanes.values()):
            self._close_lane(lane)
        self._reschedule_attempts()  # leaseMargin may have changed
        self._wake.set()

    # --- intake ---------------------------------------------------------------------------

    def add(self, deliveries: Iterable[spool.Delivery], *, data: bytes | None) -> None:
        """New (or reloaded) deliveries; `data` is the body when all share one message (a new
        submission: beyond the window it stays on disk unless it outranks mail in memory)."""
        now = self.clock.wall()
        for delivery in deliveries:
            if data is not None and not self._admit(delivery):
                continue
            self._pending[delivery.class_name][delivery.id] = delivery
            self._remaining[delivery.message] += 1
            if data is not None and delivery.message not in self._data:
                if self._data_bytes + len(data) <= DATA_CACHE_BYTES:
                    self._data[delivery.message] = data
                    self._data_bytes += len(data)
            if delivery.next_attempt <= now:
                self._routing[delivery.domain].append(delivery)
            else:
                heapq.heappush(self._timers, (delivery.next_attempt, delivery.id, delivery))
        self._wake.set()

    def _admit(self, delivery: spool.Delivery) -> bool:
        """Room in the window, or a lower class to make room from (strict priority)."""
        self.pager.classes.add(delivery.class_name)
        if self.pending_count() < self.pager.window:
            return True
        priority = scheduling.class_priority(delivery.class_name, self.cfg)
        for name in sorted(self._pending, key=lambda n: scheduling.class_priority(n, self.cfg)):
            if scheduling.class_priority(name, self.cfg) >= priority:
                break
            victim = next((d for d in reversed(self._pending[name].values())
                           if d.id not in self._busy), None)
            if victim is not None:
                self._drop(victim)
                return True
        self.pager.forgot(delivery.class_name, paging.key_of(delivery))
        return False

    def _drop(self, delivery: spool.Delivery) -> None:
        """Take a pending delivery out of memory; its row stays on disk and is paged in
        again (stale copies in lanes, timers or lists are skipped: see `_live`)."""
        if self._pending.get(delivery.class_name, {}).pop(delivery.id, None) is None:
            return
        self.pager.forgot(delivery.class_name, paging.key_of(delivery))
        self.pager.settled(delivery.id)
        self._forget_message(delivery.message)

    def _live(self, delivery: spool.Delivery) -> bool:
        return self._pending.get(delivery.class_name, {}).get(delivery.id) is delivery

    # --- views for stats and metrics ------------------------------------------------------

    def queue_stats(self) -> dict[str, tuple[int, float, int]]:
        """class -> (depth, oldest age in seconds, held)."""
        now = self.clock.wall()
        held = collections.Counter(d.class_name for d in self._held if self._live(d))
        out: dict[str, tuple[int, float, int]] = {}
        for cls in self.cfg.classes:
            pending = self._pending.get(cls.name, {})
            oldest = min((d.created for d in pending.values()), default=now)
            depth = len(pending)
            if self.pager.on_disk and cls.name in self.pager.depth:  # the spool's own count
                depth, disk_oldest = self.pager.depth[cls.name]
                oldest = min(oldest, disk_oldest)
            out[cls.name] = (depth, max(0.0, now - oldest), held[cls.name])
        return out

    def pending_count(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def counts_today(self) -> DayCounts:
        self._roll_day()
        return self.today

    @property
    def idle(self) -> bool:
        return self.pending_count() == 0 and self._inflight == 0 and not self.pager.on_disk

    # --- the scheduled tier ---------------------------------------------------------------

    async def _run(self) -> None:
        last_sweep = 0.0
        while not self._halt:
            self._wake.clear()
            now = self.clock.wall()
            while self._timers and self._timers[0][0] <= now:
                _, _, delivery = heapq.heappop(self._timers)
                if self._live(delivery):
                    self._routing[delivery.domain].append(delivery)
            self._expire_lanes()
            self._route_due()
            if self.clock.monotonic() - last_sweep >= 1.0:
                last_sweep = self.clock.monotonic()
                self._roll_day()
                self._sweep_waiting(now)
            timeout = TICK
            if self._timers:
                timeout = min(timeout, max(0.0, self._timers[0][0] - self.clock.wall()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _route_due(self) -> None:
        for domain in list(self._routing):
            if domain in self._resolving:
                continue
            batch = self._routing.pop(domain)
            if self.cfg.delivery.mode == "relay":
                self._dispatch(batch, None)
                continue
            cached = self.resolver.cached(domain)
            if isinstance(cached, mx.Route):
                self._dispatch(batch, cached)
            elif isinstance(cached, mx.RouteError):
                self._fail_route(batch, cached)
            else:
                self._resolving.add(domain)
                self._spawn(self._resolve(domain, batch))

    async def _resolve(self, domain: str, batch: list[spool.Delivery]) -> None:
        try:
            route = await self.resolver.resolve(domain)
        except mx.RouteError as error:
            self._fail_route(batch, error)
        else:
            self._dispatch(batch, route)
        finally:
            self._resolving.discard(domain)
            self._wake.set()

    def _fail_route(self, batch: Sequence[spool.Delivery], error: mx.RouteError) -> None:
        reply = hooks.Reply(
            code=error.code, text=error.text, stage="dns", enhanced=error.enhanced
        )
        for delivery in batch:
            self._failed(delivery, reply, source="", provider="", count_attempt=True)

    def _suppress(self, delivery: spool.Delivery) -> None:
        self._finish(
            delivery,
            "bounced",
            hooks.Reply(550, "recipient is suppressed", "local", "5.7.1"),
            verdict=hooks.Verdict.SUPPRESSED,
            source="",
            provider="",
        )

    def _dispatch(self, batch: Sequence[spool.Delivery], route: mx.Route | None) -> None:
        now = self.clock.wall()
        for delivery in scheduling.sort_for_dispatch(batch, self.cfg):
            if not self._live(delivery):
                continue
            if scheduling.is_expired(
                delivery, now=now, max_age=scheduling.max_age_seconds(delivery.class_name, self.cfg)
            ):
                self._expire(delivery, delivery.last_response)
                continue
            if self.hooks.is_suppressed(delivery.recipient, delivery.class_name):
                self._suppress(delivery)
                continue
            if self.cfg.dkim.require_signature and not self.keys.keys_for(delivery.from_domain):
                self._hold(delivery, "no usable DKIM key for " + delivery.from_domain)
                continue
            if (reason := self.hooks.hold_reason(delivery.class_name)) is not None:
                self._hold(delivery, reason)
                continue
            source = self._pick_source(delivery.class_name)
            if source is None:
                self._parked.append(delivery)
                continue
            lane = self._lane(source, route, delivery.domain)
            lane.queue.push(
                delivery,
                priority=scheduling.class_priority(delivery.class_name, self.cfg),
                rank=scheduling.tier_rank(delivery.tier, self.cfg.warmup.tier_order),
            )
            self._queued[lane.address] += 1
            self._kick(lane)

    def _pick_source(self, class_name: str) -> leases.Source | None:
        sources = self.leases.usable(self._margin())
        if not sources and not self.cfg.delivery.require_lease:
            return self._local_source()
        self._turn += 1
        return scheduling.choose_source(
            class_name,
            sources,
            overflow=self.cfg.warmup.overflow,
            queued=self._queued,
            turn=self._turn,
        )

    def _local_source(self) -> leases.Source:
        return leases.Source(
            address=LOCAL_SOURCE,
            helo_name=self.cfg.delivery.helo_name or self.hostname,
            deadline=math.inf,
            lease_id="",
            warmup=False,
            quota=None,
            classes=None,
        )

    def _source(self, address: str) -> leases.Source | None:
        """The source a lane may start attempts on now; None when it has none (any more)."""
        if address == LOCAL_SOURCE:
            if self.cfg.delivery.require_lease or self.leases.usable(self._margin()):
                return None
            return self._local_source()
        source = self.leases.get(address)
        return source if source is not None and self._usable(source) else None

    def _margin(self) -> float:
        return units.duration_seconds(self.cfg.delivery.lease_margin)

    def _usable(self, source: leases.Source) -> bool:
        """More than the margin of lease is left: a connection or transaction may start."""
        return source.remaining(self.clock.monotonic()) > self._margin()

    def _fence(self, source: leases.Source) -> None:
        """The last check before a connection or a write of a transaction from `source`;
        what it refuses is counted as fenced, never as sent (`egress_counts`)."""
        if not self._usable(source):
            self.egress.refused(source.address, source.epoch)
            raise LeaseEnding

    def _guard(self, source: leases.Source, stage: str) -> None:
        """Before each write of a transaction (`delivering.Session.send`): the fence again,
        then the count of what passed it."""
        self._fence(source)
        if stage == "mail":
            self.egress.transacting(source.address, source.epoch)
        elif stage == "message":
            self.egress.writing(source.address, source.epoch)

    def _cutoff(self, source: leases.Source) -> float | None:
        """The lease's deadline minus the margin, in event-loop time (what asyncio timers
        use); None for the pod's own address, which has no lease."""
        if math.isinf(source.deadline):
            return None
        left = source.remaining(self.clock.monotonic()) - self._margin()
        return asyncio.get_running_loop().time() + left

    def _hold(self, delivery: spool.Delivery, reason: str) -> None:
        """Keep the mail, never send it as it is: no usable DKIM key for the From domain
        (never unsigned), or a hook's hold (bulk mail while the suppression list is lost)."""
        if delivery.state != "held":
            delivery.state = "held"
            self.metrics.held.inc()
            self.spool.update(
                [
                    spool.Update(
                        delivery.id,
                        delivery.message,
                        "held",
                        delivery.attempts,
                        delivery.next_attempt,
                        reason,
                    )
                ]
            )
        self._held.append(delivery)

    def _sweep_waiting(self, now: float) -> None:
        """Expire parked and held mail past its max age."""
        for bucket in (self._parked, self._held):
            keep: list[spool.Delivery] = []
            for delivery in bucket:
                max_age = scheduling.max_age_seconds(delivery.class_name, self.cfg)
                if scheduling.is_expired(delivery, now=now, max_age=max_age):
                    self._expire(delivery, delivery.last_response)
                else:
                    keep.append(delivery)
            bucket[:] = keep

    def sources_changed(self, revoked: Sequence[str] = ()) -> None:
        """Leases granted, renewed or revoked: move running attempts' deadlines (a revoked
        source's to now), move mail off dead sources, retry parked mail."""
        self._reschedule_attempts()
        for lane in list(self._lanes.values()):
            if lane.address in revoked or self._source(lane.address) is None:
                self._evict(lane)
        self._redispatch_parked()

    def _reschedule_attempts(self) -> None:
        for attempt in self._attempts:
            if not attempt.timeout.expired():
                attempt.timeout.reschedule(self._cutoff(attempt.source))

    def keys_changed(self) -> None:
        self.release_held()

    def release_held(self) -> None:
        """Route held mail again (what still cannot go is held again)."""
        held, self._held = self._held, []
        for delivery in held:
            delivery.state = "queued"
            self._routing[delivery.domain].append(delivery)
        self._wake.set()

    def _redispatch_parked(self) -> None:
        parked, self._parked = self._parked, []
        for delivery in parked:
            self._routing[delivery.domain].append(delivery)
        self._wake.set()

    def _expire_lanes(self) -> None:
        for lane in list(self._lanes.values()):
            if self._source(lane.address) is None:
                self._evict(lane)

    # --- the ready tier -------------------------------------------------------------------

    def _lane(self, source: leases.Source, route: mx.Route | None, domain: str) -> Lane:
        if route is None:
            relay = self.cfg.delivery.relay
            assert relay is not None
            site, hosts = f"relay:{relay.host}", [relay.host]
        else:
            site, hosts = route.site, route.host_names
        key = (source.address, site)
        lane = self._lanes.get(key)
        if lane is not None and not lane.closed:
            if route is not None:
                lane.route = route
            return lane
        provider = self.cfg.throttles.provider_for(hosts)
        limits = self.cfg.throttles.defaults
        max_connections = limits.max_connections
        bucket_keys: list[tuple[str, ...]] = []
        if self.cfg.throttles.rate is not None:
            bucket_keys.append(("global",))
        if provider is not None:
            if provider.max_connections is not None:
                max_connections = provider.max_connections
            if provider.messages_per_second is not None:
                bucket_keys.append(("provider", provider.name, "s"))
            if provider.messages_per_hour is not None:
                bucket_keys.append(("provider", provider.name, "h"))
        else:
            if limits.messages_per_second is not None:
                bucket_keys.append(("site", site, "s"))
            if limits.messages_per_hour is not None:
                bucket_keys.append(("site", site, "h"))
        buckets = tuple(b for b in (self._bucket(k) for k in bucket_keys) if b is not None)
        rated = tuple(
            (k, b) for k in bucket_keys if k[0] == "provider" and (b := self._bucket(k)) is not None
        )
        lane = Lane(
            address=source.address,
            site=site,
            route=route,
            provider=provider.name if provider is not None else "other",
            max_connections=max_connections,
            buckets=buckets,
            rated=rated,
        )
        self._lanes[key] = lane
        return lane

    def _rate_for(self, key: tuple[str, ...]) -> float | None:
        t = self.cfg.throttles
        if key[0] == "global":
            return units.parse_rate(t.rate).per_second if t.rate else None
        per_second: float | None
        per_hour: int | None
        if key[0] == "provider":
            provider = next((p for p in t.providers if p.name == key[1]), None)
            if provider is None:
                return None
            per_second, per_hour = provider.messages_per_second, provider.messages_per_hour
        else:
            per_second, per_hour = t.defaults.messages_per_second, t.defaults.messages_per_hour
        if key[2] == "s":
            return per_second
        return per_hour / 3600.0 if per_hour is not None else None

    def _bucket(self, key: tuple[str, ...]) -> throttles.TokenBucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            rate = self._rate_for(key)
            if rate is None:
                return None
            bucket = throttles.TokenBucket(rate, None, now=self.clock.monotonic())
            self._buckets[key] = bucket
        return bucket

    def _kick(self, lane: Lane) -> None:
        """Wake idle connections, and open new ones while queued mail outnumbers the busy
        ones (up to the lane's connection limit)."""
        lane.event.set()
        if self._halt or lane.closed:
            return
        busy = lane.workers - lane.idle
        wanted = min(lane.max_connections, busy + len(lane.queue))
        while lane.workers < wanted:
            lane.workers += 1
            self._spawn(self._worker(lane))

    def _evict(self, lane: Lane) -> None:
        """The lane's source is gone: its mail goes back through source choice."""
        self._close_lane(lane)
        items = lane.queue.drain()
        self._queued[lane.address] -= len(items)
        if items:
            for delivery in items:
                self._routing[delivery.domain].append(delivery)
            self._wake.set()

    def _close_lane(self, lane: Lane) -> None:
        lane.closed = True
        lane.event.set()
        if self._lanes.get((lane.address, lane.site)) is lane:
            del self._lanes[(lane.address, lane.site)]
        if not lane.workers:
            items = lane.queue.drain()
            self._queued[lane.address] -= len(items)
            for delivery in items:
                self._routing[delivery.domain].append(delivery)
            self._wake.set()

    def _spawn(self, coro: collections.abc.Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task failed", exc_info=task.exception())

    async def _worker(self, lane: Lane) -> None:
        session: delivering.Session | None = None
        idle_timeout = units.duration_seconds(self.cfg.delivery.connection_idle)
        try:
            while not self._halt and not lane.closed:
                if not lane.queue:
                    lane.event.clear()
                    lane.idle += 1
                    try:
                        await asyncio.wait_for(lane.event.wait(), timeout=idle_timeout)
                    except TimeoutError:
                        break
                    finally:
                        lane.idle -= 1
                    continue
                if self._source(lane.address) is None:
                    self._evict(lane)
                    break
                buckets = self._paced_buckets(lane)
                if buckets is None:  # the provider is suspended: the lane's mail waits
                    await asyncio.sleep(TICK)
                    continue
                priority = lane.queue.peek_priority() or 0
                await self.gate.acquire(buckets, priority=priority)
                delivery = lane.queue.pop()
                if delivery is None or self._halt or lane.closed:
                    if delivery is not None:
                        self._requeue(lane, delivery)
                    self.gate.release(buckets)
                    continue
                self._queued[lane.address] -= 1
                if not self._live(delivery):  # dropped from the window meanwhile
                    self.gate.release(buckets)
                    continue
                if self.hooks.is_suppressed(delivery.recipient, delivery.class_name):
                    # Suppressed since it was routed (an entry from another pod, a complaint).
                    self.gate.release(buckets)
                    self._suppress(delivery)
                    continue
                source = self._source(lane.address)
                if source is None or source.quota_left() == 0:
                    self._requeue(lane, delivery)
                    self.gate.release(buckets)
                    self._evict(lane)
                    break
                session = await self._deliver(lane, source, delivery, session)
        finally:
            lane.workers -= 1
            if session is not None:
                if self._source(lane.address) is None:
                    session.abort()  # no QUIT from an address whose lease is ending
                else:
                    await session.close()
            if lane.queue and not self._halt:
                if lane.closed:
                    self._close_lane(lane)
                else:
                    self._kick(lane)

    def _shaping_key(self, lane: Lane) -> str:
        """Shaping is per provider; a site no provider entry matches is shaped on its own."""
        return lane.provider if lane.provider != "other" else lane.site

    def _paced_buckets(self, lane: Lane) -> tuple[throttles.TokenBucket, ...] | None:
        """The lane's buckets with reactive shaping applied; None while it is suspended.

        The provider's own rate buckets run at `factor` x their configured rate; a provider
        without one gets a shaping bucket at `factor` x `shapingBaseRate` while slowed down.
        """
        factor = self.hooks.pace(self._shaping_key(lane))
        if factor <= 0.0:
            return None
        now = self.clock.monotonic()
        for key, bucket in lane.rated:
            base = self._rate_for(key)
            if base is not None and not math.isclose(bucket.rate, base * factor):
                bucket.reconfigure(base * factor, None, now)
        name = self._shaping_key(lane)
        if factor >= 1.0:
            self._shape_buckets.pop(name, None)  # recovered: no state kept per site
        if factor >= 1.0 or lane.rated:
            return lane.buckets
        rate = units.parse_rate(self.cfg.deliverability.shaping_base_rate).per_second * factor
        shape = self._shape_buckets.get(name)
        if shape is None:
            shape = self._shape_buckets[name] = throttles.TokenBucket(rate, None, now=now)
        elif not math.isclose(shape.rate, rate):
            shape.reconfigure(rate, None, now)
        return (*lane.buckets, shape)

    def _requeue(self, lane: Lane, delivery: spool.Delivery) -> None:
        lane.queue.push(
            delivery,
            priority=scheduling.class_priority(delivery.class_name, self.cfg),
            rank=scheduling.tier_rank(delivery.tier, self.cfg.warmup.tier_order),
        )
        self._queued[lane.address] += 1

    async def _deliver(
        self,
        lane: Lane,
        source: leases.Source,
        delivery: spool.Delivery,
        session: delivering.Session | None,
    ) -> delivering.Session | None:
        """One attempt; returns the session to reuse (None when it must not be reused)."""
        self._inflight += 1
        self._busy.add(delivery.id)
        reservation = self._reserve(source)
        attempt = Attempt(source=source, timeout=asyncio.timeout_at(self._cutoff(source)),
                          session=session)
        self._attempts.add(attempt)
        try:
            async with attempt.timeout:
                return await self._attempt(lane, attempt, delivery, reservation)
        except (TimeoutError, LeaseEnding) as error:
            if isinstance(error, TimeoutError) and not attempt.timeout.expired():
                raise
            self._lease_ended(attempt, delivery, reservation)
            return None
        except Exception as error:  # the delivery's failure, not the worker's: see mishaps
            self._mishap(lane, attempt, delivery, reservation, error)
            return None
        finally:
            self._attempts.discard(attempt)
            self._busy.discard(delivery.id)
            if reservation.open:  # cancelled or crashed mid-attempt: it may have gone out
                reservation.open = False
                self._release_inflight(source.address)
            self._inflight -= 1
            if not self._inflight:
                self._settled.set()

    async def _attempt(
        self,
        lane: Lane,
        attempt: Attempt,
        delivery: spool.Delivery,
        reservation: Reservation,
    ) -> delivering.Session | None:
        source, session = attempt.source, attempt.session
        context = self._context(delivery, source.address)
        data = await self._signed_data(delivery, context)
        if data is None:
            self._give_back(source, reservation)
            self._hold(delivery, "no usable DKIM key for " + delivery.from_domain)
            return session
        security = None
        if lane.route is not None:
            security = await self.transport.policy(delivery.domain, lane.route, lane.provider)
        if session is not None and (
            session.broken or session.sent >= self.cfg.delivery.messages_per_connection
            or (security is not None and session.policy_key != security.key)
        ):
            await session.close()
            session = attempt.session = None
        self._fence(source)
        if session is None:
            self.egress.connecting(source.address, source.epoch)
            try:
                session = attempt.session = await delivering.connect(
                    self._target(lane, security, delivery.domain, source.address),
                    source_address=self._bind_address(source),
                    helo_name=source.helo_name,
                    timeouts=self._timeouts(),
                )
            except delivering.DeliveryFailure as failure:
                self._give_back(source, reservation)
                if failure.reply.enhanced == "4.7.5":
                    self._tls_refused(lane, delivery, failure.reply)
                else:
                    self._connection_failed(lane, delivery, failure.reply)
                return None
        if self.hooks.is_suppressed(delivery.recipient, delivery.class_name):
            # Suppressed while this attempt was being signed or connected: not attempted.
            self._give_back(source, reservation)
            self._suppress(delivery)
            return session
        sender = self.hooks.return_path(context) or delivery.sender
        attempt.sending = True
        try:
            reply = await session.send(sender=sender, recipient=delivery.recipient, data=data,
                                       guard=lambda stage: self._guard(source, stage))
        except delivering.DeliveryFailure as failure:
            self._settle(source, reservation)
            self._failed(delivery, failure.reply, source=source.address,
                         provider=lane.provider, count_attempt=True, site=lane.site)
            await session.close()
            return None
        self._settle(source, reservation)
        if 200 <= reply.code < 300:
            self._finish(
                delivery, "delivered", reply, verdict=hooks.Verdict.DELIVERED,
                source=source.address, provider=lane.provider, site=lane.site,
            )
        else:
            self._failed(delivery, reply, source=source.address, provider=lane.provider,
                         count_attempt=True, site=lane.site)
        if session.broken:
            await session.close()
            return None
        return session

    def _mishap(self, lane: Lane, attempt: Attempt, delivery: spool.Delivery,
                reservation: Reservation, error: Exception) -> None:
        session = attempt.session
        if session is not None:
            session.abort()
        if reservation.open:
            if attempt.sending and session is not None and session.data_sent:
                self._settle(attempt.source, reservation)
            else:
                self._give_back(attempt.source, reservation)
        self.totals["mishaps"] += 1
        log.error("delivery attempt raised", exc_info=error, extra={"delivery": delivery.id})
        if not self._live(delivery):
            return  # its outcome was recorded before the exception
        mishap = mishaps.classify(error)
        if mishap.permanent:
            self._finish(delivery, "bounced", mishap.reply, verdict=hooks.Verdict.BOUNCED,
                         source=attempt.source.address, provider=lane.provider, site=lane.site)
        else:
            self._failed(delivery, mishap.reply, source=attempt.source.address,
                         provider=lane.provider, count_attempt=True, site=lane.site, local=True)

    def _lease_ended(
        self, attempt: Attempt, delivery: spool.Delivery, reservation: Reservation
    ) -> None:
        """The attempt reached its lease's deadline (or its IP was revoked): drop the
        connection and put the message back through source choice, as not attempted. The
        reservation stands only if the end of DATA was written: it may have been delivered."""
        session = attempt.session
        if session is not None:
            session.abort()
        if not reservation.open:
            return  # the outcome was recorded already (cut short while closing): nothing to redo
        written = attempt.sending and session is not None and session.data_sent
        if written:
            self._settle(attempt.source, reservation)
        else:
            self._give_back(attempt.source, reservation)
        self.totals["lease_aborted"] += 1
        log.warning(
            "attempt stopped at the end of its lease",
            extra={"source": attempt.source.address, "delivery": delivery.id,
                   "data_sent": written},
        )
        self._routing[delivery.domain].append(delivery)
        self._wake.set()

    def _reserve(self, source: leases.Source) -> Reservation:
        """Count one message against the IP's quota and its `sent` count for today *before*
        it starts, so deliveries in flight are never promised again: not by the worker that
        checks `quota_left`, nor by a renewal whose `sentTodayBasis` the operator read while
        they were in flight (the sender's `sentToday` includes them)."""
        source.used += 1
        self._inflight_by_ip[source.address] += 1
        day = self.clock.day()
        self._count(source.address, "sent", day=day)
        return Reservation(day=day)

    def _give_back(self, source: leases.Source, reservation: Reservation) -> None:
        """The attempt never reached a receiver (no connection, no key, suppressed meanwhile):
        its reservation is returned to the quota and to that day's count."""
        reservation.open = False
        source.used -= 1
        self._release_inflight(source.address)
        self._count(source.address, "sent", day=reservation.day, n=-1)

    def _settle(self, source: leases.Source, reservation: Reservation) -> None:
        """The receiver has seen the attempt: the reservation stands. When the quota day
        changed while it was in flight, the receiver may date it to either day, so it counts
        against the new day too (the quota is never exceeded on either)."""
        reservation.open = False
        self._release_inflight(source.address)
        if self.clock.day() != reservation.day:
            self._count(source.address, "sent")

    def _release_inflight(self, address: str) -> None:
        left = self._inflight_by_ip[address] - 1
        if left > 0:
            self._inflight_by_ip[address] = left
        else:
            self._inflight_by_ip.pop(address, None)

    def inflight_by_ip(self) -> dict[str, int]:
        """Deliveries under way per source IP (reserved, no answer yet)."""
        return dict(self._inflight_by_ip)

    def _connection_failed(self, lane: Lane, delivery: spool.Delivery, reply: hooks.Reply) -> None:
        """Nobody answered: the whole lane would fail the same way, so all of it is retried."""
        items = [delivery, *lane.queue.drain()]
        self._queued[lane.address] -= len(items) - 1
        for item in items:
            self._failed(item, reply, source=lane.address, provider=lane.provider,
                         count_attempt=True, site=lane.site)

    def _tls_refused(self, lane: Lane, delivery: spool.Delivery, reply: hooks.Reply) -> None:
        """No MX host of the domain met its transport security policy: the domain's mail in
        the lane is deferred (never sent in clear); other domains of the site are not."""
        items = lane.queue.drain()
        self._queued[lane.address] -= len(items)
        for item in items:
            if item.domain != delivery.domain:
                self._requeue(lane, item)
        for item in [delivery, *(i for i in items if i.domain == delivery.domain)]:
            self._failed(item, reply, source=lane.address, provider=lane.provider,
                         count_attempt=True, site=lane.site)

    def _target(
        self,
        lane: Lane,
        security: tls_policy.DomainPolicy | None = None,
        domain: str = "",
        source_ip: str = "",
    ) -> delivering.Target:
        d = self.cfg.delivery
        if lane.route is None:
            relay = d.relay
            assert relay is not None
            username = _read_secret(relay.username_file)
            password = _read_secret(relay.password_file)
            return delivering.Target(
                hosts=((relay.host, relay.host),),
                port=relay.port,
                tls=relay.tls,
                verify_certificate=relay.verify_certificate,
                username=username,
                password=password,
            )
        hosts = tuple((h.name, a) for h in lane.route.hosts for a in h.addresses)
        return delivering.Target(
            hosts=hosts,
            port=d.smtp_port,
            tls="opportunistic" if d.opportunistic_tls else "none",
            security=security,
            contexts=self.transport.context,
            observe=None if security is None else self.transport.observer(
                domain=domain, source_ip=source_ip, provider=lane.provider, policy=security
            ),
        )

    def _bind_address(self, source: leases.Source) -> str | None:
        """The leased IP itself (attachment mode Bind), else the pod's own address: with
        `bindSource: false` a CNI rewrites the holder pod's traffic to the leased IP."""
        if source.address == LOCAL_SOURCE or not self.cfg.delivery.bind_source:
            return self.pod_ip
        return source.address

    def _timeouts(self) -> delivering.Timeouts:
        return delivering.Timeouts(
            connect=units.duration_seconds(self.cfg.delivery.connect_timeout),
            command=units.duration_seconds(self.cfg.delivery.command_timeout),
        )

    async def _message_data(self, delivery: spool.Delivery) -> bytes | None:
        data = self._data.get(delivery.message)
        if data is None:
            data = await self.spool.read_data(delivery.message)
            if data is not None and self._data_bytes + len(data) <= DATA_CACHE_BYTES:
                self._data[delivery.message] = data
                self._data_bytes += len(data)
        return data

    def _context(self, delivery: spool.Delivery, source: str) -> hooks.PrepareContext:
        cls = self.cfg.class_named(delivery.class_name)
        return hooks.PrepareContext(
            recipient=delivery.recipient,
            sender=delivery.sender,
            class_name=delivery.class_name,
            bulk=cls.bulk if cls is not None else False,
            message_id=str(delivery.message),
            source_ip=source,
            delivery_id=delivery.id,
        )

    async def _signed_data(
        self, delivery: spool.Delivery, context: hooks.PrepareContext
    ) -> bytes | None:
        """The bytes to send: prepared by the hooks, DKIM-signed (cached per message when the
        hooks changed nothing), then stamped. None when no key can sign it (held)."""
        signed = await self._sign_prepared(delivery, context)
        return None if signed is None else self.hooks.stamp(signed, context)

    async def _sign_prepared(
        self, delivery: spool.Delivery, context: hooks.PrepareContext
    ) -> bytes | None:
        data = await self._message_data(delivery)
        if data is None:
            raise mishaps.MessageMissing(f"message {delivery.message} missing from the spool")
        prepared = self.hooks.prepare(data, context)
        signing_keys = self.keys.keys_for(delivery.from_domain)
        if not signing_keys:
            return None if self.cfg.dkim.require_signature else prepared
        cacheable = prepared is data
        if cacheable:
            cached = self._signed.get(delivery.message)
            if cached is not None and cached[0] == self.keys.version:
                return cached[1]
        loop = asyncio.get_running_loop()
        timestamp = int(self.clock.wall())
        started = self.clock.monotonic()
        header = await loop.run_in_executor(
            self._sign_pool, _sign, prepared, signing_keys, timestamp
        )
        self.metrics.dkim_sign.observe(self.clock.monotonic() - started)
        if header is None:
            return None
        signed = header + prepared
        if cacheable and self._remaining.get(delivery.message, 0) > 1:
            self._signed[delivery.message] = (self.keys.version, signed)
        return signed

    # --- outcomes -------------------------------------------------------------------------

    def _failed(
        self,
        delivery: spool.Delivery,
        reply: hooks.Reply,
        *,
        source: str,
        provider: str,
        count_attempt: bool,
        site: str = "",
        local: bool = False,
    ) -> None:
        """A failed attempt: bounced or retried after the backoff. `local`: our own failure
        (mishaps), retried without telling the hooks (not the recipient's nor the IP's)."""
        if not self._live(delivery):
            return  # a stale copy of a row dropped from the window (paged in again later)
        if provider and provider != "other":
            reply = dataclasses.replace(reply, provider=provider)
        classification = (
            hooks.Classification(hooks.Verdict.DEFERRED, "deferred", "local error") if local
            else self.hooks.classify(reply, delivery.recipient)
        )
        if classification.verdict == hooks.Verdict.BOUNCED:
            self._finish(
                delivery, "bounced", reply, verdict=hooks.Verdict.BOUNCED, source=source,
                provider=provider, classification=classification, site=site,
            )
            return
        now = self.clock.wall()
        if count_attempt:
            delivery.attempts += 1
        schedule = [units.duration_seconds(s) for s in self.cfg.retry.schedule]
        next_attempt = now + scheduling.retry_delay(delivery.attempts, schedule)
        max_age = scheduling.max_age_seconds(delivery.class_name, self.cfg)
        delivery.last_response = str(reply)
        if next_attempt >= delivery.created + max_age:
            self._expire(delivery, str(reply), source=source, provider=provider)
            return
        delivery.next_attempt = next_attempt
        delivery.state = "queued"
        self.totals["deferred"] += 1
        if source:
            self._count(source, "deferred")
        self.metrics.messages.labels("deferred", delivery.class_name, source, provider).inc()
        self.spool.update(
            [
                spool.Update(
                    delivery.id, delivery.message, "queued", delivery.attempts, next_attempt,
                    str(reply), self._event(delivery, hooks.Verdict.DEFERRED, reply,
                                            classification, source, provider),
                )
            ]
        )
        if self.pager.on_disk:  # paged in again when due; the window takes due mail meanwhile
            self._drop(delivery)
        else:
            heapq.heappush(self._timers, (next_attempt, delivery.id, delivery))
        if not local:
            self._observe(
                delivery, hooks.Verdict.DEFERRED, reply, classification, source, provider, site
            )
        self._wake.set()

    def _expire(
        self, delivery: spool.Delivery, last: str | None, *, source: str = "", provider: str = ""
    ) -> None:
        reply = hooks.Reply(
            554, f"message expired in queue; last answer: {last or 'none'}", "local", "4.4.7"
        )
        self._finish(delivery, "expired", reply, verdict=hooks.Verdict.EXPIRED, source=source,
                     provider=provider)

    def _finish(
        self,
        delivery: spool.Delivery,
        state: spool.State,
        reply: hooks.Reply,
        *,
        verdict: hooks.Verdict,
        source: str,
        provider: str,
        classification: hooks.Classification | None = None,
        site: str = "",
    ) -> None:
        pending = self._pending.get(delivery.class_name, {})
        if pending.get(delivery.id) is not delivery:
            return
        del pending[delivery.id]
        self.pager.settled(delivery.id)
        if self.pager.on_disk:
            self._page_wake.set()
        delivery.state = state
        delivery.last_response = str(reply)
        self.spool.update(
            [
                spool.Update(
                    delivery.id, delivery.message, state, delivery.attempts,
                    delivery.next_attempt, str(reply),
                    self._event(delivery, verdict, reply, classification, source, provider),
                )
            ]
        )
        result = verdict.value
        self.totals[result] += 1
        if source:
            kind = "delivered" if state == "delivered" else "bounced"
            self._count(source, kind)
        self.metrics.messages.labels(result, delivery.class_name, source, provider).inc()
        if state == "delivered":
            self.metrics.latency.labels(delivery.class_name).observe(
                max(0.0, self.clock.wall() - delivery.created)
            )
        self._forget_message(delivery.message)
        self._observe(delivery, verdict, reply, classification, source, provider, site)

    def _event(
        self, delivery: spool.Delivery, verdict: hooks.Verdict, reply: hooks.Reply,
        classification: hooks.Classification | None, source: str, provider: str,
    ) -> events.Event | None:
        if self.events is None:
            return None
        return self.events.builder.outcome(
            delivery, verdict, reply, classification, source=source, provider=provider,
            now=self.clock.wall(),
        )

    def _forget_message(self, message: int) -> None:
        """One of the message's deliveries left memory; its body goes with the last."""
        remaining = self._remaining[message] - 1
        if remaining <= 0:
            self._remaining.pop(message, None)
            data = self._data.pop(message, None)
            if data is not None:
                self._data_bytes -= len(data)
            self._signed.pop(message, None)
        else:
            self._remaining[message] = remaining

    def _observe(
        self,
        delivery: spool.Delivery,
        verdict: hooks.Verdict,
        reply: hooks.Reply | None,
        classification: hooks.Classification | None,
        source: str,
        provider: str,
        site: str = "",
    ) -> None:
        try:
            self.hooks.observe(
                hooks.Outcome(
                    delivery_id=delivery.id,
                    recipient=delivery.recipient,
                    domain=delivery.domain,
                    class_name=delivery.class_name,
                    source_ip=source,
                    provider=provider,
                    verdict=verdict,
                    reply=reply,
                    classification=classification,
                    attempts=delivery.attempts,
                    site=site,
                    message=delivery.message,
                )
            )
        except Exception:
            log.exception("outcome observer failed")

    def _roll_day(self) -> None:
        """A new quota day: its counts start from what the spool holds for it (nothing after
        midnight; the earlier figures when a new timezone moved the day back)."""
        day = self.clock.day()
        if day != self.today.day:
            self.today = DayCounts(day=day)
            for key, n in self.spool.load_counters(day).items():
                self.today.per_ip[key] = n

    def _count(self, address: str, kind: str, *, day: int | None = None, n: int = 1) -> None:
        """+n on a per-IP counter of `day` (today when None); persisted in the spool."""
        self._roll_day()
        day = self.today.day if day is None else day
        if day == self.today.day:
            self.today.per_ip[(address, kind)] += n
        self.spool.update([], [spool.Count(day, address, kind, n)])

    def record_complaint(self, address: str) -> None:
        """For the feedback layer: a complaint about mail sent from `address` today."""
        self._count(address, "complained")

    def record_feedback(self, address: str, kind: str) -> None:
        """A report about mail sent from `address` (complained, or bounced after a 250)."""
        if address:
            self._count(address, kind)

    def forget_pending(self) -> int:
        """After `stop`: drop the in-memory queues (their rows were marked for hand-off)."""
        count = self.pending_count()
        self._pending.clear()
        self._timers.clear()
        self._routing.clear()
        self._parked.clear()
        self._held.clear()
        self._lanes.clear()
        self._queued.clear()
        self._resolving.clear()
        self._data.clear()
        self._data_bytes = 0
        self._signed.clear()
        self._remaining.clear()
        self._busy.clear()
        self.pager.reset()
        return count


def _sign(
    data: bytes, signing_keys: Sequence[dkim_signing.SigningKey], timestamp: int
) -> bytes | None:
    try:
        return dkim_signing.sign_message(data, signing_keys, timestamp=timestamp)
    except dkim_signing.DKIMSigningError:
        return None


def _read_secret(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()
