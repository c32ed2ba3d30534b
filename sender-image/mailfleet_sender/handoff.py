"""Handing a draining pod's queued mail to the other pods of its pool
(`POST /v1/drain?handoff=true`), so scaling down never strands mail on a volume nobody reads.

Exactly once, across crashes of either side:
- The local rows are first marked `handoff` in the spool, durably (`Spool.mark_handoff`):
  from then on this pod never delivers them itself, even after a restart, and a restarted
  pod resumes the hand-off on its own.
- Each message is re-submitted over HTTP (raw, with its envelope, class and tier) with an
  idempotency key derived from this pod's copy (`X-Mailfleet-Handoff`). The receiver stores
  the key in the same transaction as the message and answers a repeat with 202 without
  storing it again.
- Only after a 202 are the local rows removed. A crash before that re-submits the message,
  which the key turns into a no-op if the first attempt had landed.
- A repeat only dedups at the pod that stored the key, so each message goes to one pod chosen
  by rendezvous hashing of its key over the peer list: the same pod after a restart of either
  side, as long as it is still listed. An attempt that ended without a clear answer (timeout,
  connection dropped after sending) is retried at that pod only; another pod is chosen when
  it answered "not stored" (connection refused, 503 draining, any other refusal) or has been
  gone from the peer list for `handoff.retargetAfter`. A pod whose attempt ended unclear gets
  no other message that round (the fresh ones go to their next pod): one frozen peer costs one
  timeout per round. A draining receiver still answers a repeat it holds as a duplicate.
- The envelope travels in the body (`envelopes`), so any number of recipients fits; a peer of
  the previous version answers 415 to that and gets the old form (envelope in the query) when
  the request line stays short enough. A message every peer rejects for itself (4xx other than
  auth, rate and draining answers) for `handoff.giveUpAfter` is bounced here: its rows leave
  the spool as `bounced` with the last answer, logged and counted, and the drain can end.

Cancelling (`DELETE /v1/drain`, `finish_now`): no new re-submission starts, the ones under way
get their answer. A message whose last attempt ended without a clear answer may be stored at
that pod, so its hand-off is not cancelled: it goes on (same pod, same key) until it is settled
there, and `unclear()` names those messages. Every other message was not stored anywhere else
and goes back to the local queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from mailfleet_sender import clock, config, envelopes, metrics, spool, units, wire

log = logging.getLogger(__name__)

BATCH = 100
"""Messages read from the spool per round."""
CONCURRENCY = 4
"""Re-submissions in flight at once."""
LEGACY_MAX_QUERY = 6000
"""Longest query the old form may use: aiohttp refuses request lines over 8,190 bytes."""
NOT_THE_MESSAGE = frozenset({401, 403, 404, 408, 409, 425, 429})
"""4xx answers about the request's credentials or timing, not the message: not a rejection."""

PeersProvider = Callable[[], Awaitable[Sequence[str]]]


def handoff_key(pod: str, item: spool.HandoffItem) -> str:
    """Stable for one local copy of a message (spool ids alone repeat after deletions)."""
    seed = f"{pod}\x00{item.message}\x00{item.created!r}\x00{item.message_id}\x00{item.class_name}"
    return hashlib.sha256(seed.encode()).hexdigest()[:40]


def rank_targets(key: str, urls: Sequence[str]) -> list[str]:
    """Rendezvous hashing: every pod computes the same order for a key, and losing one
    target moves only the keys that ranked it first."""
    return sorted(urls, key=lambda url: hashlib.sha256(f"{key}\x00{url}".encode()).digest())


class Outcome:
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    """The target says it did not store the message: another target may be tried."""
    UNCLEAR = "unclear"
    """We do not know whether the target stored it: only that target may be retried."""
    REJECTED = "rejected"
    """The target read the message and refuses it (not stored): another target may be tried,
    and if every one rejects it for `giveUpAfter`, it is bounced."""


@dataclasses.dataclass
class _Sticky:
    url: str
    absent_since: float | None = None


