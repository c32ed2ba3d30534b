"""SendingPool (`sp`): a fleet of sender pods, their egress IPs and how they send (DESIGN.md §2).

Pure (no I/O). `SendingPoolSpec` is what a user writes; `SendingPoolStatus` is what the
operator reports. Limits in the spec (throttles, rates) are pool-wide: the operator divides
them among the active pods. Read durations and rates with `mailfleet_sender.units`
(`parse_duration`, `parse_rate`); the models keep them as the user wrote them.

Throttle precedence (most specific wins): `throttling.defaults` < built-in provider table
(`mailfleet_operator.api.providers`) < `throttling.providers[]` entries of the same name.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field

from mailfleet_operator.api import common, pool_events
from mailfleet_operator.api.common import (
    Conditions,
    DNSLabel,
    DomainName,
    Duration,
    IPAddress,
    IPOrCIDR,
    KubeName,
    MXPattern,
    Quantity,
    RateStr,
    Rule,
    SecretKeyRef,
    SourceAddress,
    SpecModel,
    StatusModel,
)

KIND = "SendingPool"
PLURAL = "sendingpools"
SINGULAR = "sendingpool"
SHORT_NAMES = ("sp",)

EgressMode = Literal["direct", "relay"]
AttachmentMode = Literal["Bind", "Cilium", "Antrea", "OVNKubernetes"]
LabelSelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
RelayTLS = Literal["none", "starttls", "implicit"]
WarmupOverflow = Literal["Defer", "WarmIPs"]
IPState = Literal["Active", "Standby", "Draining", "Blocklisted", "Unassigned"]

# Condition types this kind reports.
READY = "Ready"
DEGRADED = "Degraded"
FAILING_OVER = "FailingOver"
PROGRESSING = "Progressing"
EVENTS_READY = pool_events.EVENTS_READY
CONDITION_TYPES = (READY, DEGRADED, FAILING_OVER, PROGRESSING, EVENTS_READY)


# Bounds on lists that CEL rules loop over: the API server refuses a rule whose worst case
# (estimated from maxItems) is too costly.
MAX_CLASSES = 32
FEEDBACK_PORT = 2525
"""The pods' inbound feedback port (DSNs, ARF reports) when the pool's feedback loop is on."""
MAX_EGRESS_IPS = 256

# --- pods -------------------------------------------------------------------------------------


class Autoscaling(SpecModel):
    """Scale the pool on queue depth, read from the pods' /v1/stats."""

    rules = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            holds=lambda a: a.min_replicas <= a.max_replicas,
        ),
    )

    min_replicas: int = Field(
        default=1, ge=0, description="Fewest sender pods kept running, even with empty queues."
    )
    max_replicas: int = Field(ge=1, description="Most sender pods the autoscaler may run.")
    target_queue_per_replica: int = Field(
        default=10000,
        ge=1,
        description=(
            "Queued messages per pod the autoscaler aims for: replicas = ceil(total queue / "
            "this), clamped to [minReplicas, maxReplicas]."
        ),
    )


class ResourceRequirements(SpecModel):
    """CPU and memory for each sender container, as in a Pod spec."""

    requests: dict[str, Quantity] | None = Field(
        default=None,
        description="Minimum resources the scheduler reserves, e.g. {cpu: 100m, memory: 128Mi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, description="Maximum resources the container may use, e.g. {memory: 512Mi}."
    )


class Toleration(SpecModel):
    """A Pod toleration, letting sender pods run on tainted nodes (e.g. nodes with egress IPs)."""

    key: str | None = Field(
        default=None,
        max_length=316,
        description="Taint key the toleration applies to; empty with operator Exists matches all.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default when omitted)."
    )
    value: str | None = Field(
        default=None, max_length=63, description="Taint value to match when operator is Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )


class Storage(SpecModel):
    """The spool volume of each sender pod (a PersistentVolumeClaim from the StatefulSet)."""

    size: Quantity = Field(
        default="1Gi", description="Size of each pod's spool volume, e.g. 1Gi or 20Gi."
    )
    storage_class_name: KubeName | None = Field(
        default=None,
        description="StorageClass of the spool volumes; the cluster default when omitted.",
    )


# --- egress -----------------------------------------------------------------------------------


class EgressIP(SpecModel):
    """A source IP the pool sends from, bound to exactly one active pod at a time."""

    address: SourceAddress = Field(
        description=(
            "The IPv4 or IPv6 source address, e.g. 203.0.113.10; unspecified, broadcast and "
            "multicast addresses are refused."
        )
    )
    helo_name: DomainName = Field(
        description=(
            "Name announced in EHLO from this IP; its A/AAAA and the IP's PTR record should "
            "match (forward-confirmed reverse DNS), e.g. mta1.example.com."
        )
    )
    classes: list[DNSLabel] | None = Field(
        default=None,
        max_length=MAX_CLASSES,
        description="Names of the classes this IP may carry; every class when omitted.",
    )


class RelayConfig(SpecModel):
    """A smarthost (SES, Mailgun, Brevo...) that receives all mail in relay mode."""

    host: DomainName = Field(
        description="Host name of the relay, e.g. email-smtp.eu-west-1.amazonaws.com."
    )
    port: int = Field(default=587, ge=1, le=65535, description="TCP port of the relay.")
    tls: RelayTLS = Field(
        default="starttls",
        description=(
            "none (plain text, only for a relay on a trusted network), starttls (upgrade "
            "after connecting, port 587) or implicit (TLS from the first byte, port 465)."
        ),
    )
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding the relay login in its `username` and `password` keys (`key` "
            "is ignored); no authentication when omitted."
        ),
    )


