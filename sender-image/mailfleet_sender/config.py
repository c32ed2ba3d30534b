"""The sender's configuration file: the `SenderConfig` model the operator renders from a
SendingPool into a ConfigMap, one YAML file per pool. Pure (no I/O apart from `load_config`,
which reads one file).

This model is the whole contract between operator and sender (DESIGN.md §1): YAML keys are
camelCase, unknown keys are errors with the path of the bad field, every limit and timeout is an
explicit, defaulted setting. Limits are per pod: the operator has already divided the pool-wide
figures among the active pods. Secrets are never in the file, only paths of mounted Secret
files. Source IPs are not in the file either: they arrive as leases (`wire.Assignment`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import zoneinfo
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mailfleet_sender import (
    event_config,
    from_domains,
    hostnames,
    report_limits,
    tls_policy,
    tracking_config,
    units,
)
from mailfleet_sender import shaping as shaping_rules


class ConfigModel(BaseModel):
    """camelCase in YAML, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Submission(ConfigModel):
    """How applications hand mail to this pod."""

    listen_address: str | None = Field(
        default=None,
        description=(
            "Address all listeners bind to (submission, admin, feedback). Default: the pod's "
            "own address from POD_IP when set (pods sharing a host never collide), else 0.0.0.0."
        ),
    )
    smtp_port: int = Field(default=587, ge=0, le=65535, description="SMTP submission port.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="HTTP API port.")
    admin_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description=(
            "The admin listener (HTTP): /healthz, /readyz, /metrics, the admin /v1/* paths, "
            "suppression replication and hand-off between the pool's pods. Never the "
            "submission port: only the operator, the kubelet and the pool's pods reach it."
        ),
    )
    hostname: str | None = Field(
        default=None, description="Name in the SMTP banner and generated Message-IDs (pod name)."
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description=(
            "Accept submissions without a credential when no credentialsFile (SMTP) or "
            "apiKeyFile (HTTP) is given (trusted networks only). When false, such a listener "
            "refuses every submission (SMTP 530, HTTP 401)."
        ),
    )
    credentials_file: str | None = Field(
        default=None,
        description=(
            "SMTP AUTH users: a file of `user:password` lines, or a mounted Secret directory "
            "with one file per user holding the password. Users with an empty password are "
            "ignored. Without it AUTH never succeeds (unless allowUnauthenticated)."
        ),
    )
    tls_cert_file: str | None = Field(default=None, description="PEM certificate for STARTTLS.")
    tls_key_file: str | None = Field(default=None, description="PEM key for STARTTLS.")
    allow_plaintext_auth: bool = Field(
        default=False,
        description=(
            "Offer AUTH on a connection without TLS (before STARTTLS, or with no certificate "
            "at all): passwords then cross the network in clear (trusted networks only)."
        ),
    )
    api_key_file: str | None = Field(
        default=None,
        description=(
            "File of accepted HTTP API keys, one per line. Without it POST /v1/messages "
            "answers 401 (unless allowUnauthenticated)."
        ),
    )
    smtp_from_domains: list[str] = Field(
        default_factory=list,
        description=(
            "Domains SMTP-authenticated mail may use in From (and a non-empty envelope "
            "sender); subdomains only when listed. Any domain when empty."
        ),
    )
    http_from_domains: list[str] = Field(
        default_factory=list,
        description="Domains mail submitted over HTTP may use in From; as smtpFromDomains.",
    )
    max_message_size: int = Field(
        default=25 * 1024 * 1024, ge=1024, description="Largest message accepted, in bytes."
    )
    max_header_size: int = Field(
        default=100 * 1024, ge=1024, description="Largest header section accepted, in bytes."
    )
    max_recipients: int = Field(default=1000, ge=1, description="Recipients per message.")
    max_connections: int = Field(
        default=500, ge=1, description="Simultaneous SMTP sessions; more get 421."
    )
    max_connections_per_client: int = Field(
        default=20, ge=1, description="Simultaneous SMTP sessions from one IP address; more "
        "get 421 4.7.0 before the greeting.",
    )
    messages_per_connection: int = Field(
        default=10000, ge=1, description="Transactions per SMTP session before 421."
    )
    idle_timeout: units.Duration = Field(
        default="5m", description="An SMTP session idle this long is closed."
    )
    data_timeout: units.Duration = Field(
        default="4m",
        description=(
            "Time for one whole DATA phase, from the DATA command to the final dot; a slower "
            "client gets 421 4.4.2 and nothing is queued. Below idleTimeout, whose timer also "
            "runs during DATA (and closes without a reply)."
        ),
    )
    default_class: str | None = Field(
        default=None, description="Class of mail submitted without one; the first class if unset."
    )
    processes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "Processes taking SMTP and HTTP submissions, sharing the ports (SO_REUSEPORT). With "
            "more than one, each is a worker process and the main process keeps the spool, "
            "leases, quotas and delivery. Default: the container's CPU limit (cgroup) rounded "
            "up, 1 without a limit. maxConnections is split between them; "
            "maxConnectionsPerClient applies in each. A change needs a restart."
        ),
    )

    @field_validator("smtp_from_domains", "http_from_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [from_domains.normalize(d) for d in value]

    @model_validator(mode="after")
    def _tls_pair(self) -> Submission:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tlsCertFile and tlsKeyFile must be set together")
        _data_within_idle(self.data_timeout, self.idle_timeout, "dataTimeout", "idleTimeout")
        return self


def _data_within_idle(data: str, idle: str, data_name: str, idle_name: str) -> None:
    """aiosmtpd's idle timer is not restarted during DATA: a deadline at or past it would
    never answer 421."""
    if units.duration_seconds(data) >= units.duration_seconds(idle):
        raise ValueError(f"{data_name} ({data}) must be shorter than {idle_name} ({idle})")


class Relay(ConfigModel):
    """A smarthost (SES, Mailgun, Brevo...) that takes all mail in relay mode."""

    host: str = Field(description="Relay host name.")
    port: int = Field(default=587, ge=1, le=65535, description="Relay port.")
    tls: Literal["none", "starttls", "implicit"] = Field(
        default="starttls", description="none, starttls (587) or implicit TLS (465)."
    )
    username_file: str | None = Field(default=None, description="File with the relay user name.")
    password_file: str | None = Field(default=None, description="File with the relay password.")
    verify_certificate: bool = Field(default=True, description="Check the relay's certificate.")

    @model_validator(mode="after")
    def _login_pair(self) -> Relay:
        if (self.username_file is None) != (self.password_file is None):
            raise ValueError("usernameFile and passwordFile must be set together")
        return self


TLSVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]


