"""Accepting a message, whichever protocol brought it: validate (`messages`), pick its class
and tier, write it durably to the spool, hand it to the engine. Both submission protocols call
`Intake.submit` and only render the verdict, so SMTP and HTTP accept exactly the same mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from mailfleet_sender import clock, config, dispatching, event_publishing, messages, metrics, spool
from mailfleet_sender import tags as tags_module

log = logging.getLogger(__name__)

DRAINING = messages.Rejection(421, "4.3.2", "Service is draining, try another instance", 503)
SPOOL_FAILED = messages.Rejection(451, "4.3.0", "Temporary local problem, try again later", 503)
NO_RECIPIENTS = messages.Rejection(554, "5.5.1", "No valid recipients")
TOO_MANY_RECIPIENTS = messages.Rejection(452, "4.5.3", "Too many recipients", 400)


class Rewriter(Protocol):
    """Changes a message before it is stored (open and click tracking, `tracking`): it is
    then signed at delivery with its changes."""

    def tracks(self, class_name: str) -> bool: ...

    async def rewrite(
        self, data: bytes, *, message_id: str, class_name: str, recipients: Sequence[str],
        tags: Mapping[str, str],
    ) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Queued:
    """The message is on disk: what the client is told."""

    spool_id: int
    message_id: str
    recipients: int
    duplicate: bool = False
    """A hand-off already stored under the same key: nothing new was written."""


class Follower(Protocol):
    """Other processes that take submissions for this one (`intake_workers`): they must
    refuse mail exactly when this intake does."""

    def accepting_changed(self, accepting: bool) -> None: ...

    async def in_step(self) -> None: ...


class Intake:
    """The checks both protocols call (`submit`); where an accepted message goes is the
    subclass's (`store`): the spool here (`SpoolIntake`), the main process in an intake
    worker (`intake_worker`)."""

    def __init__(
        self,
        *,
        cfg: config.SenderConfig,
        metric_set: metrics.Metrics,
        clock_: clock.Clock,
        hostname: str,
    ) -> None:
        self.cfg = cfg
        self.metrics = metric_set
        self.clock = clock_
        self.hostname = hostname
        self._accepting = True
        self.follower: Follower | None = None

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        changed = value != self._accepting
        self._accepting = value
        if changed and self.follower is not None:
            self.follower.accepting_changed(value)

    async def in_step(self) -> None:
        """Return once every process taking submissions for this one refuses or accepts
        mail as this one does (at once when there is none)."""
        if self.follower is not None:
            await self.follower.in_step()

    async def handoff_stored(self, key: str) -> int | None:
        """The message a hand-off key was stored as (None: not stored here)."""
        raise NotImplementedError

    async def store(
        self, new: spool.NewMessage, *, via: str, started: bool
    ) -> Queued | messages.Rejection:
        """Put an accepted message on disk; the answer is known only once it is there."""
        raise NotImplementedError

    @property
    def limits(self) -> messages.Limits:
        s = self.cfg.submission
        return messages.Limits(
            max_message_bytes=s.max_message_size,
            max_header_bytes=s.max_header_size,
            max_recipients=s.max_recipients,
        )

    def check_recipient(self, address: str, count_so_far: int) -> messages.Rejection | None:
        """RCPT-time check (SMTP) and per-recipient check (HTTP)."""
        if count_so_far >= self.cfg.submission.max_recipients:
            return TOO_MANY_RECIPIENTS
        if not messages.is_address(address):
            return messages.Rejection(553, "5.1.3", f"Bad recipient address syntax: {address!r}")
        return None

    def check_class(self, class_name: str | None, tier: str | None) -> messages.Rejection | None:
        if class_name is not None and self.cfg.class_named(class_name) is None:
            return messages.Rejection(550, "5.7.1", f"Unknown message class {class_name!r}")
        if tier is not None and not messages.is_token(tier):
            return messages.Rejection(550, "5.7.1", "Engagement tier must be a short token")
        return None

    async def submit(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        via: str,
        class_name: str | None = None,
        tier: str | None = None,
        started: bool = False,
        handoff_key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Queued | messages.Rejection:
        """Validate and spool one message; the result is known only once it is on disk.
        `started`: an SMTP transaction begun before draining started is allowed to finish.
        `handoff_key`: idempotency key of a message another pod hands off (stored with it;
        no accepted event: the pod it was submitted to wrote that). `tags`: the JSON form's,
        merged with the `X-Mailfleet-Tags` header's (a key in both is refused); tracking
        tokens carry them."""
        if not self.accepting and not started:
            return await self._refuse_draining(handoff_key, len(recipients), via)
        verdict = self._check(sender, recipients, data, class_name, tier)
        if isinstance(verdict, messages.Rejection):
            self.metrics.rejected.labels(via, verdict.enhanced).inc()
            return verdict
        accepted, chosen_class, chosen_tier = verdict
        try:
            chosen_tags = tags_module.merge(
                tags or {}, tags_module.parse_header(accepted.tags_header)
            )
        except tags_module.TagError as exc:
            self.metrics.rejected.labels(via, "tags").inc()
            return messages.Rejection(550, "5.6.0", f"Bad tags: {exc}")
        new = spool.NewMessage(
            sender=sender,
            recipients=tuple(messages.normalize_address(r) for r in recipients),
            data=accepted.data,
            from_domain=accepted.from_domain,
            message_id=accepted.message_id,
            class_name=chosen_class,
            tier=chosen_tier,
            created=self.clock.wall(),
            handoff_key=handoff_key,
            tags=chosen_tags,
        )
        return await self.store(new, via=via, started=started)

    async def _refuse_draining(
        self, handoff_key: str | None, recipients: int, via: str
    ) -> Queued | messages.Rejection:
        if handoff_key is not None:
            # A repeat of a hand-off stored here before the drain (its first answer was
            # lost): the sender may drop its copy, which this pod now hands on itself.
            # Anything else is refused, so the sender knows it is not stored here.
            stored = await self.handoff_stored(handoff_key)
            if stored is not None:
                return Queued(spool_id=stored, message_id="", recipients=recipients,
                              duplicate=True)
        self.metrics.rejected.labels(via, "draining").inc()
        return DRAINING

    def _check(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        class_name: str | None,
        tier: str | None,
    ) -> tuple[messages.Accepted, str, str | None] | messages.Rejection:
        if not recipients:
            return NO_RECIPIENTS
        if len(recipients) > self.cfg.submission.max_recipients:
            return TOO_MANY_RECIPIENTS
        for address in recipients:
            if not messages.is_address(address):
                return messages.Rejection(
                    553, "5.1.3", f"Bad recipient address syntax: {address!r}"
                )
        if sender and not messages.is_address(sender):
            return messages.Rejection(553, "5.1.7", f"Bad sender address syntax: {sender!r}")
        verdict = messages.check_message(
            data, limits=self.limits, now=self.clock.wall(), hostname=self.hostname
        )
        if isinstance(verdict, messages.Rejection):
            return verdict
        chosen_class = class_name or verdict.class_name or self.cfg.default_class
        chosen_tier = tier or verdict.tier
        problem = self.check_class(chosen_class, chosen_tier)
        if problem is not None:
            return problem
        return verdict, chosen_class, chosen_tier


class SpoolIntake(Intake):
    """The main process's intake: accepted mail goes to the spool and the engine."""

    def __init__(
        self,
        *,
        cfg: config.SenderConfig,
        spool_: spool.Spool,
        engine: dispatching.Engine,
        metric_set: metrics.Metrics,
        clock_: clock.Clock,
        hostname: str,
    ) -> None:
        super().__init__(cfg=cfg, metric_set=metric_set, clock_=clock_, hostname=hostname)
        self.spool = spool_
        self.engine = engine
        self.accepted_while_draining: Callable[[], None] | None = None
        """Called after a message was stored while not accepting (an SMTP transaction begun
        before a drain and ended after it): a hand-off under way must take it too."""
        self.events: event_publishing.Publisher | None = None
        """Writes the accepted events with each message (none when unset)."""
        self.rewriter: Rewriter | None = None
        """Open and click tracking: rewrites a tracked class's message before it is stored."""

    async def handoff_stored(self, key: str) -> int | None:
        return await asyncio.to_thread(self.spool.handoff_stored, key)

    async def store(
        self, new: spool.NewMessage, *, via: str, started: bool
    ) -> Queued | messages.Rejection:
        """Also what an intake worker's message comes to: this process's drain state is the
        one that counts (a worker's copy may be a moment behind)."""
        if not self.accepting and not started:
            return await self._refuse_draining(new.handoff_key, len(new.recipients), via)
        new = await self._prepared(new, via)
        try:
            deliveries = await self.spool.submit(new)
        except spool.SpoolError:
            log.exception("spool write failed")
            self.metrics.rejected.labels(via, "spool").inc()
            return SPOOL_FAILED
        if isinstance(deliveries, spool.Known):
            return Queued(
                spool_id=deliveries.message, message_id=new.message_id,
                recipients=deliveries.recipients, duplicate=True,
            )
        self.engine.add(deliveries, data=new.data)
        if not self.accepting and self.accepted_while_draining is not None:
            self.accepted_while_draining()
        self.metrics.accepted.labels(via, new.class_name).inc()
        self.engine.totals["accepted"] += 1
        return Queued(
            spool_id=deliveries[0].message if deliveries else 0,
            message_id=new.message_id,
            recipients=len(deliveries),
        )

    async def _prepared(self, new: spool.NewMessage, via: str) -> spool.NewMessage:
        """What only the main process can add: the accepted event (not for a hand-off, the
        pod it was submitted to wrote that) and tracking, whose tokens name the message, so
        its id is reserved before it is stored (a hand-off was rewritten where it entered)."""
        accepted = None if self.events is None or new.handoff_key is not None else (
            self.events.builder.accepted(class_name=new.class_name, now=new.created))
        data, reserved = new.data, None
        if (self.rewriter is not None and via != "handoff"
                and self.rewriter.tracks(new.class_name)):
            reserved = self.spool.reserve_id()
            data = await self.rewriter.rewrite(
                data, message_id=str(reserved), class_name=new.class_name,
                recipients=list(new.recipients), tags=new.tags,
            )
        return dataclasses.replace(new, data=data, accepted=accepted, id=reserved)
