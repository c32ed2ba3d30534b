"""Delivering the event outbox to one webhook: batches in outbox order, signed, retried with
backoff, dropped (counted, logged) once too old. One task per webhook.

- Order: the webhook reads rows after its cursor, in `seq` order, one batch at a time; a batch
  that fails is tried again whole and nothing after it is sent meanwhile, so the events of a
  message arrive in the order they happened (per-message order; the whole stream is ordered).
- At least once: the cursor moves (durably, in the spool) only after a 2xx. A pod killed
  between the answer and that write sends the batch again after its restart; receivers
  de-duplicate on the event `id`.
- Batching: a batch goes when it holds `batchMax` events, or `flushInterval` after the first
  of them was written, whichever comes first.
- Retries: after a failure (no answer, timeout, non-2xx), wait `retryFirst`, doubling up to
  `retryMax` (`backoff_delay`). Events written more than `retryFor` ago that still fail are
  dropped: counted in `mailfleet_sender_events_dropped_total{webhook}`, logged, shown as
  `events.webhooks[name].dropped` in /v1/stats; the cursor moves past them.
- The signing key is read from its file for every request (a rotated Secret is used at once);
  without a readable key nothing is sent (never unsigned): that counts as a failure.
- Logs and `lastError` name the webhook, never its URL (it may carry a credential).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import sqlite3
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from mailfleet_sender import event_config, outbox, spool, units, webhook_signing

log = logging.getLogger(__name__)
T = TypeVar("T")

COUNT_EVERY = 1.0
"""Seconds between counts of the events waiting for a webhook (a scan of its backlog)."""
USER_AGENT = "mailfleet-sender"
DROP_LOG_EVERY = 60.0
"""Seconds between warnings about dropped events (a long outage drops many batches)."""


def backoff_delay(failures: int, *, first: float, maximum: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row: first, 2x, 4x... capped."""
    if failures <= 0:
        return 0.0
    return float(min(first * 2 ** min(failures - 1, 62), maximum))


