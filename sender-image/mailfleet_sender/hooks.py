"""Plug points between the delivery core and the deliverability layer (bounce classification,
suppression, reactive shaping, List-Unsubscribe). Pure: types and trivial defaults, no I/O.

The core asks three questions and reports one thing:
- `classify(reply)`: is this remote answer a defer or a bounce (and which kind)? The default
  reads the code only (5xx bounce, 4xx defer); `bounces.py` replaces it with enhanced-code and
  provider-text rules.
- `is_suppressed(recipient, class)`: may this recipient get mail at all? Asked before every
  attempt; the default says no one is suppressed.
- `prepare(message, delivery)`: last chance to add headers before DKIM signing (e.g. RFC 8058
  List-Unsubscribe for bulk classes); the default changes nothing.
- `observe(outcome)`: every attempt's result, for shaping, suppression and reports.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
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

    def __str__(self) -> str:
        middle = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{middle} {self.text}".strip()


@dataclasses.dataclass(frozen=True)
class Classification:
    """How the core treats a non-2xx reply: retry later, or give up now."""

    verdict: Verdict
    category: str = ""
    """Free-form kind for metrics and the deliverability layer (hard, soft, block, throttle)."""


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


@dataclasses.dataclass(frozen=True)
class PrepareContext:
    recipient: str
    sender: str
    class_name: str
    bulk: bool
    message_id: str


Classifier = Callable[[Reply], Classification]


class SuppressionCheck(Protocol):
    def __call__(self, recipient: str, class_name: str) -> bool: ...


class Preparer(Protocol):
    def __call__(self, data: bytes, context: PrepareContext) -> bytes: ...


class Observer(Protocol):
    def __call__(self, outcome: Outcome) -> None: ...


def classify_by_code(reply: Reply) -> Classification:
    """The default: 5xx is a bounce, everything else (4xx, timeouts) is retried."""
    if 500 <= reply.code < 600:
        return Classification(Verdict.BOUNCED, "hard")
    return Classification(Verdict.DEFERRED, "soft")


def never_suppressed(recipient: str, class_name: str) -> bool:
    return False


def unchanged(data: bytes, context: PrepareContext) -> bytes:
    return data


def ignore(outcome: Outcome) -> None:
    return None


@dataclasses.dataclass
class Hooks:
    """The set the service runs with; replace any member to plug the deliverability layer."""

    classify: Classifier = classify_by_code
    is_suppressed: SuppressionCheck = never_suppressed
    prepare: Preparer = unchanged
    observe: Observer = ignore