class DaneResolver(ConfigModel):
    """A DNSSEC-validating resolver whose AD bit is trusted (RFC 7672 §2.1). It must be one
    the pod reaches over a trusted path (a node-local or in-cluster validating resolver)."""

    address: str = Field(description="Resolver IP address.")
    port: int = Field(default=53, ge=1, le=65535, description="Resolver port.")


class ProviderTLS(ConfigModel):
    """TLS settings of one provider (named as in `throttles.providers`); unset fields keep
    the pool's."""

    name: str = Field(description="Provider name, as in throttles.providers.")
    require_tls: bool | None = Field(
        default=None, alias="requireTLS", description="Never send to it in clear."
    )
    min_version: TLSVersion | None = Field(default=None, description="Lowest TLS version.")
    dane: bool | None = Field(default=None, description="Honour DANE TLSA records.")
    mta_sts: bool | None = Field(default=None, description="Honour MTA-STS policies.")


class TLSReports(ConfigModel):
    """TLS-RPT (RFC 8460): reports per report period (a UTC day) to the receiving domains that
    ask for them, and the reports other senders send about the pool's own domains
    (docs/deliverability.md, "Transport security")."""

    enabled: bool = Field(default=False, description="Send TLS-RPT reports.")
    organization: str = Field(default="mailfleet", description="organization-name of reports.")
    contact: str = Field(default="", description="contact-info of reports (an address).")
    from_address: str | None = Field(
        default=None,
        description=(
            "From of reports sent by mail (DKIM-signed by the pool's key for its domain); "
            "default tlsrpt-noreply@<first dkim domain>."
        ),
    )
    class_name: str | None = Field(
        default=None,
        alias="class",
        description=(
            "Message class of reports sent by mail; default: the highest-priority class that "
            "is not bulk."
        ),
    )
    interval: units.Duration = Field(
        default="24h", description="Length of a report period (a day; shorter in test beds)."
    )
    timeout: units.Duration = Field(default="30s", description="Per HTTPS report POST.")
    flush_interval: units.Duration = Field(
        default="5s",
        description=(
            "Counts are written to disk at least this often: a crash loses at most the "
            "sessions of this last stretch; the next flush also sends what is due."
        ),
    )
    retry_first: units.Duration = Field(
        default="5m", description="First wait after a failed report delivery (then doubled)."
    )
    retry_max: units.Duration = Field(default="2h", description="Longest wait between tries.")
    retry_for: units.Duration = Field(
        default="24h",
        description="A report not delivered this long after its period ended is dropped.",
    )
    inbound_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Body of a received report (compressed)."
    )
    inbound_max_json_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024,
        description="A received report's JSON after decompression (gzip bombs end here).",
    )
    keep_received: units.Duration = Field(
        default="30d", description="How long received reports are stored."
    )
    max_received: int = Field(
        default=10_000, ge=1, description="Received reports stored at most (oldest go first)."
    )

    @field_validator("from_address")
    @classmethod
    def _from_is_an_address(cls, value: str | None) -> str | None:
        if value is not None and (value.count("@") != 1 or not all(value.split("@"))):
            raise ValueError(f"fromAddress {value!r} is not an address")
        return value