class HandOff:
    """Runs the hand-off to completion; `status()` for /v1/stats."""

    def __init__(
        self,
        *,
        spool_: spool.Spool,
        peers: PeersProvider,
        self_urls: Sequence[str],
        api_key: str | Callable[[], str | None] | None,
        pod: str,
        cfg: config.Handoff,
        metric_set: metrics.Metrics,
        clock_: clock.Clock,
        carry: tuple[dict[str, _Sticky], dict[str, int]] | None = None,
    ) -> None:
        self.spool = spool_
        self._peers = peers
        self._self = {u.rstrip("/") for u in self_urls}
        self._api_key: Callable[[], str | None] = (
            api_key if callable(api_key) else (lambda: api_key)  # type: ignore[misc]
        )
        self.pod = pod
        self.cfg = cfg
        self.metrics = metric_set
        self.clock = clock_
        self.state: str = "idle"
        self.handed_off = 0
        self.duplicates = 0
        self.failures = 0
        self.bounced = 0
        self.last_error: str | None = None
        self._rejected_since: dict[str, float] = {}
        """handoff key -> when every target first rejected it (monotonic)."""
        sticky, unclear = carry if carry is not None else ({}, {})
        self._sticky: dict[str, _Sticky] = dict(sticky)
        self._unclear: dict[str, int] = dict(unclear)
        """handoff key -> local message id of attempts that ended unclear."""
        self._silent: set[str] = set()
        """Targets whose attempt this round got no clear answer (timed out, dropped): the
        round's other messages are not sent there, so one frozen pod costs one timeout per
        round, not one per message, and fresh messages go to the next pod in their order."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()

    def status(self) -> wire.HandoffStats:
        pending = self.spool.count_handoff() if self.state == "running" else 0
        return wire.HandoffStats(
            state=self.state,  # type: ignore[arg-type]
            pending=pending,
            handed_off=self.handed_off,
            duplicates=self.duplicates,
            failures=self.failures,
            bounced=self.bounced,
            last_error=self.last_error,
        )

    def start(self) -> None:
        if self._task is None:
            self.state = "running"
            self._task = asyncio.create_task(self.run(), name="handoff")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def finish_now(self) -> None:
        """Stop gracefully: no new re-submission starts, those under way get their answer
        (each within `handoff.timeout`), then the run ends. See `unclear()`."""
        self._stopping = True
        self._stop_event.set()
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                if not self._task.done():
                    raise
            self._task = None
        if self.state == "running":
            self.state = "idle"

    def unclear(self) -> list[int]:
        """Local message ids whose hand-off ended without a clear answer and is unsettled."""
        return sorted(set(self._unclear.values()))

    def carry(self) -> tuple[dict[str, _Sticky], dict[str, int]]:
        """Where unsettled messages must be retried, for the next runner."""
        return dict(self._sticky), dict(self._unclear)

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def run(self) -> None:
        self.state = "running"
        timeout = aiohttp.ClientTimeout(total=units.duration_seconds(self.cfg.timeout))
        pause = units.duration_seconds(self.cfg.retry_every)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stopping:
                items = await asyncio.to_thread(self.spool.load_handoff, BATCH)
                if not items:
                    break
                targets = await self._targets()
                if not targets:
                    self.last_error = "no other pod to hand off to"
                    await self._pause(pause)
                    continue
                self._silent = set()
                gate = asyncio.Semaphore(CONCURRENCY)
                results = await asyncio.gather(
                    *(self._gated(gate, http, item, targets) for item in items)
                )
                if not all(results):
                    await self._pause(pause)
        if self._stopping:
            self.state = "idle"
            log.info("hand-off stopped", extra={"handed_off": self.handed_off,
                                                "unsettled": len(self._unclear)})
            return
        self.state = "done"
        log.info("hand-off complete", extra={"handed_off": self.handed_off,
                                             "duplicates": self.duplicates})

    async def _gated(
        self,
        gate: asyncio.Semaphore,
        http: aiohttp.ClientSession,
        item: spool.HandoffItem,
        targets: list[str],
    ) -> bool:
        async with gate:
            if self._stopping:
                return False
            return await self._hand_off(http, item, targets)

    async def _pause(self, seconds: float) -> None:
        """Wait before the next round, but not past a stop request."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)

    async def _targets(self) -> list[str]:
        try:
            urls = await self._peers()
        except Exception as exc:  # discovery trouble: try again next round
            self.last_error = f"peer discovery failed: {exc!r}"
            return []
        return [u.rstrip("/") for u in urls if u.rstrip("/") not in self._self]

    def _choose(self, key: str, targets: list[str], skip: set[str]) -> str | None:
        sticky = self._sticky.get(key)
        now = self.clock.monotonic()
        if sticky is not None:
            if sticky.url in targets:
                sticky.absent_since = None
                return sticky.url
            if sticky.absent_since is None:
                sticky.absent_since = now
            if now - sticky.absent_since < units.duration_seconds(self.cfg.retarget_after):
                return None  # wait for it to come back rather than risk a double
            del self._sticky[key]
        for url in rank_targets(key, targets):
            if url not in skip:
                return url
        return None

    async def _hand_off(
        self, http: aiohttp.ClientSession, item: spool.HandoffItem, targets: list[str]
    ) -> bool:
        """One message; True when it is done (accepted somewhere and removed here)."""
        key = handoff_key(self.pod, item)
        refused: set[str] = set()
        every_one_rejected = True
        answer = ""
        while True:
            url = self._choose(key, targets, refused | self._silent)
            if url is None or url in self._silent:
                # Nobody left to try this round (or the pod that may hold it is silent).
                if url is None and refused and every_one_rejected and not (
                    self._silent & set(targets)
                ):
                    return await self._rejected_everywhere(key, item, answer)
                self.failures += 1
                self.metrics.handoff.labels("failed").inc()
                return False
            outcome, detail = await self._submit(http, url, key, item)
            every_one_rejected = every_one_rejected and outcome == Outcome.REJECTED
            if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
                await self.spool.finish_handoff(item)
                self._sticky.pop(key, None)
                self._unclear.pop(key, None)
                self._rejected_since.pop(key, None)
                self.handed_off += 1
                if outcome == Outcome.DUPLICATE:
                    self.duplicates += 1
                self.metrics.handoff.labels(outcome).inc()
                return True
            self.last_error = answer = f"{url}: {detail}"
            if outcome in (Outcome.REFUSED, Outcome.REJECTED) and key in self._sticky:
                # The pod that may hold it refuses for now (e.g. draining, before it looks
                # at the key): try it again later rather than elsewhere (no double).
                self.failures += 1
                self.metrics.handoff.labels("failed").inc()
                return False
            if outcome == Outcome.UNCLEAR:
                self._silent.add(url)
                self._sticky[key] = _Sticky(url)
                self._unclear[key] = item.message
                self.failures += 1
                self.metrics.handoff.labels("failed").inc()
                log.info("hand-off unclear; will retry the same pod",
                         extra={"target": url, "detail": detail})
                return False
            refused.add(url)

    async def _rejected_everywhere(self, key: str, item: spool.HandoffItem, answer: str
                                   ) -> bool:
        """Every target rejected the message this round: wait `giveUpAfter`, then bounce it
        (True: the message is settled here)."""
        now = self.clock.monotonic()
        since = self._rejected_since.setdefault(key, now)
        if now - since < units.duration_seconds(self.cfg.give_up_after):
            self.failures += 1
            self.metrics.handoff.labels("failed").inc()
            return False
        reason = f"hand-off rejected by every pod; last: {answer}"[:500]
        self.spool.update(
            [spool.Update(did, item.message, "bounced", 0, 0.0, reason)
             for did, _ in item.deliveries]
        )
        await self.spool.flush()
        self._rejected_since.pop(key, None)
        self.bounced += len(item.deliveries)
        self.metrics.handoff.labels("bounced").inc()
        log.warning("hand-off gave up: message bounced",
                    extra={"message_id": item.message_id, "recipients": len(item.deliveries),
                           "answer": answer})
        return True

    def _headers(self, key: str, content_type: str) -> dict[str, str]:
        """Per request: the key follows the target (the pool's peers, or another pool)."""
        headers = {"Content-Type": content_type, "X-Mailfleet-Handoff": key}
        api_key = self._api_key()
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    async def _submit(
        self, http: aiohttp.ClientSession, url: str, key: str, item: spool.HandoffItem
    ) -> tuple[str, str]:
        envelope = envelopes.Envelope(
            sender=item.sender,
            recipients=tuple(rcpt for _, rcpt in item.deliveries),
            class_name=item.class_name,
            tier=item.tier,
            tags=item.tags,
        )
        outcome = await self._post(
            http, url, data=envelopes.encode(envelope, item.data), params=(),
            headers=self._headers(key, envelopes.CONTENT_TYPE),
        )
        if outcome != (Outcome.REFUSED, "HTTP 415"):
            return outcome
        # A peer of the previous version: the envelope goes in the query if it fits there.
        params: list[tuple[str, str]] = [("to", rcpt) for rcpt in envelope.recipients]
        params += [("from", item.sender), ("class", item.class_name)]
        if item.tier:
            params.append(("tier", item.tier))
        if len(urllib.parse.urlencode(params)) > LEGACY_MAX_QUERY:
            return Outcome.REFUSED, "HTTP 415 and too many recipients for the old form"
        return await self._post(http, url, data=item.data, params=params,
                                headers=self._headers(key, "message/rfc822"))

    async def _post(
        self,
        http: aiohttp.ClientSession,
        url: str,
        *,
        data: bytes,
        params: Sequence[tuple[str, str]],
        headers: dict[str, str],
    ) -> tuple[str, str]:
        sent = False
        try:
            async with http.post(
                f"{url}/v1/messages", params=params, data=data, headers=headers
            ) as response:
                sent = True
                text = await response.text()
                if response.status == 415:
                    return Outcome.REFUSED, "HTTP 415"
                if response.status == 202:
                    try:
                        duplicate = wire.SubmitResponse.model_validate_json(text).duplicate
                    except ValueError:
                        duplicate = False
                    return (Outcome.DUPLICATE if duplicate else Outcome.ACCEPTED), ""
                if response.status >= 500 and response.status != 503:
                    return Outcome.UNCLEAR, f"HTTP {response.status}: {text[:200]}"
                # Refusals (4xx, 503 draining or spool failure) come before anything is stored.
                detail = f"HTTP {response.status}: {text[:200]}"
                if 400 <= response.status < 500 and response.status not in NOT_THE_MESSAGE:
                    return Outcome.REJECTED, detail
                return Outcome.REFUSED, detail
        except aiohttp.ClientConnectorError as exc:
            return Outcome.REFUSED, f"cannot connect: {exc}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The request may have been stored before the reply was lost.
            return Outcome.UNCLEAR, f"{'no reply' if not sent else 'reply lost'}: {exc!r}"
