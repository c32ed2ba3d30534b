"""Plug points between the delivery core and the deliverability layer (bounce classification,
suppression, reactive shaping, List-Unsubscribe). Pure: types and trivial defaults, no I/O.

The core asks these questions and reports one thing (`deliverability.py` answers them all):
- `classify(reply, recipient)`: is this remote answer a defer or a bounce (and which kind)? The
  default reads the code only (5xx bounce, 4xx defer).
- `is_suppressed(recipient, class)`: may this recipient get mail at all? Asked when mail is
  routed and again just before the attempt; the default says no one is suppressed.
- `prepare(message, context)`: last chance to add headers before DKIM signing (RFC 8058
  List-Unsubscribe for bulk classes, which must be signed); the default changes nothing.
- `stamp(signed, context)`: headers added after signing, left out of the signature on purpose
  (the sealed trace header: per recipient, so signing it would cost a signature per copy).
- `return_path(context)`: the envelope sender of one copy (VERP), None to keep the submitted one.
- `hold_reason(class)`: why mail of this class must wait now (kept, not sent), None to go on;
  the default never holds.
- `pace(provider)`: a multiplier of the provider's rate (reactive shaping); 0 holds it back.
- `observe(outcome)`: every attempt's result, for shaping, suppression and rates.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"


@dataclasses.dataclass(frozen=True)
class Reply:
    """A remote (or local: DNS, connect) answer to one delivery attempt."""

    code: int
    text: str
    stage: str = "rcpt"
    """connect, ehlo, starttls, mail, rcpt, data, dns, local."""
    enhanced: str | None = None
    mx_host: str | None = None
    provider: str | None = None
    """The sender's name of the receiving provider (throttles.providers), when known."""

    def __str__(self) -> str:
        middle = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{middle} {self.text}".strip()


@dataclasses.dataclass(frozen=True)
class Classification:
    """How the core treats a non-2xx reply: retry later, or give up now."""

    verdict: Verdict
    category: str = ""
    """The kind (bounces.Category values: hard_bounce, soft_bounce, blocked, throttled...)."""
    reason: str = ""
    """Which rule decided, for logs."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one attempt for one recipient (what `observe` receives)."""

    delivery_id: int
    recipient: str
    domain: str
    class_name: str
    source_ip: str
    provider: str
    verdict: Verdict
    reply: Reply | None
    classification: Classification | None
    attempts: int
    site: str = ""
    """The receiving site (set of MX hosts), for shaping sites no provider entry names."""
    message: int = 0
    """The spool's id of the message (0 when unknown)."""


@dataclasses.dataclass(frozen=True)
class PrepareContext:
    """One recipient copy about to be sent."""

    recipient: str
    sender: str
    class_name: str
    bulk: bool
    message_id: str
    """The spool's id of the message (unique within this pod's spool)."""
    source_ip: str = ""
    delivery_id: int = 0


class Classifier(Protocol):
    def __call__(self, reply: Reply, recipient: str) -> Classification: ...


class SuppressionCheck(Protocol):
    def __call__(self, recipient: str, class_name: str) -> bool: ...


class HoldCheck(Protocol):
    def __call__(self, class_name: str) -> str | None: ...


class Preparer(Protocol):
    def __call__(self, data: bytes, context: PrepareContext) -> bytes: ...


class ReturnPath(Protocol):
    def __call__(self, context: PrepareContext) -> str | None: ...


class Pacer(Protocol):
    def __call__(self, provider: str) -> float: ...


class Observer(Protocol):
    def __call__(self, outcome: Outcome) -> None: ...


def classify_by_code(reply: Reply, recipient: str = "") -> Classification:
    """The default: 5xx is a bounce, everything else (4xx, timeouts) is retried."""
    if 500 <= reply.code < 600:
        return Classification(Verdict.BOUNCED, "hard_bounce", "5xx")
    return Classification(Verdict.DEFERRED, "deferred", "not 5xx")


def never_suppressed(recipient: str, class_name: str) -> bool:
    return False


def never_held(class_name: str) -> str | None:
    return None


def unchanged(data: bytes, context: PrepareContext) -> bytes:
    return data


def keep_sender(context: PrepareContext) -> str | None:
    return None


def full_speed(provider: str) -> float:
    return 1.0


def ignore(outcome: Outcome) -> None:
    return None


@dataclasses.dataclass
class Hooks:
    """The set the service runs with; replace any member to plug the deliverability layer."""

    classify: Classifier = classify_by_code
    is_suppressed: SuppressionCheck = never_suppressed
    hold_reason: HoldCheck = never_held
    prepare: Preparer = unchanged
    stamp: Preparer = unchanged
    return_path: ReturnPath = keep_sender
    pace: Pacer = full_speed
    observe: Observer = ignore