class DeliveryTLS(ConfigModel):
    """Transport security of MX delivery (docs/deliverability.md, "Transport security"):
    DANE, then MTA-STS, then opportunistic STARTTLS with a plaintext retry."""

    require_tls: bool = Field(
        default=False,
        alias="requireTLS",
        description="Never send in clear: a failed or missing STARTTLS defers the message.",
    )
    min_version: TLSVersion = Field(default="TLSv1.2", description="Lowest TLS version offered.")
    dane: bool = Field(
        default=True, description="Honour DANE TLSA records (needs daneResolver)."
    )
    dane_resolver: DaneResolver | None = Field(
        default=None,
        description="Validating resolver whose AD bit is trusted; no DANE without it.",
    )
    mta_sts: bool = Field(default=True, description="Honour MTA-STS policies (RFC 8461).")
    mta_sts_port: int = Field(
        default=443, ge=1, le=65535, description="HTTPS port of policy hosts (443; test beds)."
    )
    ca_file: str | None = Field(
        default=None,
        description=(
            "Extra trust anchors (PEM) for MTA-STS policy hosts and MX certificates, besides "
            "the system store (test beds, private CAs)."
        ),
    )
    policy_fetch_timeout: units.Duration = Field(
        default="10s", description="MTA-STS TXT lookup plus policy fetch."
    )
    policy_refresh: units.Duration = Field(
        default="1h", description="How long a domain's decided policy is reused."
    )
    providers: list[ProviderTLS] = Field(
        default_factory=list, description="Per-provider overrides (by provider name)."
    )
    reports: TLSReports = Field(default_factory=TLSReports)

    def settings_for(self, provider: str, *, opportunistic: bool) -> tls_policy.Settings:
        """The pool's settings with the named provider's overrides applied."""
        o = next((p for p in self.providers if p.name == provider), None) or ProviderTLS(
            name=provider
        )
        return tls_policy.Settings(
            opportunistic=opportunistic,
            require_tls=self.require_tls if o.require_tls is None else o.require_tls,
            min_version=self.min_version if o.min_version is None else o.min_version,
            dane=(self.dane if o.dane is None else o.dane) and self.dane_resolver is not None,
            mta_sts=self.mta_sts if o.mta_sts is None else o.mta_sts,
        )


