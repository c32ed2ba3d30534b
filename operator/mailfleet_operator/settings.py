"""Operator settings (flags and `MAILFLEET_OPERATOR_*` environment variables) and its clock.

Every limit and delay the controllers use is here, defaulted and documented, so the Helm
chart and the sandbox set them the same way. `time_scale` exists for the sandbox demo only
(a day in seconds); it is 1 unless set explicitly, and production never sets it.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailfleet_operator.logic import egress_networks

ENV_PREFIX = "MAILFLEET_OPERATOR_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces to serve; empty with all_namespaces=False: 'default'."
    )
    all_namespaces: bool = Field(default=False, description="Serve every namespace.")
    standalone: bool = Field(
        default=True, description="Run without kopf peering (a single replica)."
    )
    peering_name: str = Field(default="mailfleet", description="kopf peering object name.")
    priority: int = Field(
        default=0, description="Peering priority; the highest-priority live peer serves."
    )
    kubeconfig: str | None = Field(default=None, description="kubeconfig path ($KUBECONFIG).")
    http_host: str = Field(default="0.0.0.0", description="Address of /healthz, /readyz, /metrics.")
    http_port: int = Field(
        default=8080, ge=-1, le=65535,
        description="Port of /healthz, /readyz and /metrics; 0 picks a free one, -1 disables.",
    )
    dns_nameservers: tuple[str, ...] = Field(
        default=(),
        description=(
            "Override for every DomainAuth's verification.nameservers, as ip or ip:port "
            "(sandbox and split-horizon set-ups)."
        ),
    )
    dns_timeout: float = Field(default=3.0, gt=0, description="Seconds per DNS query.")
    dns_authoritative_port: int = Field(
        default=53, ge=1, le=65535,
        description=(
            "Port on which the zones' authoritative nameservers (found through NS records) "
            "are asked for DKIM records; 53 everywhere but a test bed."
        ),
    )
    step_delay: float = Field(
        default=1.0, ge=0,
        description="Seconds before the next reconcile after a rotation step (one step each).",
    )
    stall_checks: int = Field(
        default=3, ge=1,
        description=(
            "Verification intervals a new DKIM key may stay Published, invisible in DNS, "
            "before the rotation is reported stalled."
        ),
    )
    error_delay: float = Field(
        default=10.0, gt=0, description="Seconds before retrying a reconcile that failed."
    )
    time_scale: float = Field(
        default=1.0, gt=0,
        description="Sandbox only: operator time runs this many times faster than real time.",
    )
    warmup_day_seconds: float | None = Field(
        default=None, gt=0,
        description=(
            "Sandbox only: an IPWarmup day lasts this many seconds (counted from the Unix "
            "epoch, like the senders' clock.dayLength) instead of a calendar day; unset in "
            "production."
        ),
    )
    # --- SendingPool controller (issue 7) ---
    lease_duration: float = Field(
        default=4.0, gt=0,
        description=(
            "Seconds an egress IP lease lasts; bounds how long a partitioned pod may keep an "
            "IP before another pod can get it (failover time of a partition)."
        ),
    )
    lease_renew_interval: float = Field(
        default=1.5, gt=0,
        description="Seconds between lease renewals; also the pool reconcile period (halved).",
    )
    lease_clock_skew: float = Field(
        default=0.5, ge=0,
        description="Seconds of clock difference between operator and pods the leases allow for.",
    )
    pod_admin_timeout: float = Field(
        default=1.5, gt=0,
        description=(
            "Seconds per call to a sender pod's admin endpoint. A holder that does not answer "
            "a renewal within it is not renewed again, so its IP moves at most "
            "renewal interval + this + lease duration + skew after it froze."
        ),
    )
    drain_timeout: float = Field(
        default=600.0, gt=0,
        description="Seconds a scale-down waits for a pod's queue to empty (then its PVC is kept).",
    )
    autoscale_stabilization: float = Field(
        default=300.0, ge=0,
        description=(
            "Seconds of low queue an autoscaled SendingPool waits before scaling down (the "
            "HPA's default window); scaling up is immediate."
        ),
    )
    stats_interval: float = Field(
        default=10.0, gt=0, description="Seconds between reads of the pods' /v1/stats."
    )
    warmup_quota_chunk: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description=(
            "Messages of a warming IP's daily quota one lease renewal may grant beyond what "
            "the holder reported sent; a holder lost mid-day blocks only that much. 'auto': "
            "max(10, ceil(rate * lease_renew_interval * 2)), rate being the larger of the "
            "day's even pace (quota / day) and the IP's observed send rate."
        ),
    )
    sender_image: str = Field(
        default="ghcr.io/mailfleet/sender:0.1.0",
        description="Sender image of pools that name none.",
    )
    sender_nameservers: tuple[str, ...] = Field(
        default=(), description="Resolvers rendered into the senders' config, ip or ip:port."
    )
    sender_smtp_port: int | None = Field(
        default=None, ge=1, le=65535,
        description=(
            "Destination port of MX hosts rendered into the senders' config (delivery.smtpPort);"
            " 25 when unset. Environment, not policy: the sandbox's simulated providers listen"
            " on an unprivileged port."
        ),
    )
    sender_tls_ca_file: str | None = Field(
        default=None,
        description=(
            "Path, inside the sender pods, of extra trust anchors (PEM) for MX certificates "
            "and MTA-STS policy hosts (delivery.tls.caFile): a private CA, or the sandbox's."
        ),
    )
    sender_mta_sts_port: int | None = Field(
        default=None, ge=1, le=65535,
        description=(
            "HTTPS port of MTA-STS policy hosts rendered into the senders' config "
            "(delivery.tls.mtaStsPort); 443 when unset. Test beds only."
        ),
    )
    sender_dane_resolver: str | None = Field(
        default=None,
        description=(
            "Validating resolver (ip or ip:port) rendered as delivery.tls.daneResolver for "
            "pools whose spec.transportSecurity names none (a node-local validating resolver)."
        ),
    )
    refused_egress_networks: tuple[str, ...] = Field(
        default=egress_networks.DEFAULT_REFUSED,
        description=(
            "Networks (CIDR) from which a SendingPool may not take an egress IP; a pool naming "
            "one is refused like an invalid spec (its last good spec keeps running). Default: "
            "unspecified, loopback, link-local, multicast and broadcast, which a real cluster "
            "cannot send mail from; the sandbox allows loopback. Empty: refuse none."
        ),
    )
    webhook_loopback_http: bool = Field(
        default=False,
        description=(
            "Sandbox only: accept plain http:// event webhook URLs to 127.0.0.0/8 addresses "
            "(spec.events.webhooks[].url). Otherwise a pool naming one is refused like an "
            "invalid spec (its last good spec keeps running): events carry recipients and "
            "are signed, never sent in clear on a real network."
        ),
    )
    # --- Leader election (issue 14): what keeps two replicas from granting IPs at once ---
    leader_election: bool = Field(
        default=True,
        description=(
            "Elect a leader through a coordination.k8s.io Lease; only the leader grants and "
            "renews IP leases, and a leader that cannot renew exits. kopf peering "
            "(standalone=false) only coordinates handlers and does not fence."
        ),
    )
    leader_election_namespace: str | None = Field(
        default=None,
        description=(
            "Namespace of the leader Lease; unset: $POD_NAMESPACE, else the connection's "
            "default namespace."
        ),
    )
    leader_lease_name: str = Field(
        default="mailfleet-operator-leader", description="Name of the leader Lease."
    )
    leader_lease_duration: float = Field(
        default=15.0, gt=0,
        description=(
            "Seconds another replica waits, by its own clock, after it last saw the leader "
            "Lease change before taking it over."
        ),
    )
    leader_renew_deadline: float = Field(
        default=10.0, gt=0,
        description=(
            "Seconds after its last successful renewal a leader stops leading (and exits); "
            "below leader_lease_duration."
        ),
    )
    leader_retry_period: float = Field(
        default=2.0, gt=0,
        description="Seconds between attempts to acquire or renew; below leader_renew_deadline.",
    )
    operator_namespace: str | None = Field(
        default=None,
        description=(
            "Namespace of the operator's pods, let in to the sender pods' admin port by each "
            "pool's NetworkPolicy; unset: $POD_NAMESPACE, else 'default'."
        ),
    )
    operator_pod_labels: tuple[str, ...] = Field(
        default=("app.kubernetes.io/name=mailfleet", "app.kubernetes.io/component=operator"),
        description="Labels (key=value) of the operator's pods, for the same NetworkPolicy rule.",
    )
    log_format: Literal["json", "text"] = Field(default="json", description="Log line format.")
    log_level: str = Field(default="INFO", description="Python logging level.")

    @field_validator("refused_egress_networks")
    @classmethod
    def _networks_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        egress_networks.parse_networks(value)  # ValueError names the bad one
        return value

    @model_validator(mode="after")
    def _leader_timings_nest(self) -> Settings:
        if not (
            self.leader_retry_period < self.leader_renew_deadline < self.leader_lease_duration
        ):
            raise ValueError(
                "leader election needs leader_retry_period < leader_renew_deadline < "
                f"leader_lease_duration, got {self.leader_retry_period} / "
                f"{self.leader_renew_deadline} / {self.leader_lease_duration}"
            )
        return self

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Environment first, then explicit overrides (flags) on top."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            annotation = str(field.annotation)
            if "tuple" in annotation:
                values[name] = tuple(p for p in raw.replace(",", " ").split() if p)
            elif "bool" in annotation:
                values[name] = raw.lower() in ("1", "true", "yes", "on")
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


class Clock:
    """Wall-clock time, sped up by `time_scale` in the sandbox.

    Controllers read `now()` for everything they write or compare (key ages, overlaps) and
    turn operator-time durations into real waits with `real_seconds`.
    """

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale
        self._origin_wall = datetime.datetime.now(datetime.UTC)
        self._origin_mono = time.monotonic()

    def now(self) -> datetime.datetime:
        if self.time_scale == 1.0:
            return datetime.datetime.now(datetime.UTC)
        elapsed = (time.monotonic() - self._origin_mono) * self.time_scale
        return self._origin_wall + datetime.timedelta(seconds=elapsed)

    def monotonic(self) -> float:
        """Seconds on a clock no wall-clock step moves (leases and deadlines): real seconds,
        never scaled."""
        return time.monotonic()

    def real_seconds(self, duration: datetime.timedelta) -> float:
        return max(duration.total_seconds() / self.time_scale, 0.0)