def batch_body(rows: tuple[outbox.Row, ...]) -> bytes:
    """`{"events": [...]}` from the stored lines (already JSON: joined, not re-encoded)."""
    return ('{"events":[' + ",".join(r.body for r in rows) + "]}").encode("utf-8")


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system store, plus `ca_file` when given (e.g. the sandbox's CA)."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


@dataclasses.dataclass
class Figures:
    """What /v1/stats shows for one webhook (since the process started, pending now)."""

    pending: int = 0
    delivered: int = 0
    dropped: int = 0
    last_error: str | None = None


class SendFailed(Exception):
    """One POST did not get a 2xx; the text is safe to log and show (no URL, no key)."""


class Runner:
    """The delivery loop of one webhook. `wall`: Unix seconds (injectable)."""

    def __init__(
        self,
        cfg: event_config.Webhook,
        *,
        spool_: spool.Spool,
        wall: Callable[[], float],
        on_delivered: Callable[[str, int], None],
        on_dropped: Callable[[str, int], None],
    ) -> None:
        self.cfg = cfg
        self.spool = spool_
        self.wall = wall
        self.on_delivered = on_delivered
        self.on_dropped = on_dropped
        self.figures = Figures()
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._db: sqlite3.Connection | None = None
        self._reads = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"webhook-{cfg.name}")
        """The reader connection is used (and closed) on this one thread only: a stop never
        closes it under a read still running."""
        self._cursor = 0
        self._counted_at = float("-inf")
        self._http: aiohttp.ClientSession | None = None
        self._logged_at = float("-inf")
        self._unlogged = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"webhook-{self.name}")

    def wake(self) -> None:
        """New events were committed."""
        self._wake.set()

    def reconfigure(self, cfg: event_config.Webhook) -> None:
        """Same name, new settings: used from the next request on."""
        if cfg.ca_file != self.cfg.ca_file and self._http is not None:
            http, self._http = self._http, None
            asyncio.get_running_loop().create_task(http.close())
        self.cfg = cfg
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        db, self._db = self._db, None
        if db is not None:
            await self._read_thread(db.close)
        self._reads.shutdown(wait=False)

    # --- the loop ---------------------------------------------------------------------------

    async def _read_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reads, lambda: fn(*args, **kwargs))

    async def _run(self) -> None:
        self._db = await self._read_thread(self.spool.reader)
        cursors = await self._read_thread(outbox.load_cursors, self._db)
        self._cursor = cursors.get(self.name, 0)
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a bad row or a spool hiccup
                log.exception("webhook loop failed; going on", extra={"webhook": self.name})
                await asyncio.sleep(units.duration_seconds(self.cfg.retry_first))

    async def _read(self) -> outbox.Batch:
        assert self._db is not None
        db, cfg = self._db, self.cfg
        batch = await self._read_thread(
            outbox.read_batch, db, cursor=self._cursor,
            types=[t.value for t in cfg.types], limit=cfg.batch_max,
        )
        now = self.wall()
        if len(batch.rows) < cfg.batch_max:
            self.figures.pending = len(batch.rows)
        elif now - self._counted_at >= COUNT_EVERY:
            self._counted_at = now
            self.figures.pending = await self._read_thread(
                outbox.count_after, db, cursor=self._cursor, types=[t.value for t in cfg.types]
            )
        return batch

    async def _step(self) -> None:
        cfg = self.cfg
        self._wake.clear()
        batch = await self._read()
        if not batch.rows:
            if batch.scanned > self._cursor:  # only other webhooks' types: not ours to hold
                await self._advance(batch.scanned)
            await self._sleep(units.duration_seconds(cfg.flush_interval))
            return
        if self.failures and await self._drop_expired(batch.rows, self.figures.last_error):
            return  # while the webhook fails, what is too old goes without another try
        due = batch.rows[0].created + units.duration_seconds(cfg.flush_interval)
        if len(batch.rows) < cfg.batch_max and due > self.wall():
            await self._sleep(due - self.wall())  # more may come; a commit wakes us to look
            if self._wake.is_set():
                return
        try:
            await self._post(batch.rows)
        except SendFailed as failure:
            self.failures += 1
            self.figures.last_error = str(failure)
            log.info("webhook delivery failed; will retry",
                     extra={"webhook": self.name, "error": str(failure),
                            "failures": self.failures, "events": len(batch.rows)})
            await self._drop_expired(batch.rows, str(failure))
            await self._sleep(backoff_delay(
                self.failures, first=units.duration_seconds(cfg.retry_first),
                maximum=units.duration_seconds(cfg.retry_max),
            ), wakeable=False)
            return
        self.failures = 0
        self.figures.delivered += len(batch.rows)
        self.figures.pending = max(0, self.figures.pending - len(batch.rows))
        self.on_delivered(self.name, len(batch.rows))
        await self._advance(batch.scanned)

    async def _drop_expired(self, rows: tuple[outbox.Row, ...], error: str | None) -> int:
        """Drop the leading events written more than retryFor ago; how many."""
        limit = self.wall() - units.duration_seconds(self.cfg.retry_for)
        expired = [r for r in rows if r.created <= limit]
        if not expired:
            return 0
        last = expired[-1].seq
        dropped = sum(1 for r in rows if r.seq <= last)
        self.figures.dropped += dropped
        self.figures.pending = max(0, self.figures.pending - dropped)
        self.on_dropped(self.name, dropped)
        self._unlogged += dropped
        if self.wall() - self._logged_at >= DROP_LOG_EVERY:
            log.warning("webhook events dropped: not delivered within retryFor",
                        extra={"webhook": self.name, "dropped": self._unlogged,
                               "retry_for": self.cfg.retry_for, "error": error})
            self._logged_at, self._unlogged = self.wall(), 0
        await self._advance(last)
        return dropped

    async def _advance(self, seq: int) -> None:
        self._cursor = max(self._cursor, seq)
        await self._persist(seq)

    async def _persist(self, seq: int) -> None:
        """The cursor on disk; a failed write only means a resend after a restart."""
        name = self.name
        try:
            await self.spool.in_writer(lambda db: outbox.advance(db, name, seq))
        except spool.SpoolError as exc:
            log.warning("webhook cursor not saved; events may be sent again after a restart",
                        extra={"webhook": name, "error": str(exc)})

    async def _sleep(self, seconds: float, *, wakeable: bool = True) -> None:
        if seconds <= 0:
            return
        if not wakeable:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    # --- one request ------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(ssl=ssl_context(self.cfg.ca_file))
            self._http = aiohttp.ClientSession(connector=connector)
        return self._http

    async def _post(self, rows: tuple[outbox.Row, ...]) -> None:
        cfg = self.cfg
        try:
            key = (await asyncio.to_thread(Path(cfg.signing_key_file).read_bytes)).strip()
        except OSError as exc:
            raise SendFailed(f"signing key unreadable ({exc.strerror or type(exc).__name__})") \
                from None
        if not key:
            raise SendFailed("signing key file is empty")
        body = batch_body(rows)
        timestamp = str(int(self.wall()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            webhook_signing.TIMESTAMP_HEADER: timestamp,
            webhook_signing.SIGNATURE_HEADER: webhook_signing.signature(key, timestamp, body),
            webhook_signing.WEBHOOK_HEADER: cfg.name,
        }
        timeout = aiohttp.ClientTimeout(total=units.duration_seconds(cfg.timeout))
        try:
            async with self._session().post(cfg.url, data=body, headers=headers,
                                            timeout=timeout, allow_redirects=False) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    raise SendFailed(f"HTTP {response.status}")
        except SendFailed:
            raise
        except TimeoutError:
            raise SendFailed("timeout") from None
        except (aiohttp.ClientError, OSError, ValueError, ssl.SSLError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else ""
            raise SendFailed(f"{type(exc).__name__}{': ' + detail if detail else ''}") from None