class Delivery(ConfigModel):
    """How mail leaves the pod."""

    mode: Literal["direct", "relay"] = Field(default="direct", description="MX delivery or relay.")
    smtp_port: int = Field(
        default=25, ge=1, le=65535, description="Port of the recipients' MX hosts (25)."
    )
    relay: Relay | None = Field(default=None, description="The smarthost in relay mode.")
    require_lease: bool = Field(
        default=True,
        description=(
            "Send only from leased source IPs. When false and no lease is held, send from the "
            "pod's own address (pools without egress IPs, tests)."
        ),
    )
    helo_name: str | None = Field(
        default=None, description="EHLO name when sending without a lease (pod name)."
    )
    connect_timeout: units.Duration = Field(default="30s", description="TCP+banner timeout.")
    command_timeout: units.Duration = Field(default="60s", description="Per SMTP command.")
    messages_per_connection: int = Field(
        default=100, ge=1, description="Messages sent over one connection before QUIT."
    )
    connection_idle: units.Duration = Field(
        default="2s", description="Keep an idle outbound connection this long for more mail."
    )
    opportunistic_tls: bool = Field(
        default=True, description="STARTTLS when the MX offers it (certificates not verified)."
    )
    tls: DeliveryTLS = Field(
        default_factory=DeliveryTLS, description="DANE, MTA-STS, requireTLS, TLS-RPT."
    )
    lease_margin: units.Duration = Field(
        default="1s",
        description=(
            "Safety margin before a source IP's lease runs out (counted on the pod's monotonic "
            "clock): with less than this left no connection or SMTP transaction is started "
            "from the IP, and an attempt still running when only this much is left is aborted "
            "(connection closed, message requeued). Keep it well below the lease TTL."
        ),
    )
    bind_source: bool = Field(
        default=True,
        description=(
            "Bind the leased IP as the source address of outbound connections (attachment mode "
            "Bind). False when a CNI source-NATs the holder pod's traffic to the leased IP: the "
            "sender then binds the pod's own IP (POD_IP) when known, else nothing, and still "
            "greets with the lease's HELO name; quotas and per-IP counts stay keyed by the "
            "leased IP."
        ),
    )

    @field_validator("helo_name")
    @classmethod
    def _helo_name_valid(cls, value: str | None) -> str | None:
        return None if value is None else hostnames.check_helo_name(value)

    @model_validator(mode="after")
    def _relay_when_relay_mode(self) -> Delivery:
        if self.mode == "relay" and self.relay is None:
            raise ValueError("delivery.mode is relay but delivery.relay is missing")
        return self


class MessageClass(ConfigModel):
    """A priority class with its own scheduled queue."""

    name: str = Field(description="Class name given by submitters.")
    priority: int = Field(default=0, ge=0, description="Higher is delivered first.")
    max_age: units.Duration | None = Field(
        default=None, description="Bounce after this long; retry.maxAge when omitted."
    )
    bulk: bool = Field(default=False, description="Bulk (marketing) mail.")
    tracking: tracking_config.ClassTracking = Field(
        default_factory=tracking_config.ClassTracking,
        description="Open pixel and link rewriting for this class (off by default).",
    )


def default_classes() -> list[MessageClass]:
    return [
        MessageClass(name="transactional", priority=100, max_age="1d"),
        MessageClass(name="marketing", priority=10, max_age="3d", bulk=True),
    ]


class SiteLimits(ConfigModel):
    """Limits per destination site (one MX host set) that no provider entry matches."""

    messages_per_second: float | None = Field(default=None, gt=0, description="Per site.")
    messages_per_hour: int | None = Field(default=None, ge=1, description="Per site.")
    max_connections: int = Field(default=10, ge=1, description="Connections per site and IP.")


