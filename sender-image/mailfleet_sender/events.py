"""The delivery event: what a sender tells applications about each message and recipient.
Pure (no I/O): the format, its JSON form and the sink protocol; `docs/events.schema.json` is
the same format as a JSON Schema (tests validate every type against it) and `docs/events.md`
tells the story.

One event is one fact about one message (most about one recipient): it was accepted,
delivered, deferred, bounced, expired, suppressed; later a recipient complained, unsubscribed,
opened or clicked. Every event carries the message's spool id (the id `POST /v1/messages`
answers), the application's tags, and the pool, class, source IP and provider it concerns, so a
consumer can aggregate without a second lookup.

Why frozen dataclasses and not pydantic models: events are built on the delivery hot path
(one per attempt), and `to_json` is all the serialisation they need.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol

SCHEMA = "mailfleet.io/event/v1"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ENHANCED = re.compile(r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}$")
"""An RFC 3463 status code, as the schema's `bounce.code` and `reply.enhanced` want it."""


class EventType(enum.StrEnum):
    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    SUPPRESSED = "suppressed"
    OPENED = "opened"
    CLICKED = "clicked"
    EXPIRED = "expired"


@dataclasses.dataclass(frozen=True)
class Reply:
    """The remote MTA's answer (or our own, for a local failure such as a DNS error)."""

    code: int
    text: str
    enhanced: str | None = None


@dataclasses.dataclass(frozen=True)
class Bounce:
    """Why a recipient bounced: `hard` (the address is bad: suppressed) or `soft` (this
    message failed: block, content, mailbox full...), the RFC 3463 code and the classifier's
    reason (which rule decided)."""

    kind: Literal["hard", "soft"]
    code: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Event:
    """One event; `to_json()` is its wire form (docs/events.schema.json)."""

    type: EventType
    message_id: str | None
    recipient: str | None
    pool: str
    time: float = dataclasses.field(default_factory=time.time)
    """Unix seconds (wall clock)."""
    id: str = dataclasses.field(default_factory=lambda: new_event_id())
    namespace: str | None = None
    class_name: str | None = None
    ip: str | None = None
    provider: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reply: Reply | None = None
    bounce: Bounce | None = None
    url: str | None = None
    machine: bool | None = None
    delay_s: float | None = None
    attempt: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Every key is present (null when it does not apply), in a stable order."""
        return {
            "schema": SCHEMA,
            "id": self.id,
            "type": self.type.value,
            "time": format_time(self.time),
            "message_id": self.message_id,
            "recipient": self.recipient,
            "pool": self.pool,
            "namespace": self.namespace,
            "class": self.class_name,
            "ip": self.ip,
            "provider": self.provider,
            "tags": dict(self.tags),
            "reply": None if self.reply is None else {
                "code": self.reply.code, "enhanced": self.reply.enhanced, "text": self.reply.text,
            },
            "bounce": None if self.bounce is None else {
                "kind": self.bounce.kind, "code": self.bounce.code, "reason": self.bounce.reason,
            },
            "url": self.url,
            "machine": self.machine,
            "delay_s": None if self.delay_s is None else round(self.delay_s, 3),
            "attempt": self.attempt,
        }


class EventSink(Protocol):
    """Where events go. `record` is synchronous and does not block: the event is written
    to the spool's outbox by its writer thread (durable once that commits)."""

    def record(self, event: Event) -> None: ...


def dumps(event: Mapping[str, Any]) -> str:
    """The one-line JSON form (stdout, outbox rows, webhook batches)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def format_time(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds: `2026-12-05T10:11:12.345Z`."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_event_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base32 characters,
    so ids sort by creation time (to the millisecond) and never repeat in practice."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def enhanced_code(reply: Reply | None, fallback_code: int) -> str:
    """The RFC 3463 code of a reply, or the generic one of its class (5.0.0 / 4.0.0)."""
    if reply is not None and reply.enhanced and ENHANCED.match(reply.enhanced):
        return reply.enhanced
    code = reply.code if reply is not None else fallback_code
    return f"{code // 100}.0.0" if code // 100 in (2, 4, 5) else "5.0.0"


def from_json(obj: Mapping[str, Any]) -> Event:
    """An event back from its wire form (`to_json`): for parts that build events as plain
    objects (tracking) and hand them to the outbox."""
    reply, bounce = obj.get("reply"), obj.get("bounce")
    stamp = datetime.datetime.fromisoformat(str(obj["time"]).replace("Z", "+00:00"))
    return Event(
        type=EventType(str(obj["type"])),
        message_id=obj.get("message_id"),
        recipient=obj.get("recipient"),
        pool=str(obj.get("pool") or ""),
        time=stamp.timestamp(),
        id=str(obj.get("id") or new_event_id()),
        namespace=obj.get("namespace"),
        class_name=obj.get("class"),
        ip=obj.get("ip"),
        provider=obj.get("provider"),
        tags=dict(obj.get("tags") or {}),
        reply=None if not reply else Reply(code=int(reply["code"]), text=str(reply["text"]),
                                           enhanced=reply.get("enhanced")),
        bounce=None if not bounce else Bounce(kind=bounce["kind"], code=str(bounce["code"]),
                                              reason=str(bounce["reason"])),
        url=obj.get("url"),
        machine=obj.get("machine"),
        delay_s=obj.get("delay_s"),
        attempt=obj.get("attempt"),
    )


class JsonSink:
    """Takes events as wire-form objects (`tracking.EventSink`) into an `EventSink`."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink

    def record(self, event: Mapping[str, object]) -> None:
        self.sink.record(from_json(event))
