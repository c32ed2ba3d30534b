"""A SendingPool's delivery events, engagement tracking and KPI summary (issue 20).

Pure (no I/O). `spec.events` says where the senders publish each message's events (their
stdout, signed HTTPS webhooks), `spec.tracking` names the host that serves open pixels and
click redirects, `classes[].tracking` turns opens and clicks on per class (off by default),
and `status.kpis` sums the pods' 24-hour figures. The event format itself is the sender's
(docs/events.md); the operator only renders where events go (`logic.event_config`).

Webhook URLs are https. A plain http URL is accepted at the door only for a 127.0.0.0/8
address, and then refused by the operator unless its setting `webhook_loopback_http` allows it
(the sandbox's receivers run on loopback; a real cluster never should), as it refuses loopback
egress IPs unless `refused_egress_networks` allows them.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

from pydantic import Field

from mailfleet_operator.api import common
from mailfleet_operator.api.common import (
    DNS_LABEL_PATTERN,
    DomainName,
    Duration,
    Rule,
    SecretKeyRef,
    SpecModel,
    StatusModel,
)

EventType = Literal[
    "accepted", "delivered", "deferred", "bounced", "complained", "unsubscribed",
    "suppressed", "opened", "clicked", "expired",
]
EVENT_TYPES: tuple[str, ...] = typing.get_args(EventType)

EVENTS_READY = "EventsReady"
"""Condition type: every webhook of spec.events has its Secrets (False names the ones left out)."""

MAX_WEBHOOKS = 8
MAX_TAG_METRICS = 5
WEBHOOK_NAME_MAX = 32
"""Webhook names become volume names (`events-<name>`, at most 63 characters)."""
DEFAULT_SIGNING_KEY = "key"
DEFAULT_CA_KEY = "ca.crt"
TAG_KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
"""A tag key as the senders accept it at submission (docs/events.md)."""
TagKey = Annotated[str, Field(pattern=TAG_KEY_PATTERN, max_length=32)]

# Host: printable ASCII without '#', '/', '?' (0x23, 0x2f, 0x3f); the rest printable ASCII.
# No backslash: the same text is a CEL string literal and a Python regex.
_HOST = '[!"$-.0->@-~]+'
_REST = "([/?#][!-~]*)?"
HTTPS_URL = f"^https://{_HOST}{_REST}$"
LOOPBACK_HTTP_URL = (
    f"^http://127[.][0-9]{{1,3}}[.][0-9]{{1,3}}[.][0-9]{{1,3}}(:[0-9]{{1,5}})?{_REST}$"
)
WEBHOOK_URL_MAX = 2048


def is_loopback_http(url: str) -> bool:
    """A plain-http URL the door lets through: the operator still refuses it unless its
    settings allow loopback http (`webhook_loopback_http`)."""
    return re.fullmatch(LOOPBACK_HTTP_URL, url) is not None


WEBHOOK_URL_RULE = Rule(
    cel=f"self.matches('{HTTPS_URL}') || self.matches('{LOOPBACK_HTTP_URL}')",
    message=(
        "must be an https:// URL (plain http:// only to a 127.0.0.0/8 address, and only "
        "where the operator's settings allow it)"
    ),
    holds=lambda url: re.fullmatch(HTTPS_URL, url) is not None or is_loopback_http(url),
    max_length=WEBHOOK_URL_MAX,
)

WebhookURL = Annotated[str, WEBHOOK_URL_RULE]


class Webhook(SpecModel):
    """An application's HTTPS endpoint for the pool's events (docs/events.md, Webhooks)."""

    name: str = Field(
        min_length=1,
        max_length=WEBHOOK_NAME_MAX,
        pattern=DNS_LABEL_PATTERN,
        description=(
            "Name of the webhook (a DNS label of at most 32 characters), sent in the "
            "Mailfleet-Webhook header; its Secrets are mounted at /etc/mailfleet/events/<name>/."
        ),
    )
    url: WebhookURL = Field(
        description=(
            "Where batches are POSTed, e.g. https://hooks.example.com/mailfleet. https only; "
            "http only to a 127.0.0.0/8 address with the operator's setting "
            "webhook_loopback_http (test beds)."
        )
    )
    types: Annotated[list[EventType], common.unique_by("event type")] = Field(
        default_factory=list,
        max_length=len(EVENT_TYPES),
        description="Event types sent to this webhook; every type when empty.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    signing_key_secret_ref: SecretKeyRef = Field(
        description=(
            "Secret holding the HMAC-SHA256 key batches are signed with (key `key` when "
            "`key` is omitted); the application verifies the Mailfleet-Signature header with "
            "it. While it is missing the webhook is left out (EventsReady=False)."
        )
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding extra trust anchors (PEM, key `ca.crt` when `key` is omitted) for "
            "the webhook's certificate: a private CA. The system trust store when omitted."
        ),
    )
    retry_for: Annotated[Duration, common.at_least("1m")] = Field(
        default="24h",
        description=(
            "How long a batch the endpoint does not take (no answer, or not 2xx) is retried, "
            "with backoff, before its events are counted as dropped; at least 1m."
        ),
    )


class Events(SpecModel):
    """Where the pool's senders publish delivery and engagement events."""

    stdout: bool = Field(
        default=True,
        description=(
            "One JSON line per event on each sender's stdout, for Loki, Fluent Bit or Vector "
            "(schema: docs/events.schema.json)."
        ),
    )
    webhooks: Annotated[list[Webhook], common.unique_by("webhook name", lambda w: w.name)] = (
        Field(
            default_factory=list,
            max_length=MAX_WEBHOOKS,
            description="Signed HTTPS webhooks that receive the events, batched.",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        )
    )
    tag_metrics_allow: Annotated[list[TagKey], common.unique_by("tag key")] = Field(
        default_factory=list,
        max_length=MAX_TAG_METRICS,
        description=(
            "Tag keys (e.g. campaign) whose values may become Prometheus labels of the KPI "
            "metrics; at most 5, as every value of such a tag is a new time series. Other "
            "tags are kept in events and /v1/stats only."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Tracking(SpecModel):
    """The host that serves open pixels and click redirects (the pods' public listener)."""

    host: DomainName = Field(
        description=(
            "Host name in rewritten links and open pixels, e.g. track.example.com; point it "
            "(an Ingress, or DNS) at the pool's `<pool>-public` Service."
        )
    )
    tls_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "kubernetes.io/tls Secret (`tls.crt`, `tls.key`; `key` is ignored) the pods serve "
            "the tracking host with; omit it when an Ingress terminates TLS."
        ),
    )
    machine_window: Duration | None = Field(
        default=None,
        description=(
            "An open or click this soon after submission or delivery counts as a machine's "
            "(a scanner or prefetching proxy), not a reader's; 0s turns the rule off. Unset: "
            "the sender's default (3s)."
        ),
    )