class ProviderThrottle(ConfigModel):
    """Limits for a mailbox provider, recognised by its MX host names."""

    name: str = Field(description="Provider name (metrics label).")
    mx_patterns: list[str] = Field(min_length=1, description="Glob patterns of MX host names.")
    messages_per_second: float | None = Field(default=None, gt=0, description="Per provider.")
    messages_per_hour: int | None = Field(default=None, ge=1, description="Per provider.")
    max_connections: int | None = Field(
        default=None, ge=1, description="Connections per provider and IP; site default if unset."
    )

    def matches(self, mx_host: str) -> bool:
        host = mx_host.rstrip(".").lower()
        return any(fnmatch.fnmatchcase(host, p.rstrip(".").lower()) for p in self.mx_patterns)


class Throttles(ConfigModel):
    """Rates for this pod (the operator divided the pool's among pods)."""

    rate: units.RateStr | None = Field(default=None, description="Global rate, e.g. '100/s'.")
    defaults: SiteLimits = Field(default_factory=SiteLimits, description="Per-site defaults.")
    providers: list[ProviderThrottle] = Field(
        default_factory=list, description="First matching entry wins."
    )

    def provider_for(self, mx_hosts: list[str]) -> ProviderThrottle | None:
        for provider in self.providers:
            if any(provider.matches(host) for host in mx_hosts):
                return provider
        return None


class Retry(ConfigModel):
    schedule: list[units.Duration] = Field(
        default_factory=lambda: ["5m", "10m", "30m", "1h", "2h", "4h"],
        min_length=1,
        description="Waits between attempts; the last repeats.",
    )
    max_age: units.Duration = Field(default="3d", description="Bounce after this long.")


class DKIMKey(ConfigModel):
    selector: str = Field(description="DKIM selector (s=).")
    algorithm: Literal["rsa", "ed25519"] = Field(default="rsa", description="Key type.")
    key_file: str = Field(description="PEM private key file (a mounted Secret key).")


class DKIMDomain(ConfigModel):
    domain: str = Field(description="d= of the signatures; also signs its subdomains' mail.")
    keys: list[DKIMKey] = Field(min_length=1, description="One signature per key (dual).")


class DKIM(ConfigModel):
    domains: list[DKIMDomain] = Field(default_factory=list, description="Signing domains.")
    require_signature: bool = Field(
        default=True,
        description="Hold mail whose From domain has no usable key instead of sending it.",
    )


class Warmup(ConfigModel):
    overflow: Literal["Defer", "WarmIPs"] = Field(
        default="Defer",
        description=(
            "Mail beyond the warming IPs' quota waits (Defer) or goes out through the leased "
            "warm IPs (WarmIPs)."
        ),
    )
    tier_order: list[str] = Field(
        default_factory=lambda: ["high", "medium", "low"],
        description="Engagement tiers, most engaged first; unknown tiers come last.",
    )


class Nameserver(ConfigModel):
    address: str = Field(description="Resolver IP address.")
    port: int = Field(default=53, ge=1, le=65535, description="Resolver port.")


class DNS(ConfigModel):
    nameservers: list[Nameserver] = Field(
        default_factory=list, description="Resolvers to use; the system's when empty."
    )
    timeout: units.Duration = Field(default="5s", description="Per lookup.")
    min_ttl: units.Duration = Field(default="5s", description="Shortest MX cache time.")
    max_ttl: units.Duration = Field(default="1h", description="Longest MX cache time.")


