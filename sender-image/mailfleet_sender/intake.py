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


class Intake:
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
        self.cfg = cfg
        self.spool = spool_
        self.engine = engine
        self.metrics = metric_set
        self.clock = clock_
        self.hostname = hostname
        self.accepting = True
        self.events: event_publishing.Publisher | None = None
        """Writes the accepted events with each message (none when unset)."""
        self.accepted_while_draining: Callable[[], None] | None = None
        """Called after a message was stored while not accepting (an SMTP transaction begun
        before a drain and ended after it): a hand-off under way must take it too."""
        self.rewriter: Rewriter | None = None

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
            if handoff_key is not None:
                # A repeat of a hand-off stored here before the drain (its first answer was
                # lost): the sender may drop its copy, which this pod now hands on itself.
                # Anything else is refused, so the sender knows it is not stored here.
                stored = await asyncio.to_thread(self.spool.handoff_stored, handoff_key)
                if stored is not None:
                    return Queued(spool_id=stored, message_id="", recipients=len(recipients),
                                  duplicate=True)
            self.metrics.rejected.labels(via, "draining").inc()
            return DRAINING
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
        now = self.clock.wall()
        data, reserved = accepted.data, None
        if self.rewriter is not None and via != "handoff" and self.rewriter.tracks(chosen_class):
            # Tokens name the message, so its id is taken before it is stored. A hand-off was
            # rewritten where it entered the pool.
            reserved = self.spool.reserve_id()
            data = await self.rewriter.rewrite(
                data, message_id=str(reserved), class_name=chosen_class,
                recipients=[messages.normalize_address(r) for r in recipients],
                tags=chosen_tags,
            )
        new = spool.NewMessage(
            sender=sender,
            recipients=tuple(messages.normalize_address(r) for r in recipients),
            data=data,
            from_domain=accepted.from_domain,
            message_id=accepted.message_id,
            class_name=chosen_class,
            tier=chosen_tier,
            created=now,
            handoff_key=handoff_key,
            tags=chosen_tags,
            accepted=None if self.events is None or handoff_key is not None
            else self.events.builder.accepted(class_name=chosen_class, now=now),
            id=reserved,
        )
        try:
            deliveries = await self.spool.submit(new)
        except spool.SpoolError:
            log.exception("spool write failed")
            self.metrics.rejected.labels(via, "spool").inc()
            return SPOOL_FAILED
        if isinstance(deliveries, spool.Known):
            return Queued(
                spool_id=deliveries.message, message_id=accepted.message_id,
                recipients=deliveries.recipients, duplicate=True,
            )
        self.engine.add(deliveries, data=data)
        if not self.accepting and self.accepted_while_draining is not None:
            self.accepted_while_draining()
        self.metrics.accepted.labels(via, chosen_class).inc()
        self.engine.totals["accepted"] += 1
        return Queued(
            spool_id=deliveries[0].message if deliveries else 0,
            message_id=accepted.message_id,
            recipients=len(deliveries),
        )

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