class ClassTracking(SpecModel):
    """Open and click tracking of one class; both off unless asked for."""

    opens: bool = Field(
        default=False,
        description="Add an open pixel to HTML mail of this class (needs spec.tracking.host).",
    )
    clicks: bool = Field(
        default=False,
        description=(
            "Rewrite links of HTML mail of this class through the tracking host (never the "
            "unsubscribe link or List-Unsubscribe); needs spec.tracking.host."
        ),
    )


CLASS_TRACKING_NEEDS_HOST = Rule(
    cel=(
        "has(self.tracking) || self.classes.all(c, !has(c.tracking) || "
        "(!(has(c.tracking.opens) && c.tracking.opens) && "
        "!(has(c.tracking.clicks) && c.tracking.clicks)))"
    ),
    message=(
        "classes[].tracking turns on opens or clicks but spec.tracking.host is missing: name "
        "the host that serves the open pixels and click redirects"
    ),
    holds=lambda s: s.tracking is not None or not any(
        c.tracking.opens or c.tracking.clicks for c in s.classes
    ),
)
"""A rule of `SendingPoolSpec` (the classes and spec.tracking are its fields)."""


# --- status ---------------------------------------------------------------------------------


class KpiSummary(StatusModel):
    """The pool's key figures over the last 24 hours, from the pods' /v1/stats `kpis`:
    counts summed over the pods that answered, rates recomputed from the sums."""

    window: str = Field(default="24h", description="The rolling window the figures cover.")
    pods: int = Field(default=0, ge=0, description="Pods whose figures are in the sums.")
    sent: int = Field(default=0, ge=0, description="Recipients accepted for delivery.")
    delivered: int = Field(default=0, ge=0, description="Recipients delivered.")
    hard_bounced: int = Field(default=0, ge=0, description="Recipients hard-bounced.")
    complained: int = Field(default=0, ge=0, description="Complaints received.")
    opened: int = Field(default=0, ge=0, description="Human opens (machine fetches apart).")
    clicked: int = Field(default=0, ge=0, description="Human clicks (machine fetches apart).")
    delivery_rate: float | None = Field(
        default=None, description="delivered / sent; absent while nothing was sent."
    )
    hard_bounce_rate: float | None = Field(
        default=None, description="hardBounced / delivered; absent while nothing was delivered."
    )
    complaint_rate: float | None = Field(
        default=None, description="complained / delivered; absent while nothing was delivered."
    )
    open_rate: float | None = Field(
        default=None, description="opened / delivered; absent while nothing was delivered."
    )
    click_rate: float | None = Field(
        default=None, description="clicked / delivered; absent while nothing was delivered."
    )
    deliver_p95_seconds: float | None = Field(
        default=None,
        description=(
            "Time from acceptance to delivery, 95th percentile: the largest of the pods' "
            "p95s, an upper bound of the pool's (percentiles do not add up)."
        ),
    )