class Clock(ConfigModel):
    day_length: units.Duration = Field(
        default="24h",
        description=(
            "Length of a quota day. 24h: calendar days in `timezone`; another length: days of "
            "that many seconds from the Unix epoch (the sandbox runs warm-ups in seconds)."
        ),
    )
    timezone: str = Field(
        default="UTC",
        max_length=64,
        description=(
            "IANA zone whose local midnight starts a quota day (24h days only): the "
            "warm-up's `timezone`, so the senders' day is the warm-up's day."
        ),
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Bounces(ConfigModel):
    suppress_hard: bool = Field(default=True, description="Suppress hard-bounced recipients.")
    soft_to_hard_after: int = Field(default=3, ge=1, description="Soft bounces before hard.")


class Feedback(ConfigModel):
    enabled: bool = Field(default=True, description="Accept ARF reports.")


class Peers(ConfigModel):
    """How a pod finds the other pods of its pool (suppression replication, hand-off).

    `service`: the headless Service's DNS name; its A records are the pods, reached on their
    admin port (`submission.adminPort`) for replication and hand-off, with the peer token.
    `urls`: a static list of the pods' admin base URLs (sandbox, tests). Neither: this pod
    works alone.
    """

    service: str | None = Field(
        default=None, description="Headless Service DNS name, e.g. newsletters-pods.mail.svc."
    )
    urls: list[str] = Field(default_factory=list, description="Static pod admin base URLs.")
    pull_interval: units.Duration = Field(
        default="5s", description="How often missed suppression changes are pulled from peers."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Peers:
        if self.service and self.urls:
            raise ValueError("peers: give service or urls, not both")
        return self


class Suppression(ConfigModel):
    enabled: bool = Field(default=True, description="Check recipients against the pool list.")
    max_import_entries: int = Field(
        default=10_000, ge=1, description="Entries per bulk import request."
    )
    max_import_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Body size of a bulk import request."
    )


class Handoff(ConfigModel):
    """`POST /v1/drain?handoff=true`: queued mail moves to the pool's other pods."""

    timeout: units.Duration = Field(default="30s", description="Per re-submission request.")
    retry_every: units.Duration = Field(
        default="1s", description="Wait before trying a message again after a failure."
    )
    retarget_after: units.Duration = Field(
        default="2m",
        description=(
            "A message whose re-submission ended without a clear answer is retried at the same "
            "pod (it may have stored it) until that pod is gone from the peer list this long."
        ),
    )
    give_up_after: units.Duration = Field(
        default="10m",
        description=(
            "A message every pod rejects (HTTP 4xx other than auth, rate and draining answers) "
            "for this long is bounced, so the drain ends."
        ),
    )


class Deliverability(ConfigModel):
    """The bounce, feedback, suppression, unsubscribe and shaping layer (docs/deliverability.md).

    Keys (`link_keys`): `linkKeyDir` holds the key list that seals unsubscribe tokens, trace
    headers and VERP tags (`key-<unix seconds>` files, mounted from the pool's `-links`
    Secret); `peerTokenFile` the token pods use with each other (`-peers` Secret). Both must be
    the same on every pod, so a config with `peers` and without them is refused: nothing is
    derived from the admin token (rotating it would break every link sent). A lone pod without
    `linkKeyDir` seals with a random key of its own, kept in its spool.
    """

    bounce_domain: str | None = Field(
        default=None,
        description=(
            "Domain of the VERP return path b-<id>-<tag>@domain (its MX must reach the feedback "
            "port). No VERP when unset: the submitted envelope sender is kept."
        ),
    )
    feedback_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="SMTP port taking DSNs, ARF reports and mailto unsubscribes; off when unset.",
    )
    public_port: int | None = Field(
        default=8082, ge=0, le=65535,
        description=(
            "The public listener (HTTP): only the one-click unsubscribe pages "
            "/v1/unsubscribe/<token>, reached from the Internet. Off when null."
        ),
    )
    feedback_max_connections: int = Field(
        default=100, ge=1, description="Simultaneous sessions on the feedback port."
    )
    feedback_max_connections_per_client: int = Field(
        default=10, ge=1, description="Simultaneous feedback sessions from one IP address."
    )
    feedback_idle_timeout: units.Duration = Field(
        default="60s", description="A feedback session idle this long is closed."
    )
    feedback_data_timeout: units.Duration = Field(
        default="50s",
        description="Time for one DATA phase on the feedback port (421 4.4.2 when over); "
        "below feedbackIdleTimeout.",
    )
    reports: report_limits.ReportLimits = Field(
        default_factory=report_limits.ReportLimits,
        description="Replay window, per-source rate and size caps of the feedback port.",
    )
    link_key_dir: str | None = Field(
        default=None,
        description=(
            "Directory of link keys, files key-<unix seconds> (each at least 16 bytes): the "
            "newest whose time has come seals unsubscribe tokens, traces and VERP tags; every "
            "listed key verifies. Required with peers; a lone pod's own key when unset."
        ),
    )
    unsubscribe_base_url: str | None = Field(
        default=None,
        description=(
            "Public https base URL routed to the pods' publicPort; tokens are POSTed to "
            "<base>/v1/unsubscribe/<token>. No List-Unsubscribe headers when unset."
        ),
    )
    unsubscribe_mailto_domain: str | None = Field(
        default=None,
        description="Domain of the mailto: unsubscribe address; the bounce domain when unset.",
    )
    unsubscribe_max_age: units.Duration = Field(
        default="60d", description="Unsubscribe tokens older than this are refused."
    )
    peer_token_file: str | None = Field(
        default=None,
        description=(
            "Bearer tokens pods use with each other, one per line: the first is sent, every "
            "line is accepted (rotation). Required with peers."
        ),
    )
    peers: Peers = Field(default_factory=Peers)
    suppression: Suppression = Field(default_factory=Suppression)
    shaping: shaping_rules.ShapingRules = Field(
        default_factory=shaping_rules.ShapingRules,
        description="Reactive shaping rules per provider name (built-in defaults).",
    )
    shaping_base_rate: units.RateStr = Field(
        default="10/s",
        description="Rate a provider without a configured rate is slowed down from.",
    )
    handoff: Handoff = Field(default_factory=Handoff)

    @model_validator(mode="after")
    def _feedback_data_within_idle(self) -> Deliverability:
        _data_within_idle(self.feedback_data_timeout, self.feedback_idle_timeout,
                          "feedbackDataTimeout", "feedbackIdleTimeout")
        return self

    @model_validator(mode="after")
    def _pool_keys_given(self) -> Deliverability:
        """Pods of a pool must share their keys: refused, never derived, when missing."""
        if self.peers.service or self.peers.urls:
            missing = [name for name, value in (
                ("linkKeyDir", self.link_key_dir), ("peerTokenFile", self.peer_token_file),
            ) if value is None]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} required with peers: every pod of a pool must "
                    "hold the same keys (mount the pool's -links and -peers Secrets)"
                )
        return self

    @field_validator("unsubscribe_base_url")
    @classmethod
    def _unsubscribe_https(cls, value: str | None) -> str | None:
        """RFC 8058 wants https; loopback http is for tests (as `unsubscribe` allows)."""
        if value is not None and not (
            value.startswith("https://") or value.startswith("http://127.")
        ):
            raise ValueError("must be an https:// URL (RFC 8058 one-click unsubscribe)")
        return value


