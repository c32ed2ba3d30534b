"""Events built from what the sender's parts know when something happens: an accepted
message, an attempt's outcome (engine), a report (feedback), an unsubscribe. Pure (no I/O):
the callers hand the events to the spool (with the write that causes them) or to the sink.

Tags are left empty here: the spool's writer fills them in from the message's stored tags
inside the transaction, so the engine never has to carry them.
"""

from __future__ import annotations

import dataclasses

from mailfleet_sender import events, hooks, spool

REPLY_TEXT_MAX = 512
"""A remote reply's text is cut here (multi-line replies can be long; consumers want the gist)."""
LOCAL_SOURCE = "local"
"""The engine's name for the pod's own address (no lease): reported as the pod's IP."""

_TYPES = {
    hooks.Verdict.DELIVERED: events.EventType.DELIVERED,
    hooks.Verdict.DEFERRED: events.EventType.DEFERRED,
    hooks.Verdict.BOUNCED: events.EventType.BOUNCED,
    hooks.Verdict.EXPIRED: events.EventType.EXPIRED,
    hooks.Verdict.SUPPRESSED: events.EventType.SUPPRESSED,
}


def reply_of(reply: hooks.Reply | None) -> events.Reply | None:
    if reply is None:
        return None
    enhanced = reply.enhanced if reply.enhanced and events.ENHANCED.match(reply.enhanced) \
        else None
    code = reply.code if 100 <= reply.code <= 999 else 451  # no readable code: a failure
    return events.Reply(code=code, text=reply.text[:REPLY_TEXT_MAX], enhanced=enhanced)


def bounce_of(
    reply: hooks.Reply | None, classification: hooks.Classification | None
) -> events.Bounce:
    """hard when the classifier says the address is bad, soft for any other final failure
    (a block, the content, a mailbox full too often, our own permanent failure)."""
    hard = classification is not None and classification.category == "hard_bounce"
    reason = classification.reason if classification is not None and classification.reason \
        else (reply.text[:REPLY_TEXT_MAX] if reply is not None else "")
    return events.Bounce(
        kind="hard" if hard else "soft",
        code=events.enhanced_code(reply_of(reply), 550),
        reason=reason,
    )


@dataclasses.dataclass(frozen=True)
class Builder:
    """Who this pod is, for every event it writes."""

    pool: str
    namespace: str | None = None
    pod_ip: str | None = None

    def _ip(self, source: str) -> str | None:
        if source == LOCAL_SOURCE:
            return self.pod_ip
        return source or None

    def accepted(self, *, class_name: str, now: float) -> events.Event:
        """The template the spool turns into one event per recipient."""
        return events.Event(
            type=events.EventType.ACCEPTED, message_id=None, recipient=None, pool=self.pool,
            namespace=self.namespace, class_name=class_name, time=now,
        )

    def outcome(
        self,
        delivery: spool.Delivery,
        verdict: hooks.Verdict,
        reply: hooks.Reply | None,
        classification: hooks.Classification | None,
        *,
        source: str,
        provider: str,
        now: float,
    ) -> events.Event:
        """What an attempt (or the queue) decided for one delivery. `delivery.attempts` counts
        the failed attempts before this one (a deferral has counted itself already)."""
        kind = _TYPES[verdict]
        attempt: int | None = None
        if kind in (events.EventType.DELIVERED, events.EventType.BOUNCED):
            attempt = delivery.attempts + 1
        elif kind is events.EventType.DEFERRED:
            attempt = max(1, delivery.attempts)
        return events.Event(
            type=kind,
            message_id=str(delivery.message),
            recipient=delivery.recipient,
            pool=self.pool,
            namespace=self.namespace,
            class_name=delivery.class_name,
            ip=self._ip(source),
            provider=provider or None,
            time=now,
            reply=None if kind is events.EventType.SUPPRESSED else reply_of(reply),
            bounce=bounce_of(reply, classification) if kind is events.EventType.BOUNCED
            else None,
            delay_s=max(0.0, now - delivery.created) if kind is events.EventType.DELIVERED
            else None,
            attempt=attempt,
        )

    def complained(
        self, *, message_id: str | None, recipient: str, class_name: str | None,
        ip: str | None, now: float,
    ) -> events.Event:
        return events.Event(
            type=events.EventType.COMPLAINED, message_id=message_id, recipient=recipient,
            pool=self.pool, namespace=self.namespace, class_name=class_name or None,
            ip=ip or None, time=now,
        )

    def reported_bounce(
        self, *, message_id: str | None, recipient: str, class_name: str | None,
        ip: str | None, hard: bool, code: str, reason: str, now: float,
    ) -> events.Event:
        """A bounce learnt from a DSN after the remote 250 (no reply of ours to quote)."""
        return events.Event(
            type=events.EventType.BOUNCED, message_id=message_id, recipient=recipient,
            pool=self.pool, namespace=self.namespace, class_name=class_name or None,
            ip=ip or None, time=now,
            bounce=events.Bounce(kind="hard" if hard else "soft", code=code,
                                 reason=reason[:REPLY_TEXT_MAX]),
        )

    def unsubscribed(
        self, *, recipient: str, class_name: str | None, now: float
    ) -> events.Event:
        """An opt-out through a link or a mailto: the token names the recipient and the list
        (pool/class), not the message."""
        return events.Event(
            type=events.EventType.UNSUBSCRIBED, message_id=None, recipient=recipient,
            pool=self.pool, namespace=self.namespace, class_name=class_name or None, time=now,
        )
