"""Keeping the campaign KPIs of one sender: the `kpis.KpiBook` fed with events, read by
`/v1/stats` and Prometheus, and saved into the spool so a restart carries on from the last
save instead of from zero.

Why snapshots in the spool and not a rebuild from the event outbox: outbox rows go once
delivered, and the 24 h window and the days need more than the outbox keeps. A save is one row
(`kpis` table) written by the spool's writer every `kpis.saveInterval` when something changed,
and on stop; a crash loses at most one interval of figures (the mail itself is never at risk:
the KPIs are only counted). A saved state that cannot be read is logged and replaced, never a
reason not to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client.core import Metric

from mailfleet_sender import clock, config, kpis, metrics, spool, units, wire

log = logging.getLogger(__name__)


class KpiKeeper:
    """`load()` before serving, `start()` the saver, `observe(event)` for every event."""

    def __init__(self, *, cfg: config.SenderConfig, spool_: spool.Spool,
                 clock_: clock.Clock) -> None:
        self.cfg = cfg
        self.spool = spool_
        self.clock = clock_
        k = cfg.kpis
        self.book = kpis.KpiBook(
            tag_keys=cfg.events.tag_metrics_allow, max_values=k.tag_values,
            max_dimension_values=k.dimension_values, days=k.days, unique_keys=k.unique_keys,
            wall=clock_.wall,
        )
        self._saved = 0
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """The last saved state (blocking: call it in a thread at start)."""
        data = self.spool.load_kpis()
        if data is None:
            return
        try:
            state: Any = json.loads(data)
            if not isinstance(state, Mapping):
                raise ValueError("not an object")
            self.book.restore(state)
        except ValueError as exc:
            log.warning("saved KPIs unreadable: starting from zero", extra={"error": str(exc)})
            return
        self._saved = self.book.changes

    def start(self) -> None:
        self._task = asyncio.create_task(self._save_every(), name="kpi-save")

    def observe(self, event: Mapping[str, object]) -> None:
        """One event as the event stream emits it (a dict per docs/events.schema.json)."""
        self.book.observe(event)

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        self.cfg = cfg
        if tuple(cfg.events.tag_metrics_allow) != self.book.tag_keys:
            self.book.configure(tag_keys=cfg.events.tag_metrics_allow)

    def stats(self) -> wire.Kpis:
        now = datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC)
        return wire.Kpis.model_validate(self.book.snapshot(now))

    def collect(self) -> list[Metric]:
        return metrics.kpi_families(self.cfg.pool, self.book.lifetime())

    async def save(self) -> None:
        """Queue the state for the spool's writer when it changed since the last save."""
        changes = self.book.changes
        if changes == self._saved:
            return
        state = self.book.export()
        data = await asyncio.to_thread(_encode, state)
        self.spool.save_kpis(data)
        self._saved = changes

    async def _save_every(self) -> None:
        while True:
            await asyncio.sleep(units.duration_seconds(self.cfg.kpis.save_interval))
            try:
                await self.save()
            except Exception as exc:  # a failed save must not end the saving
                log.error("saving KPIs failed", extra={"error": str(exc)})

    async def stop(self) -> None:
        """Stop saving periodically and save once more (before the spool closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.save()


def _encode(state: Mapping[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()