class SenderConfig(ConfigModel):
    """Everything a sender pod needs, except its identity (env) and its IPs (leases)."""

    generation: int | None = Field(
        default=None, description="Opaque revision set by the operator, echoed in /v1/stats."
    )
    pool: str = Field(default="", description="SendingPool name.")
    namespace: str = Field(default="", description="Namespace of the pool.")
    submission: Submission = Field(default_factory=Submission)
    admin_token_file: str | None = Field(
        default=None, description="Bearer token for /v1/* admin paths; open when omitted."
    )
    spool_dir: str = Field(default="/var/spool/mailfleet", description="Spool volume.")
    spool_sync: Literal["full", "normal"] = Field(
        default="full", description="full fsyncs every commit; normal only at checkpoints."
    )
    spool_window: int = Field(
        default=50_000, ge=1,
        description="Most pending deliveries held in memory; the rest is paged in from the spool.",
    )
    delivery: Delivery = Field(default_factory=Delivery)
    classes: list[MessageClass] = Field(default_factory=default_classes, min_length=1)
    throttles: Throttles = Field(default_factory=Throttles)
    retry: Retry = Field(default_factory=Retry)
    dkim: DKIM = Field(default_factory=DKIM)
    warmup: Warmup = Field(default_factory=Warmup)
    dns: DNS = Field(default_factory=DNS)
    clock: Clock = Field(default_factory=Clock)
    bounces: Bounces = Field(default_factory=Bounces)
    feedback: Feedback = Field(default_factory=Feedback)
    deliverability: Deliverability = Field(default_factory=Deliverability)
    events: event_config.Events = Field(
        default_factory=event_config.Events, description="Delivery events (docs/events.md)."
    )
    tracking: tracking_config.Tracking = Field(
        default_factory=tracking_config.Tracking, description="Open and click tracking."
    )
    kpis: event_config.Kpis = Field(
        default_factory=event_config.Kpis, description="Campaign KPIs (docs/kpis.md)."
    )

    @model_validator(mode="after")
    def _tracking_usable(self) -> SenderConfig:
        peers = self.deliverability.peers
        tracking_config.check(self.tracking, [(c.name, c.tracking) for c in self.classes],
                              peers=bool(peers.service or peers.urls))
        return self

    @model_validator(mode="after")
    def _classes_consistent(self) -> SenderConfig:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique: {names}")
        if self.submission.default_class and self.submission.default_class not in names:
            raise ValueError(f"submission.defaultClass {self.submission.default_class!r} unknown")
        reports = self.delivery.tls.reports.class_name
        if reports is not None and reports not in names:
            raise ValueError(f"delivery.tls.reports.class {reports!r} unknown")
        return self

    @model_validator(mode="after")
    def _ports_distinct(self) -> SenderConfig:
        """Each listener trusts different callers: two on one port would mix them."""
        s, d = self.submission, self.deliverability
        ports = [
            ("submission.smtpPort", s.smtp_port), ("submission.httpPort", s.http_port),
            ("submission.adminPort", s.admin_port),
            ("deliverability.publicPort", d.public_port),
            ("deliverability.feedbackPort", d.feedback_port),
        ]
        seen: dict[int, str] = {}
        for name, port in ports:
            if not port:  # None (off) or 0 (any free port)
                continue
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} must differ (both {port})")
            seen[port] = name
        return self

    def class_named(self, name: str) -> MessageClass | None:
        return next((c for c in self.classes if c.name == name), None)

    @property
    def default_class(self) -> str:
        return self.submission.default_class or self.classes[0].name

    @property
    def report_class(self) -> str:
        """The class of TLS-RPT mail: the configured one, else the highest-priority class that
        is not bulk (reports are machine mail expected within the day, never marketing)."""
        named = self.delivery.tls.reports.class_name
        if named is not None:
            return named
        plain = [c for c in self.classes if not c.bulk] or self.classes
        return max(plain, key=lambda c: c.priority).name

    @property
    def report_from(self) -> str | None:
        """From of TLS-RPT mail: the configured address, else tlsrpt-noreply@ the first
        signing domain; None when there is neither (no report goes by mail)."""
        configured = self.delivery.tls.reports.from_address
        if configured is not None:
            return configured
        return f"tlsrpt-noreply@{self.dkim.domains[0].domain}" if self.dkim.domains else None


class ConfigError(ValueError):
    """The file cannot be read or does not describe a valid config; the message says where."""


def parse_config(text: str) -> SenderConfig:
    """Validate YAML text; errors name the path of the bad field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    except RecursionError as exc:  # PyYAML parses nested collections recursively
        raise ConfigError("not valid YAML: nested too deeply") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping")
    try:
        return SenderConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(problems) from exc


def load_config(path: str | Path) -> tuple[SenderConfig, str]:
    """Read and validate the file; returns the config and a digest of the text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parse_config(text), hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_config(config: SenderConfig) -> str:
    """YAML as the operator writes it (camelCase, defaults omitted)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False)
