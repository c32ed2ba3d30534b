"""JSON bodies of the sender's HTTP API: what the operator sends and reads (`Assignment`,
`AssignmentStatus`, `Stats`) and what applications submit (`SubmitRequest`). Pure (no I/O).

The operator imports this module; it is the contract for the admin API as `config` is for the
file. Field names are camelCase on the wire. Requests refuse unknown fields (a typo must not
pass as "no value"), responses ignore them (an older operator reads a newer sender).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mailfleet_sender import hostnames


class RequestModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ResponseModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Lease(RequestModel):
    """The right to send from one source IP for `ttlSeconds` from the moment the pod receives
    it (self-fencing: the sender stops when the TTL ran out on its monotonic clock, even if it
    never hears from the operator again; a skewed or stepped wall clock changes nothing).
    `epoch` fences stale grants: the sender refuses an epoch older than one it accepted."""

    address: str = Field(description="Source IP address to bind outbound connections to.")
    helo_name: Annotated[str, AfterValidator(hostnames.check_helo_name)] = Field(
        description="EHLO name for connections from this IP."
    )
    ttl_seconds: float = Field(
        gt=0,
        description=(
            "How long the lease lasts from the moment the pod receives this request, counted "
            "on the pod's monotonic clock (no wall-clock time crosses the wire)."
        ),
    )
    epoch: int = Field(
        ge=0,
        description=(
            "The IP's fencing epoch (its Kubernetes Lease's leaseTransitions). An assignment "
            "carrying a lower epoch for an address than the pod ever accepted for it is "
            "refused whole (409, code staleEpoch)."
        ),
    )
    quota_remaining: int | None = Field(
        default=None, ge=0, description="Messages this IP may still send today; null = no cap."
    )
    sent_today_basis: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The IP's sentToday the operator computed quotaRemaining from; the sender also "
            "subtracts what it sent since (no overshoot from a stale stats read)."
        ),
    )
    warmup: bool = Field(default=False, description="The IP is warming up (quota applies).")
    lease_id: str = Field(default="", description="Operator's id of this grant.")
    classes: list[str] | None = Field(
        default=None, description="Classes this IP may carry; all when null."
    )


class Assignment(RequestModel):
    """PUT /v1/assignment: the complete set of leases this pod holds from now on. An IP absent
    from the set is revoked at once (SMTP transactions on it are aborted); an older generation
    than the last one (409, code stale) or a lease with an older epoch than the pod accepted
    for its address (409, code staleEpoch) is refused and changes nothing."""

    generation: int = Field(default=0, ge=0, description="Monotonic per pod, from the operator.")
    leases: list[Lease] = Field(default_factory=list)


class LeaseStatus(ResponseModel):
    address: str
    helo_name: str
    lease_id: str = ""
    epoch: int = 0
    expires_in_seconds: float = Field(
        default=0.0,
        description="TTL left on the pod's monotonic clock; 0 when expired or revoked.",
    )
    valid: bool
    warmup: bool = False
    quota_remaining: int | None = None
    sent_today: int = 0


class AssignmentStatus(ResponseModel):
    """Response of PUT/GET /v1/assignment: what the pod holds now and what it sent today."""

    pod: str
    generation: int
    day: int = Field(description="Index of the current quota day (days since the epoch).")
    leases: list[LeaseStatus] = Field(default_factory=list)


class QueueStats(ResponseModel):
    depth: int = 0
    oldest_age_seconds: float = 0.0
    held: int = 0


class EgressStats(ResponseModel):
    """Outbound SMTP activity from one source IP under one lease epoch since the process
    started, counted on the network side of the lease check (`egress_counts`): what the check
    refused is in `fenced` only, so these stay still once that lease ended here."""

    epoch: int = Field(default=0, description="Epoch of the lease the activity ran under.")
    connections: int = Field(default=0, description="Outbound connections begun.")
    transactions: int = Field(
        default=0, description="Transactions (MAIL FROM..end of DATA) begun, on new and reused "
        "connections."
    )
    messages: int = Field(
        default=0, description="Messages written with their final dot (possibly delivered)."
    )
    fenced: int = Field(
        default=0,
        description="Connections or transaction writes the lease check refused at the last "
        "moment.",
    )
    last_connection_at: datetime.datetime | None = Field(
        default=None, description="When the last connection began (the pod's wall clock)."
    )
    last_transaction_at: datetime.datetime | None = Field(
        default=None, description="When the last transaction began (the pod's wall clock)."
    )
    last_message_at: datetime.datetime | None = Field(
        default=None, description="When the last message was written (the pod's wall clock)."
    )


class IPStats(ResponseModel):
    address: str
    sent_today: int = 0
    delivered_today: int = 0
    bounced_today: int = 0
    deferred_today: int = 0
    complained_today: int = 0
    quota_remaining: int | None = None
    lease_expires_at: datetime.datetime | None = Field(
        default=None,
        description=(
            "For display only: the pod's wall-clock now plus the TTL left on its monotonic "
            "clock (the lease itself is never judged by wall-clock time)."
        ),
    )
    egress: list[EgressStats] = Field(
        default_factory=list,
        description="Outbound activity since the process started, per lease epoch, oldest first.",
    )


class Totals(ResponseModel):
    accepted: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    suppressed: int = 0
    handed_off: int = 0


class WindowRates(ResponseModel):
    """Counts and rates of one IP or class over one rolling window (see `rates`). A rate is
    null when its denominator is 0: no traffic is not a 0 % rate."""

    delivered: int = 0
    hard_bounce: int = 0
    soft_bounce: int = 0
    blocked: int = 0
    deferred: int = 0
    throttled: int = 0
    complaint: int = 0
    unsubscribe: int = 0
    suppressed: int = 0
    attempts: int = 0
    final: int = 0
    bounce_rate: float | None = None
    soft_bounce_rate: float | None = None
    block_rate: float | None = None
    complaint_rate: float | None = None
    deferral_rate: float | None = None


class Rates(ResponseModel):
    """Rolling windows ("1h", "24h") per source IP and per class."""

    by_ip: dict[str, dict[str, WindowRates]] = Field(default_factory=dict)
    by_class: dict[str, dict[str, WindowRates]] = Field(default_factory=dict)


class ShapingState(ResponseModel):
    factor: float
    backoffs: int = 0
    suspended_for_seconds: float | None = None


class SuppressionStats(ResponseModel):
    entries: int = 0
    recorded_here: int = 0
    replication_pushes: int = 0
    replication_push_failures: int = 0
    replication_pulls: int = 0
    replication_pull_failures: int = 0
    peers: int = Field(default=0, description="Other pods found at the last peer discovery.")
    peer_discovery_failures: int = Field(
        default=0, description="Discoveries that failed or found no pod at all (counter)."
    )
    last_discovery_error: str | None = None
    resync_pending: bool = Field(
        default=False,
        description="The list was lost (corrupt file) and is not restored: bulk mail is held.",
    )


class QuarantinedDatabase(ResponseModel):
    """A corrupt database set aside when this process started (docs/sender.md)."""

    database: str = Field(description="spool, suppression, reports or tlsrpt.")
    path: str = Field(description="Where the corrupt file (and its -wal, -shm) now lies.")
    reason: str = ""
    at: datetime.datetime | None = None


class SpoolStats(ResponseModel):
    quarantined: list[QuarantinedDatabase] = Field(
        default_factory=list, description="Corrupt databases set aside at start."
    )
    commit_failures: int = Field(default=0, description="Spool transactions that failed.")
    unrecorded_updates: int = Field(
        default=0, description="Outcome and counter updates waiting to be committed again."
    )


class HandoffStats(ResponseModel):
    state: Literal["idle", "running", "done"] = "idle"
    pending: int = 0
    handed_off: int = 0
    duplicates: int = 0
    failures: int = 0
    bounced: int = 0
    """Recipients bounced because every pod rejected their message for `giveUpAfter`."""
    last_error: str | None = None


class HandoffTarget(RequestModel):
    """Where a hand-off goes instead of the pool's own peers: the pods of another pool (a
    deleted pool handing its queue over, `spec.deletion.handoffTo`)."""

    urls: list[str] = Field(
        min_length=1, description="Base URLs of the receiving pods' HTTP submission API."
    )
    api_key: str | None = Field(
        default=None, description="Bearer key of the receiving pool's submission API."
    )


class DrainRequest(RequestModel):
    """Body of `POST /v1/drain` (optional: the query string `handoff=true` suffices to hand
    the queue to the pool's own peers)."""

    handoff: bool = Field(default=False, description="Hand the queue off instead of delivering.")
    target: HandoffTarget | None = Field(
        default=None,
        description=(
            "With handoff: the pods to hand to (replaces the previous target; the pool's own "
            "peers when null). Kept in memory only: the operator repeats it."
        ),
    )


class DrainStatus(ResponseModel):
    """Answer of `POST /v1/drain` (202) and `DELETE /v1/drain` (200)."""

    draining: bool = Field(description="The pod refuses new mail (and /readyz fails).")
    handoff: bool = Field(
        default=False, description="A hand-off drain is on: the queue moves to other pods."
    )
    ready: bool = Field(default=False, description="What /readyz answers now.")
    handoff_state: Literal["idle", "running", "done"] = "idle"
    handoff_unsettled: int = Field(
        default=0,
        description=(
            "Messages whose hand-off ended without a clear answer: after an undrain they still "
            "go to the pod that may hold them, never out from here."
        ),
    )


class DKIMDomainStats(ResponseModel):
    """Signing state of one `dkim.domains[]` entry."""

    selectors: dict[str, str] = Field(
        default_factory=dict,
        description="algorithm (rsa, ed25519) -> selector signing now; empty: mail is held.",
    )
    unusable: dict[str, str] = Field(
        default_factory=dict, description="selector -> why its key file cannot be used."
    )


class DayIPStats(ResponseModel):
    """One IP's persisted counters of one past quota day."""

    address: str
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    complained: int = 0


class DayStats(ResponseModel):
    """One past quota day's counters (final: that day is over for this pod)."""

    day: int = Field(description="Index of the quota day, as `Stats.day`.")
    ips: list[DayIPStats] = Field(default_factory=list)


class TLSShare(ResponseModel):
    """Outbound connections that carried mail, and the share of them encrypted."""

    sessions: int = 0
    tls: int = 0
    share: float | None = Field(default=None, description="tls / sessions; null without any.")


class TLSStats(ResponseModel):
    """Since the process started: what receivers saw, per source IP and per provider."""

    by_ip: dict[str, TLSShare] = Field(default_factory=dict)
    by_provider: dict[str, TLSShare] = Field(default_factory=dict)
    refused: int = Field(
        default=0, description="Connections not used: a DANE/MTA-STS/requireTLS check failed."
    )
    fallbacks: int = Field(default=0, description="Failed handshakes retried in clear.")


class TLSReportsReceived(ResponseModel):
    """TLS-RPT reports stored about one of the pool's domains (within `keepReceived`)."""

    reports: int = 0
    successful_sessions: int = 0
    failed_sessions: int = 0
    last_at: datetime.datetime | None = Field(default=None, description="Last one stored.")


class TLSReportStats(ResponseModel):
    """TLS-RPT: reports this pod sent (since it started) and reports it received."""

    sent: int = Field(default=0, description="Reports delivered to every rua.")
    dropped: int = Field(default=0, description="Reports not delivered within retryFor.")
    no_rua: int = Field(default=0, description="Reports for domains that ask for none.")
    pending: int = Field(default=0, description="Reports in the outbox (retries included).")
    received: dict[str, TLSReportsReceived] = Field(
        default_factory=dict, description="Stored reports per pool domain."
    )
    refused: dict[str, int] = Field(
        default_factory=dict, description="Received reports refused since start, by reason."
    )


class WebhookStats(ResponseModel):
    """One webhook of the event stream (docs/events.md), since the pod started."""

    pending: int = Field(default=0, description="Events waiting to be delivered.")
    delivered: int = Field(default=0, description="Events the webhook answered 2xx for.")
    dropped: int = Field(
        default=0, description="Events dropped, not delivered within retryFor (lost to it)."
    )
    last_error: str | None = Field(
        default=None, description="Why the last failed request failed (the URL is not shown)."
    )


class EventStats(ResponseModel):
    """The event stream: per webhook, by name."""

    webhooks: dict[str, WebhookStats] = Field(default_factory=dict)


class TLSReportReceipt(ResponseModel):
    """POST /v1/tlsrpt: the report is stored (or was already)."""

    report_id: str
    duplicate: bool = Field(default=False, description="Stored before: counted once.")


class KpiModel(BaseModel):
    """KPI bodies keep the snake_case names of the event contract (docs/kpis.md), as
    Prometheus and the event stream spell them."""

    model_config = ConfigDict(extra="ignore")


_RATE = "null when the denominator is 0"


class KpiFigures(KpiModel):
    """One breakout value over one window or day (definitions: docs/kpis.md)."""

    sent: int = Field(default=0, description="Accepted recipients.")
    delivered: int = 0
    hard_bounced: int = 0
    soft_bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0
    opened_human: int = Field(default=0, description="Unique (message, recipient) opens.")
    opened_machine: int = Field(default=0, description="Unique pairs fetched by a proxy.")
    clicked_human: int = Field(default=0, description="Unique (message, recipient) clicks.")
    clicked_machine: int = 0
    opens_human_total: int = Field(default=0, description="Every human open, repeats too.")
    opens_machine_total: int = 0
    clicks_human_total: int = 0
    clicks_machine_total: int = 0
    deferred: int = Field(default=0, description="Temporary failures (attempts).")
    suppressed: int = 0
    expired: int = 0
    delivery_rate: float | None = Field(default=None, description=f"delivered/sent; {_RATE}.")
    hard_bounce_rate: float | None = Field(
        default=None, description=f"hard/(delivered+hard+soft); {_RATE}.")
    soft_bounce_rate: float | None = Field(
        default=None, description=f"soft/(delivered+hard+soft); {_RATE}.")
    complaint_rate: float | None = Field(
        default=None, description=f"complained/delivered; {_RATE}.")
    unsubscribe_rate: float | None = Field(
        default=None, description=f"unsubscribed/delivered; {_RATE}.")
    open_rate: float | None = Field(
        default=None, description=f"opened_human/delivered; {_RATE}.")
    click_rate: float | None = Field(
        default=None, description=f"clicked_human/delivered; {_RATE}.")
    deliver_p50_s: float | None = Field(
        default=None, description="Time from accepted to delivered, median (within 10 %).")
    deliver_p95_s: float | None = None


class KpiSlice(KpiModel):
    total: KpiFigures = Field(default_factory=KpiFigures, description="The pool on this pod.")
    by: dict[str, dict[str, KpiFigures]] = Field(
        default_factory=dict,
        description="Breakout (class, provider, ip, tag:<key> for allowed keys) -> value -> "
        "figures; values past the cap are counted as _other.",
    )


class Kpis(KpiModel):
    """Campaign KPIs of this pod (sum pods for the pool; rates and percentiles per pod)."""

    windows: dict[str, KpiSlice] = Field(
        default_factory=dict, description="Rolling windows: 1h, 24h.")
    days: dict[str, KpiSlice] = Field(
        default_factory=dict, description="UTC days (YYYY-MM-DD) with figures, oldest first.")


class Stats(ResponseModel):
    """GET /v1/stats: what the operator reads for status, autoscaling and warm-up gates."""

    pod: str
    pool: str = ""
    config_generation: int | None = None
    config_hash: str = ""
    config_error: str | None = Field(
        default=None, description="Why the last reload failed; the last good config still runs."
    )
    day: int = 0
    days: list[DayStats] | None = Field(
        default=None,
        description=(
            "The quota days before `day` still kept in the spool (the last 7), oldest first, "
            "each listed with or without sends: what the operator judges a warm-up day on "
            "when it missed that day's end. Null from a sender that does not report them."
        ),
    )
    draining: bool = False
    queues: dict[str, QueueStats] = Field(default_factory=dict, description="Per class.")
    ips: list[IPStats] = Field(default_factory=list)
    totals: Totals = Field(default_factory=Totals, description="Since the process started.")
    today: Totals = Field(default_factory=Totals, description="This quota day, all IPs.")
    rates: Rates = Field(
        default_factory=Rates,
        description="Bounce, complaint and deferral rates per IP and class, rolling windows.",
    )
    shaping: dict[str, ShapingState] = Field(
        default_factory=dict, description="Providers slowed down or suspended right now."
    )
    suppression: SuppressionStats = Field(default_factory=SuppressionStats)
    spool: SpoolStats = Field(default_factory=SpoolStats)
    handoff: HandoffStats = Field(default_factory=HandoffStats)
    dkim: dict[str, DKIMDomainStats] = Field(
        default_factory=dict, description="Per signing domain: selectors in use, bad keys."
    )
    tls: TLSStats = Field(default_factory=TLSStats, description="Transport security shares.")
    tlsrpt: TLSReportStats = Field(default_factory=TLSReportStats, description="TLS-RPT.")
    events: EventStats = Field(default_factory=EventStats, description="Event webhooks.")
    kpis: Kpis | None = Field(
        default=None, description="Campaign KPIs (docs/kpis.md); null from older senders."
    )


class SubmitRequest(RequestModel):
    """POST /v1/messages with a JSON body (raw RFC 5322 is posted as message/rfc822)."""

    from_: str = Field(alias="from", description="From header, 'Name <addr>' or 'addr'.")
    to: list[str] = Field(min_length=1, description="Recipients (envelope and To header).")
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    class_: str | None = Field(default=None, alias="class")
    tier: str | None = None
    tags: dict[str, str] | None = Field(
        default=None,
        description="The application's tags (e.g. campaign, segment), carried by every event "
        "of the message: at most 10, keys [a-z0-9][a-z0-9_.-]{0,31}, values 1-128 printable "
        "characters. Refused (400) when they break a limit.",
    )
    envelope_from: str | None = Field(
        default=None, description="Return path; the From address when omitted."
    )


class SubmitResponse(ResponseModel):
    id: str
    message_id: str
    recipients: int
    status: Literal["queued"] = "queued"
    duplicate: bool = False
    """A hand-off this pod had already stored (same key): nothing new was queued."""


class ErrorResponse(ResponseModel):
    error: str
    code: str = ""