class LabelSelectorRequirement(SpecModel):
    """One requirement of a label selector, as in `metav1.LabelSelectorRequirement`."""

    key: str = Field(min_length=1, max_length=316, description="The label key.")
    operator: LabelSelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(
        default=None,
        description="Values for In and NotIn (non-empty); empty for Exists and DoesNotExist.",
    )


class LabelSelector(SpecModel):
    """A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed)."""

    match_labels: dict[str, str] | None = Field(
        default=None, description="Labels an object must carry, e.g. {egress-gateway: 'true'}."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Set-based requirements an object must meet."
    )


_SELECTS_SOMETHING = (
    "(has(self.nodeSelector.matchLabels) && size(self.nodeSelector.matchLabels) > 0) || "
    "(has(self.nodeSelector.matchExpressions) && size(self.nodeSelector.matchExpressions) > 0)"
)


class CiliumAttachment(SpecModel):
    """Settings of the per-IP `CiliumEgressGatewayPolicy` objects (cilium.io/v2)."""

    rules = (
        Rule(
            cel=_SELECTS_SOMETHING,
            message=(
                "cilium.nodeSelector selects every node: name the gateway nodes that carry the "
                "egress IPs with matchLabels or matchExpressions"
            ),
            holds=lambda c: bool(c.node_selector.match_labels or c.node_selector.match_expressions),
        ),
    )

    node_selector: LabelSelector = Field(
        description=(
            "The gateway nodes: Cilium routes the holder pod's traffic to the first matching "
            "node (by name) and SNATs it there, so the egress IPs must be configured on "
            "these nodes. Required."
        )
    )
    interface: str | None = Field(
        default=None,
        min_length=1,
        max_length=15,
        description=(
            "SNAT with the first IPv4 address of this interface of the gateway node instead "
            "of naming the egress IP (Cilium accepts one or the other). Only for a pool with "
            "a single egress IP; leave empty to pin each IP by address."
        ),
    )
    destination_cidrs: list[IPOrCIDR] | None = Field(
        default=None,
        alias="destinationCIDRs",
        min_length=1,
        description=(
            "Destinations whose traffic leaves through the gateway; 0.0.0.0/0 for an IPv4 "
            "egress IP and ::/0 for an IPv6 one when omitted (every destination)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    excluded_cidrs: list[IPOrCIDR] | None = Field(
        default=None,
        alias="excludedCIDRs",
        description=(
            "Destinations inside destinationCIDRs that keep the node's own address (e.g. a "
            "relay or internal MX on a private network)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class AntreaAttachment(SpecModel):
    """Settings of the per-IP Antrea `Egress` objects (crd.antrea.io/v1beta1)."""

    external_ip_pool: KubeName | None = Field(
        default=None,
        alias="externalIPPool",
        description=(
            "ExternalIPPool the egress IPs belong to: Antrea then assigns each IP to a node "
            "of the pool and moves it when the node fails. When omitted, each IP must be "
            "configured on a node by hand."
        ),
    )


_MODE_RULES = (
    Rule(
        cel="self.mode != 'Cilium' || has(self.cilium)",
        message=(
            "egress.attachment.mode is Cilium but egress.attachment.cilium.nodeSelector is "
            "missing: name the Cilium egress gateway nodes that carry the egress IPs"
        ),
        holds=lambda a: a.mode != "Cilium" or a.cilium is not None,
    ),
    Rule(
        cel="!has(self.cilium) || self.mode == 'Cilium'",
        message="egress.attachment.cilium is set but mode is not Cilium",
        holds=lambda a: a.cilium is None or a.mode == "Cilium",
    ),
    Rule(
        cel="!has(self.antrea) || self.mode == 'Antrea'",
        message="egress.attachment.antrea is set but mode is not Antrea",
        holds=lambda a: a.antrea is None or a.mode == "Antrea",
    ),
)


class Attachment(SpecModel):
    """How an egress IP reaches the pod that holds its lease (see docs/sendingpool.md)."""

    rules = _MODE_RULES

    mode: AttachmentMode = Field(
        default="Bind",
        description=(
            "Bind: the address is routable from the pod as it is (host-network pods on nodes "
            "that carry it, or the sandbox) and the sender binds it. Cilium, Antrea, "
            "OVNKubernetes: the CNI source-NATs the holder pod's traffic to the address; the "
            "operator labels the holder pod and keeps one CNI egress object per IP selecting "
            "that label, and the sender does not bind."
        ),
    )
    cilium: CiliumAttachment | None = Field(
        default=None,
        description="CiliumEgressGatewayPolicy settings; required when mode is Cilium.",
    )
    antrea: AntreaAttachment | None = Field(
        default=None, description="Antrea Egress settings; only when mode is Antrea."
    )


def _normalized_address(ip: EgressIP) -> str:
    """One spelling per address (2001:DB8::10 is 2001:db8::10): per-IP names derive from it."""
    return str(ipaddress.ip_address(ip.address))


_INTERFACE_RULE = (
    "!has(self.attachment) || !has(self.attachment.cilium) || "
    "!has(self.attachment.cilium.interface) || size(self.ips) <= 1"
)
_INTERFACE_MESSAGE = (
    "egress.attachment.cilium.interface SNATs every IP of the pool to the interface's first "
    "address: with more than one egress IP leave it empty so each policy names its IP"
)


class Egress(SpecModel):
    """Where mail leaves from: the pool's own IPs (direct) or a smarthost (relay)."""

    rules = (
        Rule(
            cel="self.mode != 'relay' || has(self.relay)",
            message="egress.mode is relay but egress.relay is missing: set relay.host",
            holds=lambda e: e.mode != "relay" or e.relay is not None,
        ),
        Rule(
            cel=_INTERFACE_RULE,
            message=_INTERFACE_MESSAGE,
            holds=lambda e: (
                e.attachment.cilium is None
                or e.attachment.cilium.interface is None
                or len(e.ips) <= 1
            ),
        ),
    )

    mode: EgressMode = Field(
        default="direct",
        description=(
            "direct: deliver to recipients' MX hosts from the IPs below; relay: hand every "
            "message to `relay`."
        ),
    )
    ips: Annotated[list[EgressIP], common.unique_by("IP address", _normalized_address)] = Field(
        default_factory=list,
        max_length=MAX_EGRESS_IPS,
        description=(
            "Source IPs of the pool, each bound to one active pod. In direct mode with no IPs "
            "the pods send from their own address (useful only for tests)."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["address"],
        },
    )
    relay: RelayConfig | None = Field(
        default=None, description="The smarthost; required when mode is relay."
    )
    attachment: Attachment = Field(
        default_factory=Attachment,
        description=(
            "How each IP reaches the pod holding its lease: bound by the sender (Bind) or "
            "source-NATed by the CNI (Cilium, Antrea, OVNKubernetes)."
        ),
    )


# --- classes, throttles, reputation -------------------------------------------------------------


class MessageClass(SpecModel):
    """A priority class of mail with its own queue (e.g. transactional before marketing)."""

    name: DNSLabel = Field(description="Class name, chosen by the submitter of each message.")
    priority: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Higher priorities are delivered first when the pool is busy or throttled.",
    )
    max_age: Duration | None = Field(
        default=None,
        description=(
            "Give up (bounce) a message of this class after this long; retry.maxAge when omitted."
        ),
    )
    bulk: bool = Field(
        default=False,
        description=(
            "Bulk (marketing) mail: List-Unsubscribe and List-Unsubscribe-Post headers are "
            "added and warm-up quotas serve engaged recipients first."
        ),
    )
    tracking: pool_events.ClassTracking = Field(
        default_factory=pool_events.ClassTracking,
        description=(
            "Open and click tracking of this class's HTML mail; off unless asked for "
            "(docs/events.md, tracking and privacy)."
        ),
    )


def default_classes() -> list[MessageClass]:
    """The classes of a pool that names none: transactional (high) before marketing (low)."""
    return [
        MessageClass(name="transactional", priority=100, max_age="1d"),
        MessageClass(name="marketing", priority=10, max_age="3d", bulk=True),
    ]


class DestinationLimits(SpecModel):
    """Limits per destination site (one MX host set) for sites no provider entry matches."""

    messages_per_second: float | None = Field(
        default=None, gt=0, description="Messages per second to one site, pool-wide."
    )
    messages_per_hour: int | None = Field(
        default=None, ge=1, description="Messages per hour to one site, pool-wide."
    )
    max_connections: int = Field(
        default=10, ge=1, description="Simultaneous SMTP connections to one site, pool-wide."
    )


class ProviderThrottle(SpecModel):
    """Limits for a mailbox provider, recognised by the host names of its MX records."""

    name: DNSLabel = Field(
        description=(
            "Provider name, e.g. gmail; an entry with a built-in provider's name replaces it."
        )
    )
    mx_patterns: list[MXPattern] = Field(
        min_length=1,
        description="MX host names of the provider; '*.google.com' matches aspmx.l.google.com.",
    )
    messages_per_second: float | None = Field(
        default=None, gt=0, description="Messages per second to this provider, pool-wide."
    )
    messages_per_hour: int | None = Field(
        default=None, ge=1, description="Messages per hour to this provider, pool-wide."
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Simultaneous connections to this provider, pool-wide; throttling.defaults "
            "applies when omitted."
        ),
    )


class Throttling(SpecModel):
    """How fast the pool may send, overall and per destination."""

    rate: RateStr | None = Field(
        default=None,
        description="Global pool-wide rate, e.g. '100/s' or '200000/d'; unlimited when omitted.",
    )
    defaults: DestinationLimits = Field(
        default_factory=DestinationLimits,
        description="Limits for any destination no provider entry matches.",
    )
    builtin_providers: bool = Field(
        default=True,
        description=(
            "Apply the built-in table for Gmail, Outlook/Hotmail, Yahoo/AOL, Apple, Orange, "
            "Free, SFR, La Poste and GMX/Web.de (see the API reference)."
        ),
    )
    providers: Annotated[
        list[ProviderThrottle], common.unique_by("provider name", lambda p: p.name)
    ] = Field(
        default_factory=list,
        description="Provider limits; an entry named like a built-in provider overrides it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ReputationThresholds(SpecModel):
    """Rolling bounce and complaint rates (fractions: 0.05 is 5 %)."""

    bounce_rate: float = Field(ge=0, le=1, description="Hard-bounce rate, 0 to 1.")
    complaint_rate: float = Field(ge=0, le=1, description="Complaint (spam report) rate, 0 to 1.")


class Reputation(SpecModel):
    """Guard rails on the pool's rolling bounce and complaint rates."""

    rules = (
        Rule(
            cel="self.warnAt.bounceRate <= self.pauseAt.bounceRate",
            message="warnAt.bounceRate must not exceed pauseAt.bounceRate",
            holds=lambda r: r.warn_at.bounce_rate <= r.pause_at.bounce_rate,
        ),
        Rule(
            cel="self.warnAt.complaintRate <= self.pauseAt.complaintRate",
            message="warnAt.complaintRate must not exceed pauseAt.complaintRate",
            holds=lambda r: r.warn_at.complaint_rate <= r.pause_at.complaint_rate,
        ),
    )

    warn_at: ReputationThresholds = Field(
        default_factory=lambda: ReputationThresholds(bounce_rate=0.05, complaint_rate=0.001),
        description="Rates at which the pool turns Degraded and emits warning events.",
    )
    pause_at: ReputationThresholds = Field(
        default_factory=lambda: ReputationThresholds(bounce_rate=0.10, complaint_rate=0.005),
        description=(
            "Rates at which sending pauses (the pool, or only the class at fault) until "
            "resumed with the annotation mailfleet.io/resume."
        ),
    )
    window: Annotated[Duration, common.at_least("1m")] = Field(
        default="24h",
        description=(
            "Rolling window the rates are computed over; at least 1m, as rates over a "
            "shorter window swing on a handful of messages."
        ),
    )
    min_messages: int = Field(
        default=500,
        ge=1,
        description="Rates are judged only once the window holds at least this many messages.",
    )


# --- retries, bounces, health, failover, submission ---------------------------------------------


class Retry(SpecModel):
    """When temporarily failed (4xx) messages are tried again."""

    schedule: list[Duration] = Field(
        default_factory=lambda: ["5m", "10m", "30m", "1h", "2h", "4h"],
        min_length=1,
        description="Waits between attempts; the last one repeats until maxAge.",
    )
    max_age: Annotated[Duration, common.at_least("1m")] = Field(
        default="3d",
        description=(
            "Bounce a message still undelivered after this long; at least 1m, as a shorter "
            "age bounces mail a receiver merely greylisted."
        ),
    )


class Bounces(SpecModel):
    """What the pool does with bounces."""

    suppress_hard: bool = Field(
        default=True,
        description=(
            "Add hard-bounced recipients to the suppression list; later mail to them is refused."
        ),
    )
    soft_to_hard_after: int = Field(
        default=3,
        ge=1,
        description="Treat a recipient as hard-bounced after this many consecutive soft bounces.",
    )


class FeedbackLoop(SpecModel):
    """Complaint (ARF) reports from providers' feedback loops."""

    enabled: bool = Field(
        default=True,
        description="Accept ARF reports and suppress complaining recipients.",
    )


class DNSBLCheck(SpecModel):
    """Look the pool's IPs up in DNS blocklists."""

    zones: list[DomainName] = Field(
        default_factory=list,
        description="Blocklist zones to query, e.g. zen.spamhaus.org; no checks when empty.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    interval: Annotated[Duration, common.at_least("1s")] = Field(
        default="5m",
        description=(
            "How often each IP is looked up; at least 1s, as a blocklist rate-limits (and "
            "may list) a client that polls it in a loop."
        ),
    )


class HealthChecks(SpecModel):
    """Checks beyond pod readiness."""

    dnsbl: DNSBLCheck = Field(
        default_factory=DNSBLCheck, description="DNS blocklist checks of the egress IPs."
    )


class Failover(SpecModel):
    """When an IP moves from its pod to a standby."""

    unhealthy_after: Annotated[Duration, common.at_least("1s")] = Field(
        default="5s",
        description=(
            "Move an IP once its pod or node has been unready for this long; at least 1s "
            "(0s would move an IP on the first unready report). A holder that "
            "stops answering its renewals moves sooner: within about 9 s with the default "
            "lease settings (docs/sendingpool.md gives the bound per failure)."
        ),
    )
    drain_on_blocklist: bool = Field(
        default=True,
        description="Move an IP off to standby and drain its pod when a blocklist lists it.",
    )


class Deletion(SpecModel):
    """What deleting the pool does with mail it has already accepted (docs/sendingpool.md)."""

    drain_timeout: Annotated[Duration, common.at_least("1s")] = Field(
        default="1h",
        description=(
            "How long a deleted pool drains (intake stopped, queued mail delivered, IPs kept) "
            "before it reports DrainTimedOut; at least 1s. Past it the pool still stays, and keeps "
            "draining, until its queues are empty or the annotation "
            "mailfleet.io/deletion=abandon-queued-mail is set."
        ),
    )
    handoff_to: KubeName | None = Field(
        default=None,
        description=(
            "Another SendingPool in the namespace that takes the queued mail when this one is "
            "deleted (handed to its serving pods over their submission API, exactly once); "
            "while it cannot (missing, being deleted, no Ready pod), the mail is delivered "
            "from this pool's IPs meanwhile."
        ),
    )


class SMTPSubmission(SpecModel):
    """The SMTP submission listener of every sender pod (AUTH + STARTTLS)."""

    port: int = Field(
        default=587, ge=1, le=65535, description="Container port for SMTP submission."
    )
    auth_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret whose keys are user names and values passwords for SMTP AUTH (`key` is "
            "ignored; empty passwords never log in). When omitted: the pool's generated "
            "Secret (`status.submissionSecret`, user `mailfleet`), unless "
            "`submission.allowUnauthenticated`."
        ),
    )
    tls_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="kubernetes.io/tls Secret for STARTTLS; STARTTLS is not offered when omitted.",
    )
    allow_plaintext_auth: bool = Field(
        default=False,
        description=(
            "Offer AUTH without TLS (before STARTTLS, or with no tlsSecretRef): passwords "
            "cross the pod network in clear. Without TLS and without this, SMTP submission "
            "cannot authenticate and answers 530."
        ),
    )
    from_domains: list[DomainName] = Field(
        default_factory=list,
        description=(
            "Domains SMTP-submitted mail may use in From (and the envelope sender); "
            "subdomains only when listed. Any domain when empty."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class HTTPSubmission(SpecModel):
    """The HTTP submission API of every sender pod (POST /v1/messages)."""

    port: int = Field(default=8080, ge=1, le=65535, description="Container port for the HTTP API.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding the API key clients send as a Bearer token (key `api-key` "
            "when `key` is omitted). When omitted: the pool's generated Secret "
            "(`status.submissionSecret`, key `api-key`), unless "
            "`submission.allowUnauthenticated`."
        ),
    )
    from_domains: list[DomainName] = Field(
        default_factory=list,
        description=(
            "Domains mail submitted over HTTP may use in From (and envelopeFrom); subdomains "
            "only when listed. Any domain when empty."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class IPBlock(SpecModel):
    """A network allowed in, as a NetworkPolicy's `ipBlock`."""

    cidr: IPOrCIDR = Field(description="A network (10.0.0.0/8) or one address.")
    except_: list[IPOrCIDR] | None = Field(
        default=None, alias="except", description="Networks inside `cidr` that stay out."
    )


class NetworkPeer(SpecModel):
    """Who may reach the submission ports, as a NetworkPolicy peer: a namespace selector,
    a pod selector (both: those pods in those namespaces), or an IP block."""

    rules = (
        Rule(
            cel="has(self.ipBlock) ? !has(self.namespaceSelector) && !has(self.podSelector)"
            " : has(self.namespaceSelector) || has(self.podSelector)",
            message="give ipBlock alone, or namespaceSelector and/or podSelector",
            holds=lambda p: (
                p.namespace_selector is None and p.pod_selector is None
                if p.ip_block is not None
                else p.namespace_selector is not None or p.pod_selector is not None
            ),
        ),
    )

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces whose pods may connect ({} = every namespace)."
    )
    pod_selector: LabelSelector | None = Field(
        default=None,
        description="Pods that may connect (in the pool's namespace, or in namespaceSelector's).",
    )
    ip_block: IPBlock | None = Field(default=None, description="Addresses that may connect.")


_PORTS = ("[self.smtp.port, self.http.port, self.adminPort, self.publicPort, "
          f"{FEEDBACK_PORT}]")


class Submission(SpecModel):
    """How applications hand mail to the pool, who may reach the pods' ports, and the
    ports of the pods' other listeners (docs/security.md)."""

    rules = (
        Rule(
            cel=f"{_PORTS}.all(p, {_PORTS}.exists_one(q, q == p))",
            message=(
                f"smtp.port, http.port, adminPort, publicPort and the feedback port "
                f"({FEEDBACK_PORT}) must all differ"
            ),
            holds=lambda s: len(
                {s.smtp.port, s.http.port, s.admin_port, s.public_port, FEEDBACK_PORT}
            ) == 5,
        ),
    )

    smtp: SMTPSubmission = Field(default_factory=SMTPSubmission, description="SMTP submission.")
    http: HTTPSubmission = Field(default_factory=HTTPSubmission, description="HTTP submission.")
    allow_unauthenticated: bool = Field(
        default=False,
        description=(
            "Accept submissions without a credential on a listener that names no Secret "
            "(trusted networks only). When false (the default) and neither "
            "smtp.authSecretRef nor http.apiKeySecretRef is given, the operator generates "
            "the Secret `<pool>-submission` (named in status.submissionSecret)."
        ),
    )
    allowed_from: list[NetworkPeer] | None = Field(
        default=None,
        description=(
            "Who may reach the submission ports (the pool's NetworkPolicy): namespace or pod "
            "selectors, IP blocks. Default: the pods of the pool's own namespace."
        ),
    )
    admin_port: int = Field(
        default=8081, ge=1, le=65535,
        description=(
            "The pods' admin port (probes, metrics, the operator's calls, the pool's pods "
            "among themselves); only the operator and the pool's pods may reach it."
        ),
    )
    public_port: int = Field(
        default=8082, ge=1, le=65535,
        description="The pods' public HTTP port: the one-click unsubscribe pages only.",
    )


# --- spec ---------------------------------------------------------------------------------------


_ONE_IP_PER_POD_RULE = (
    "self.egress.attachment.mode == 'Bind' || "
    "(has(self.autoscaling) ? self.autoscaling.minReplicas : self.replicas) "
    ">= size(self.egress.ips)"
)


def _active_pods(spec: SendingPoolSpec) -> int:
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


TLSVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]


class DaneResolver(SpecModel):
    """A DNSSEC-validating resolver the pods reach over a trusted path."""

    address: IPAddress = Field(description="Resolver IP address (node-local or in-cluster).")
    port: int = Field(default=53, ge=1, le=65535, description="Resolver port.")


class ProviderTLS(SpecModel):
    """Transport security of one provider; unset fields keep the pool's."""

    name: DNSLabel = Field(description="Provider name, as in throttling.providers or built-in.")
    require_tls: bool | None = Field(
        default=None, alias="requireTLS", description="Never send to this provider in clear."
    )
    min_version: TLSVersion | None = Field(default=None, description="Lowest TLS version.")
    dane: bool | None = Field(default=None, description="Honour DANE TLSA records.")
    mta_sts: bool | None = Field(default=None, description="Honour MTA-STS policies.")


LOCAL_PART_PATTERN = r"^[A-Za-z0-9._+-]+$"
"""A plain mail local part (dot-atom letters, digits and `._+-`)."""


class TLSReports(SpecModel):
    """TLS-RPT (RFC 8460): daily reports to receiving domains that publish `_smtp._tls`."""

    enabled: bool = Field(default=False, description="Send TLS-RPT reports.")
    organization: str = Field(
        default="mailfleet", max_length=200, description="organization-name in the reports."
    )
    contact: str = Field(
        default="", max_length=200, description="contact-info in the reports (an address)."
    )
    from_local_part: str = Field(
        default="tlsrpt-noreply",
        min_length=1,
        max_length=64,
        pattern=LOCAL_PART_PATTERN,
        description=(
            "Local part of the From of reports sent by mail; the domain is the pool's first "
            "DomainAuth domain, whose DKIM key signs them."
        ),
    )


class TransportSecurity(SpecModel):
    """TLS of MX delivery: DANE, then MTA-STS, then opportunistic STARTTLS with a retry in
    clear after a failed handshake (docs/deliverability.md, "Transport security")."""

    require_tls: bool = Field(
        default=False,
        alias="requireTLS",
        description="Never send in clear: no STARTTLS or a failed handshake defers the mail.",
    )
    min_version: TLSVersion = Field(default="TLSv1.2", description="Lowest TLS version.")
    dane: bool = Field(
        default=True, description="Honour DANE TLSA records (only with daneResolver)."
    )
    dane_resolver: DaneResolver | None = Field(
        default=None,
        description="Validating resolver whose AD bit the pods trust; no DANE without it.",
    )
    mta_sts: bool = Field(default=True, description="Honour MTA-STS policies (RFC 8461).")
    providers: Annotated[list[ProviderTLS], common.unique_by("provider name", lambda p: p.name)] = (
        Field(
            default_factory=list,
            description="Per-provider overrides.",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        )
    )
    reports: TLSReports = Field(default_factory=TLSReports, description="TLS-RPT reports.")


class SendingPoolSpec(SpecModel):
    """Desired state of a SendingPool: pods, IPs, classes, throttles and guard rails."""

    rules = (
        Rule(
            cel=_ONE_IP_PER_POD_RULE,
            message=(
                "a CNI attachment mode source-NATs whole pods: it needs at least as many "
                "active replicas (replicas, or autoscaling.minReplicas) as egress IPs"
            ),
            holds=lambda s: (
                s.egress.attachment.mode == "Bind" or _active_pods(s) >= len(s.egress.ips)
            ),
        ),
        Rule(
            cel=(
                "self.egress.ips.all(ip, !has(ip.classes) || "
                "ip.classes.all(c, self.classes.exists(k, k.name == c)))"
            ),
            message="egress.ips[].classes names a class the pool does not have in classes",
            holds=lambda s: all(
                name in {c.name for c in s.classes}
                for ip in s.egress.ips
                for name in ip.classes or ()
            ),
        ),
        pool_events.CLASS_TRACKING_NEEDS_HOST,
    )

    replicas: int = Field(
        default=1,
        ge=0,
        description=(
            "Number of active sender pods (each may hold egress IPs). Ignored when "
            "autoscaling is set; `kubectl scale sp` sets it."
        ),
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale on queue depth instead of a fixed replica count."
    )
    standby_replicas: int = Field(
        default=0,
        ge=0,
        description="Warm spare pods that hold no IP until a failover hands them one.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Sender container image; the operator's default sender image when omitted.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory requests and limits of each sender container."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the sender pods must run on."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Taints the sender pods tolerate."
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None, description="Extra annotations on every sender pod."
    )
    storage: Storage = Field(default_factory=Storage, description="The spool volume of each pod.")
    egress: Egress = Field(default_factory=Egress, description="Where mail leaves from.")
    domains: list[KubeName] = Field(
        default_factory=list,
        description=(
            "Names of DomainAuth objects (same namespace) whose domains the pool signs for."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    classes: Annotated[list[MessageClass], common.unique_by("class name", lambda c: c.name)] = (
        Field(
            default_factory=default_classes,
            min_length=1,
            max_length=MAX_CLASSES,
            description=(
                "Priority classes of mail. When omitted: transactional (priority 100, maxAge "
                "1d) and marketing (priority 10, maxAge 3d, bulk)."
            ),
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        )
    )
    throttling: Throttling = Field(
        default_factory=Throttling, description="Global and per-destination sending limits."
    )
    reputation: Reputation = Field(
        default_factory=Reputation, description="Bounce and complaint guard rails."
    )
    warmup_overflow: WarmupOverflow = Field(
        default="Defer",
        description=(
            "Mail over a warming IP's daily quota: Defer keeps it queued for the next day; "
            "WarmIPs sends it from already warm IPs of the pool."
        ),
    )
    retry: Retry = Field(default_factory=Retry, description="Retry schedule of deferred mail.")
    bounces: Bounces = Field(default_factory=Bounces, description="Bounce handling.")
    feedback_loop: FeedbackLoop = Field(
        default_factory=FeedbackLoop, description="Complaint feedback loop handling."
    )
    health_checks: HealthChecks = Field(
        default_factory=HealthChecks, description="Health checks beyond pod readiness."
    )
    failover: Failover = Field(default_factory=Failover, description="IP failover behaviour.")
    submission: Submission = Field(
        default_factory=Submission, description="How applications hand mail to the pool."
    )
    paused: bool = Field(
        default=False,
        description="Stop delivering (mail is still accepted and queued) until set back to false.",
    )
    deletion: Deletion = Field(
        default_factory=Deletion, description="How a deleted pool drains before it goes."
    )
    transport_security: TransportSecurity = Field(
        default_factory=TransportSecurity,
        description="DANE, MTA-STS, requireTLS and TLS-RPT of MX delivery.",
    )
    events: pool_events.Events = Field(
        default_factory=pool_events.Events,
        description=(
            "Where the senders publish each message's events: stdout and signed webhooks "
            "(docs/events.md)."
        ),
    )
    tracking: pool_events.Tracking | None = Field(
        default=None,
        description=(
            "The host serving open pixels and click redirects; required by any "
            "classes[].tracking that is on."
        ),
    )


# --- status -------------------------------------------------------------------------------------


class IPStatus(StatusModel):
    """One egress IP as the operator sees it."""

    address: str = Field(description="The egress IP address.")
    pod: str | None = Field(default=None, description="Pod that holds the IP's lease, if any.")
    state: IPState = Field(
        description=(
            "Active (sending from its pod), Standby (warm, not sending), Draining (leaving "
            "its pod), Blocklisted (listed on a DNSBL, not sending) or Unassigned (no pod)."
        )
    )
    listed_on: list[str] = Field(
        default_factory=list, description="DNSBL zones that currently list the IP."
    )
    quota_today: int | None = Field(
        default=None, ge=0, description="Warm-up quota for today; no quota when omitted."
    )
    sent_today: int = Field(default=0, ge=0, description="Messages sent from the IP today.")


class QueueStatus(StatusModel):
    """The queue of one class, summed over the pool's pods."""

    class_name: str = Field(alias="class", description="Class name.")
    depth: int = Field(default=0, ge=0, description="Messages waiting in the class.")
    oldest_age_seconds: int = Field(
        default=0, ge=0, description="Age in seconds of the oldest waiting message."
    )


class Deliveries(StatusModel):
    """Delivery outcomes over the last 24 hours, summed over the pool's pods."""

    delivered: int = Field(default=0, ge=0, description="Messages accepted by the receiver.")
    deferred: int = Field(default=0, ge=0, description="Temporary failures (will be retried).")
    bounced: int = Field(default=0, ge=0, description="Permanent failures.")
    complained: int = Field(default=0, ge=0, description="Complaint reports received.")
    suppressed: int = Field(
        default=0, ge=0, description="Messages refused because the recipient is suppressed."
    )


class SigningSelector(StatusModel):
    """A DKIM selector the pool's pods sign a domain's mail with."""

    domain: str = Field(description="The signing domain (a DomainAuth's spec.domain).")
    selector: str = Field(description="The selector, as the pods report it.")


class SendingPoolStatus(StatusModel):
    """Observed state of a SendingPool."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status was computed from."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="Ready, Degraded, FailingOver, Progressing and EventsReady.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int = Field(default=0, ge=0, description="Active sender pods that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Active sender pods that are ready.")
    standby_replicas: int = Field(default=0, ge=0, description="Standby pods that are ready.")
    selector: str | None = Field(
        default=None,
        description="Label selector of the pool's pods, for the scale subresource and HPAs.",
    )
    submission_secret: str | None = Field(
        default=None,
        description=(
            "The Secret the operator generated for submission (API key under `api-key`, "
            "SMTP user `mailfleet`) when the spec names none; read it to submit mail."
        ),
    )
    ips: list[IPStatus] = Field(
        default_factory=list,
        description="Every egress IP with its pod and state.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["address"],
        },
    )
    queue: list[QueueStatus] = Field(default_factory=list, description="Queue per class.")
    deliveries_24h: Deliveries = Field(
        default_factory=Deliveries,
        alias="deliveries24h",
        description="Delivery outcomes over the last 24 hours.",
    )
    active_ips: int = Field(
        default=0, alias="activeIPs", ge=0, description="Number of IPs in state Active."
    )
    queue_depth: int = Field(default=0, ge=0, description="Messages queued over every class.")
    dkim: list[SigningSelector] = Field(
        default_factory=list,
        description=(
            "The DKIM selectors the pods report signing with, per domain. A pod that did not "
            "answer keeps the previous entries in place, so a selector leaves the list only "
            "once every pod has stopped signing with it; a DomainAuth retires a replaced key "
            "only once every pool signing for its domain lists the new selector alone."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["domain", "selector"],
        },
    )
    kpis: pool_events.KpiSummary | None = Field(
        default=None,
        description=(
            "Key figures of the last 24 hours summed over the pods (sent, delivered, rates, "
            "delivery time); absent while no pod reports them."
        ),
    )


class SendingPool(SpecModel):
    """A fleet of mail-sending pods with their egress IPs, priority classes and throttles."""

    api_version: Literal["mailfleet.io/v1alpha1"] = Field(
        default="mailfleet.io/v1alpha1", description="mailfleet.io/v1alpha1"
    )
    kind: Literal["SendingPool"] = Field(default="SendingPool", description="SendingPool")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: SendingPoolSpec = Field(description="Desired state of the pool.")
    status: SendingPoolStatus | None = Field(
        default=None, description="Observed state of the pool."
    )
