"""The pod's event stream (docs/events.md): the sink the sender's parts record into, and what
happens to an event once the spool has committed it.

- Recording: events caused by a spool change ride with it (`spool.Update.event`, the accepted
  template of `spool.NewMessage`); others (a complaint, an unsubscribe, an open) go through
  `record`, which queues them for the spool writer's next transaction. Either way an event
  exists only once committed; `flush` waits for that (before telling a client "done").
- Committed events (the writer thread calls `_committed`): one JSON line each on stdout when
  `events.stdout` (logs go to stderr, so the stream is events only), written by a thread of
  its own so neither the spool's writer nor the event loop waits on the pipe (nor hands the
  GIL back and forth for it: measured, that cost a quarter of the throughput); then, on the
  event loop, the listeners (the KPI book) and a wake-up for the webhooks.
- Webhooks (`webhook_delivery`): one runner per configured webhook, reading the outbox after
  its cursor. Runners follow config reloads (added, removed, changed); the outbox is written
  only while there is at least one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

from mailfleet_sender import (
    bounces,
    clock,
    config,
    event_builders,
    events,
    feedback,
    metrics,
    outbox,
    spool,
    units,
    webhook_delivery,
    wire,
)

log = logging.getLogger(__name__)

TAG_PRUNE_EVERY = 3600.0
"""Seconds between removals of expired message tags."""

Listener = Callable[[Mapping[str, Any]], None]


class Publisher:
    """`events.EventSink` for the whole pod. `start()` after the spool's writer started."""

    def __init__(
        self,
        cfg: config.SenderConfig,
        *,
        spool_: spool.Spool,
        metric_set: metrics.Metrics,
        clock_: clock.Clock,
        pod_ip: str | None,
    ) -> None:
        self.cfg = cfg
        self.spool = spool_
        self.clock = clock_
        self.pod_ip = pod_ip
        self.builder = self._builder(cfg)
        self.listeners: list[Listener] = []
        """Called on the event loop with each committed event's JSON object, in order."""
        self.runners: dict[str, webhook_delivery.Runner] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stdout_broken = False
        self._stdout: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._stdout_thread: threading.Thread | None = None
        r = metric_set.registry
        self.recorded = Counter(
            f"{metrics.PREFIX}_events", "Events committed, by type.", ["type"], registry=r)
        self.delivered = Counter(
            f"{metrics.PREFIX}_events_delivered", "Events a webhook answered 2xx for.",
            ["webhook"], registry=r)
        self.dropped = Counter(
            f"{metrics.PREFIX}_events_dropped", "Events dropped: not delivered to the webhook "
            "within its retryFor.", ["webhook"], registry=r)
        metric_set.attach(self._collect)
        spool_.on_events = self._committed
        spool_.outbox_enabled = bool(cfg.events.webhooks)

    def _builder(self, cfg: config.SenderConfig) -> event_builders.Builder:
        return event_builders.Builder(
            pool=cfg.pool, namespace=cfg.namespace or None, pod_ip=self.pod_ip
        )

    # --- the sink ---------------------------------------------------------------------------

    def record(self, event: events.Event) -> None:
        self.spool.record_event(event)

    def reported(self, report: feedback.Event, *, own_ref: str) -> None:
        """A complaint, or a bounce after the remote 250, read from a report. `own_ref`: this
        pod's part of message refs (`deliverability.message_ref`): a report about a message
        of this pod takes its tags; one sent by another pod of the pool carries none."""
        prefix, _, spool_id = report.message_ref.rpartition(".")
        message_id = spool_id or None
        now = self.clock.wall()
        if report.kind is feedback.Kind.COMPLAINT:
            event = self.builder.complained(
                message_id=message_id, recipient=report.recipient,
                class_name=report.class_name, ip=report.source_ip, now=now,
            )
        else:
            event = self.builder.reported_bounce(
                message_id=message_id, recipient=report.recipient,
                class_name=report.class_name, ip=report.source_ip,
                hard=report.category is bounces.Category.HARD_BOUNCE,
                code=report.status if events.ENHANCED.match(report.status) else "5.0.0",
                reason=report.reason, now=now,
            )
        if prefix == own_ref and spool_id.isdigit():
            self.record_for_message(event, int(spool_id))
        else:
            self.record(event)

    def record_for_message(self, event: events.Event, message: int) -> None:
        """An event about a message of this pod's spool: it takes the message's tags."""
        self.spool.record_event(event, tags_from=message)

    async def flush(self) -> None:
        """Wait until every event recorded so far is committed (durable)."""
        await self.spool.flush()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stdout_thread = threading.Thread(target=self._stdout_writer,
                                               name="event-stdout", daemon=True)
        self._stdout_thread.start()
        await self._sync_cursors(self.cfg)
        for hook in self.cfg.events.webhooks:
            self._add_runner(hook)
        self._spawn(self._prune_tags())

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        """Follow a reloaded config: stdout, identity, webhooks added, changed or removed."""
        self.cfg = cfg
        self.builder = self._builder(cfg)
        if self._loop is None:
            return
        wanted = {hook.name: hook for hook in cfg.events.webhooks}
        for name in list(self.runners):
            if name not in wanted:
                self._spawn(self.runners.pop(name).stop())
        self.spool.outbox_enabled = bool(wanted)
        self._spawn(self._sync_then_start(cfg))

    async def _sync_then_start(self, cfg: config.SenderConfig) -> None:
        await self._sync_cursors(cfg)
        for hook in cfg.events.webhooks:
            runner = self.runners.get(hook.name)
            if runner is None:
                self._add_runner(hook)
            else:
                runner.reconfigure(hook)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for runner in list(self.runners.values()):
            await runner.stop()
        self.runners.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)

    def close(self) -> None:
        """After the spool closed (its last commit's events are queued): write them out."""
        if self._stdout_thread is not None:
            self._stdout.put(None)
            self._stdout_thread.join(timeout=10)
            self._stdout_thread = None

    def _add_runner(self, hook: Any) -> None:
        runner = webhook_delivery.Runner(
            hook, spool_=self.spool, wall=self.clock.wall,
            on_delivered=lambda name, n: self.delivered.labels(name).inc(n),
            on_dropped=lambda name, n: self.dropped.labels(name).inc(n),
        )
        self.runners[hook.name] = runner
        runner.start()

    async def _sync_cursors(self, cfg: config.SenderConfig) -> None:
        names = [hook.name for hook in cfg.events.webhooks]
        await self.spool.in_writer(lambda db: outbox.sync_cursors(db, names))

    async def _prune_tags(self) -> None:
        while True:
            retention = units.duration_seconds(self.cfg.events.tag_retention)
            before = self.clock.wall() - retention
            with contextlib.suppress(spool.SpoolError):
                await self.spool.in_writer(functools.partial(outbox.prune_tags, before=before))
            await asyncio.sleep(TAG_PRUNE_EVERY)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event task failed", exc_info=task.exception())

    # --- committed events -------------------------------------------------------------------

    def _committed(self, published: list[outbox.Published]) -> None:
        """In the spool's writer thread, right after the commit."""
        if self.cfg.events.stdout and not self._stdout_broken:
            lines = [line for _, line in published]
            if self._stdout_thread is not None:
                self._stdout.put(lines)
            else:  # not started (tools, tests): write here
                self._write_stdout([lines])
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(self._dispatch, published)

    def _stdout_writer(self) -> None:
        """Write what has queued up in one go, until `close`."""
        while True:
            first = self._stdout.get()
            chunks = [first] if first is not None else []
            stopping = first is None
            while not self._stdout.empty():
                more = self._stdout.get_nowait()
                if more is None:
                    stopping = True
                else:
                    chunks.append(more)
            if chunks and not self._stdout_broken:
                self._write_stdout(chunks)
            if stopping:
                return

    def _write_stdout(self, chunks: Iterable[list[str]]) -> None:
        try:
            sys.stdout.write("".join(line + "\n" for lines in chunks for line in lines))
            sys.stdout.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stdout: keep delivering
            self._stdout_broken = True
            log.error("stdout event stream broken; no more events on stdout",
                      extra={"error": str(exc)})

    def _dispatch(self, published: list[outbox.Published]) -> None:
        for body, _ in published:
            self.recorded.labels(body["type"]).inc()
            for listener in self.listeners:
                try:
                    listener(body)
                except Exception:
                    log.exception("event listener failed")
        for runner in self.runners.values():
            runner.wake()

    # --- views ------------------------------------------------------------------------------

    def stats(self) -> wire.EventStats:
        return wire.EventStats(
            webhooks={
                name: wire.WebhookStats(
                    pending=r.figures.pending, delivered=r.figures.delivered,
                    dropped=r.figures.dropped, last_error=r.figures.last_error,
                )
                for name, r in sorted(self.runners.items())
            }
        )

    def _collect(self) -> list[GaugeMetricFamily]:
        pending = metrics.gauge("events_pending", "Events waiting for a webhook.", ["webhook"])
        for name, runner in sorted(self.runners.items()):
            pending.add_metric([name], runner.figures.pending)
        return [pending]
