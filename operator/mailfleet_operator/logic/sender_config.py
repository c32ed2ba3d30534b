"""Rendering a SendingPool into the sender's config file (`mailfleet_sender.config`), pure.

One file per pool, read by every pod: limits are divided among the active pods here
(`throttle_division`), so all pods get the same share. What differs per pod is not in the
file: source IPs, HELO names and warm-up quotas travel in the pod's leases
(`PUT /v1/assignment`, see `assigning`), so moving an IP never rewrites the file. Only
whether the sender binds them is here: not in the CNI attachment modes (`egress_attachment`).

DKIM: per domain, the Active keys then the still-published Retiring ones (preference order:
the sender signs, per algorithm, with the first key whose file loads), as files of the pool's
one DKIM Secret (`<pool>-dkim`, mounted at `children.DKIM_DIR`). A DomainAuth that is
missing or without an Active key is left out and reported; `dkim.requireSignature` makes the
senders hold that domain's mail rather than send it unsigned. Secrets are never read here,
only named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailfleet_sender import config as sc

from mailfleet_operator.api import domainauth as da
from mailfleet_operator.api import providers
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import (
    children,
    egress_attachment,
    event_config,
    pool_secrets,
    submission_access,
    throttle_division,
)

# The key inside a DKIM key Secret that holds the PEM private key.
DKIM_SECRET_KEY = "private.pem"


@dataclass(frozen=True)
class DomainProblem:
    """Why a DomainAuth named by the pool cannot sign; Ready=False names it."""

    name: str
    reason: str  # DomainAuthNotFound, DomainAuthNotReady, NoActiveKey
    message: str


@dataclass(frozen=True)
class RenderInput:
    name: str
    namespace: str
    spec: sp.SendingPoolSpec
    active_pods: int
    domain_auths: Mapping[str, da.DomainAuth | None]  # by name; None when missing
    generation: int | None = None
    nameservers: Sequence[tuple[str, int]] = ()  # resolvers for the pods (sandbox, tests)
    day_length: str | None = None  # sandbox time scale
    timezone: str = "UTC"  # the warm-ups' zone: the senders' quota day starts at its midnight
    smtp_port: int | None = None  # MX port of the recipients (sandbox); 25 when None
    tls_ca_file: str | None = None  # extra trust anchors in the pods (private CA, sandbox)
    mta_sts_port: int | None = None  # HTTPS port of MTA-STS policy hosts (sandbox); 443
    dane_resolver: tuple[str, int] | None = None  # for pools whose spec names none
    submission_secrets: Mapping[str, str] = field(default_factory=dict)
    # DomainAuth key Secrets copied into the pool's DKIM Secret (None: assume all).
    dkim_available: Collection[str] | None = None
    # The keys of the Secrets spec.events and spec.tracking name (None: assume all there).
    event_secrets: event_config.SecretKeys | None = None


@dataclass(frozen=True)
class Rendered:
    config: sc.SenderConfig
    text: str
    digest: str
    mounts: tuple[children.SecretMount, ...]
    problems: tuple[DomainProblem, ...]
    signing_domains: tuple[str, ...]
    files_mounts: tuple[children.FilesMount, ...] = ()
    event_problems: tuple[event_config.EventProblem, ...] = ()


def _dkim_key_type(algorithm: str) -> str:
    return "ed25519" if algorithm == "ed25519" else "rsa"


SIGNING_STATES = ("Active", "Retiring")
"""Keys the senders may sign with: Active, and a Retiring key (still in DNS for `overlap`) as
the fallback of pods whose copy of the new key has not arrived yet."""
STAGED_STATES = ("Published", "Verified")
"""Keys copied to the pool's DKIM Secret ahead of their switch (not rendered): the kubelet
has long put the file in place when the key turns Active."""


def _signing_keys(obj: da.DomainAuth) -> list[da.DKIMKey]:
    """Keys in preference order: Active first, then Retiring, newest first within a state
    (`status.dkim.keys` lists the newest generation first)."""
    keys = (obj.status or da.DomainAuthStatus()).dkim.keys
    return [k for state in SIGNING_STATES for k in keys if k.state == state]


def dkim_key_secrets(
    domains: Sequence[str], objects: Mapping[str, da.DomainAuth | None]
) -> list[str]:
    """Names of the DomainAuth key Secrets whose private keys the pool's DKIM Secret holds:
    the signing keys (Active, Retiring) and the staged ones (Published, Verified)."""
    names: list[str] = []
    for name in domains:
        obj = objects.get(name)
        if obj is None:
            continue
        keys = (obj.status or da.DomainAuthStatus()).dkim.keys
        for key in [*_signing_keys(obj), *(k for k in keys if k.state in STAGED_STATES)]:
            if key.secret_name not in names:
                names.append(key.secret_name)
    return names


def render_dkim(
    domains: Sequence[str],
    objects: Mapping[str, da.DomainAuth | None],
    available: Collection[str] | None = None,
) -> tuple[sc.DKIM, list[DomainProblem]]:
    """Per domain, the keys in preference order: the sender signs, per algorithm, with the
    first key whose file loads. Keys live in the pool's DKIM Secret (`children.DKIM_DIR`);
    `available` names the key Secrets that could be copied there (None: all), the others
    are left out."""
    rendered: list[sc.DKIMDomain] = []
    problems: list[DomainProblem] = []
    for name in domains:
        obj = objects.get(name)
        if obj is None:
            problems.append(
                DomainProblem(name, "DomainAuthNotFound", f"DomainAuth {name} does not exist")
            )
            continue
        status = obj.status or da.DomainAuthStatus()
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        if not any(k.state == "Active" for k in status.dkim.keys):
            problems.append(
                DomainProblem(name, "NoActiveKey", f"DomainAuth {name} has no Active DKIM key")
            )
            continue
        signing = [
            k for k in _signing_keys(obj) if available is None or k.secret_name in available
        ]
        if not any(k.state == "Active" for k in signing):
            missing = [k.secret_name for k in _signing_keys(obj) if k.state == "Active"]
            problems.append(
                DomainProblem(
                    name,
                    "KeySecretMissing",
                    f"DomainAuth {name}: the Active key's Secret {', '.join(missing)} "
                    "cannot be read",
                )
            )
            if not signing:
                continue
        if ready is None or ready.status != "True":
            # Still sign with an Active key (it is in DNS), but say the domain is not Ready.
            problems.append(
                DomainProblem(
                    name,
                    "DomainAuthNotReady",
                    f"DomainAuth {name} is not Ready"
                    + (f": {ready.message}" if ready and ready.message else ""),
                )
            )
        keys = [
            sc.DKIMKey(
                selector=key.selector,
                algorithm=_dkim_key_type(key.algorithm),  # type: ignore[arg-type]
                key_file=children.dkim_key_path(key.secret_name),
            )
            for key in signing
        ]
        rendered.append(sc.DKIMDomain(domain=obj.spec.domain, keys=keys))
    return sc.DKIM(domains=rendered, require_signature=True), problems


def render_throttles(throttling: sp.Throttling, active_pods: int) -> sc.Throttles:
    """Pool-wide limits -> one pod's share, providers in precedence order."""
    divide = throttle_division
    per_site = throttle_division.divide_limits(
        throttle_division.Limits(
            messages_per_second=throttling.defaults.messages_per_second,
            messages_per_hour=throttling.defaults.messages_per_hour,
            max_connections=throttling.defaults.max_connections,
        ),
        active_pods,
    )
    rendered_providers = []
    for provider in providers.effective_providers(throttling):
        share = divide.divide_limits(
            divide.Limits(
                provider.messages_per_second, provider.messages_per_hour, provider.max_connections
            ),
            active_pods,
        )
        rendered_providers.append(
            sc.ProviderThrottle(
                name=provider.name,
                mx_patterns=list(provider.mx_patterns),
                messages_per_second=share.messages_per_second,
                messages_per_hour=share.messages_per_hour,
                max_connections=share.max_connections,
            )
        )
    return sc.Throttles(
        rate=divide.divide_rate_text(throttling.rate, active_pods),
        defaults=sc.SiteLimits(
            messages_per_second=per_site.messages_per_second,
            messages_per_hour=per_site.messages_per_hour,
            max_connections=per_site.max_connections or 1,
        ),
        providers=rendered_providers,
    )


FEEDBACK_PORT = sp.FEEDBACK_PORT


def render_deliverability(
    spec: sp.SendingPoolSpec, pool: str, namespace: str
) -> sc.Deliverability:
    """Peers through the headless Service (suppression replication, hand-off); the feedback
    port when the feedback loop is on. Link keys and the peer token from the pool's own
    Secrets (`pool_secrets`, mounted by `render_config`), never from the admin token."""
    return sc.Deliverability(
        peers=sc.Peers(service=f"{children.Names(pool).headless_service}.{namespace}.svc"),
        feedback_port=FEEDBACK_PORT if spec.feedback_loop.enabled else None,
        link_key_dir=pool_secrets.links_mount(pool).path,
        peer_token_file=pool_secrets.peer_token_path(pool),
        public_port=spec.submission.public_port,
    )


def _secret_mount(volume: str, name: str, items: Sequence[str] = ()) -> children.SecretMount:
    return children.SecretMount(volume=volume, secret_name=name, items=tuple(items))


def render_config(spec_in: RenderInput) -> Rendered:
    spec = spec_in.spec
    dkim, problems = render_dkim(spec.domains, spec_in.domain_auths, spec_in.dkim_available)
    mounts: list[children.SecretMount] = [
        pool_secrets.links_mount(spec_in.name), pool_secrets.peers_mount(spec_in.name),
    ]
    sub = spec.submission
    submission = sc.Submission(
        smtp_port=sub.smtp.port,
        http_port=sub.http.port,
        admin_port=sub.admin_port,
        allow_unauthenticated=sub.allow_unauthenticated,
        allow_plaintext_auth=sub.smtp.allow_plaintext_auth,
        smtp_from_domains=list(sub.smtp.from_domains),
        http_from_domains=list(sub.http.from_domains),
    )
    smtp = sub.smtp
    access = submission_access.credentials(spec, spec_in.name)
    if access.smtp_secret is not None:
        # A Secret directory, one file per user: only the user key of the generated Secret.
        mount = _secret_mount("smtp-auth", access.smtp_secret, access.smtp_items)
        mounts.append(mount)
        submission.credentials_file = mount.path
    if smtp.tls_secret_ref is not None:
        mount = _secret_mount("smtp-tls", smtp.tls_secret_ref.name, ("tls.crt", "tls.key"))
        mounts.append(mount)
        submission.tls_cert_file = f"{mount.path}/tls.crt"
        submission.tls_key_file = f"{mount.path}/tls.key"
    if access.api_key_secret is not None:
        key = access.api_key_key
        mount = _secret_mount("http-api-key", access.api_key_secret, (key,))
        mounts.append(mount)
        submission.api_key_file = f"{mount.path}/{key}"

    delivery = sc.Delivery(mode=spec.egress.mode, require_lease=bool(spec.egress.ips))
    if not egress_attachment.binds_source(spec.egress.attachment.mode):
        # The CNI source-NATs the holder pod to the leased IP, which this pod does not own.
        delivery.bind_source = False
    if spec_in.smtp_port is not None:
        delivery.smtp_port = spec_in.smtp_port
    delivery.tls = render_transport_security(spec.transport_security)
    if spec_in.tls_ca_file:
        delivery.tls.ca_file = spec_in.tls_ca_file
    if spec_in.mta_sts_port is not None:
        delivery.tls.mta_sts_port = spec_in.mta_sts_port
    if spec_in.dane_resolver is not None and delivery.tls.dane_resolver is None:
        address, port = spec_in.dane_resolver
        delivery.tls.dane_resolver = sc.DaneResolver(address=address, port=port)
    if spec.egress.mode == "relay" and spec.egress.relay is not None:
        relay = spec.egress.relay
        rendered_relay = sc.Relay(host=relay.host, port=relay.port, tls=relay.tls)
        if relay.credentials_secret_ref is not None:
            mount = _secret_mount(
                "relay-login", relay.credentials_secret_ref.name, ("username", "password")
            )
            mounts.append(mount)
            rendered_relay.username_file = f"{mount.path}/username"
            rendered_relay.password_file = f"{mount.path}/password"
        delivery.relay = rendered_relay
        delivery.require_lease = False

    config = sc.SenderConfig(
        generation=spec_in.generation,
        pool=spec_in.name,
        namespace=spec_in.namespace,
        submission=submission,
        admin_token_file=f"{children.ADMIN_DIR}/{children.ADMIN_TOKEN_KEY}",
        spool_dir=children.SPOOL_DIR,
        delivery=delivery,
        classes=[
            sc.MessageClass(name=c.name, priority=c.priority, max_age=c.max_age, bulk=c.bulk)
            for c in spec.classes
        ],
        throttles=render_throttles(spec.throttling, max(1, spec_in.active_pods)),
        retry=sc.Retry(schedule=list(spec.retry.schedule), max_age=spec.retry.max_age),
        dkim=dkim,
        warmup=sc.Warmup(overflow=spec.warmup_overflow),
        dns=sc.DNS(nameservers=[sc.Nameserver(address=a, port=p) for a, p in spec_in.nameservers]),
        bounces=sc.Bounces(
            suppress_hard=spec.bounces.suppress_hard,
            soft_to_hard_after=spec.bounces.soft_to_hard_after,
        ),
        feedback=sc.Feedback(enabled=spec.feedback_loop.enabled),
        deliverability=render_deliverability(spec, spec_in.name, spec_in.namespace),
    )
    reports = config.delivery.tls.reports
    if dkim.domains:  # reports by mail come from the pool's first domain, signed by its key
        reports.from_address = (
            f"{spec.transport_security.reports.from_local_part}@{dkim.domains[0].domain}"
        )
    if spec_in.day_length:
        config.clock = sc.Clock(day_length=spec_in.day_length)
        reports.interval = spec_in.day_length  # a report period is a (scaled) day
    elif spec_in.timezone != "UTC":
        config.clock = sc.Clock(timezone=spec_in.timezone)
    events = event_config.render_events(spec, spec_in.name, spec_in.event_secrets)
    # Validate the assembled model once more: assignments above bypass field validation.
    config = sc.SenderConfig.model_validate(
        _with_events(config.model_dump(by_alias=True), events)
    )
    text = sc.dump_config(config)
    return Rendered(
        config=config,
        text=text,
        digest=hashlib.sha256(text.encode()).hexdigest()[:16],
        mounts=tuple(mounts),
        problems=tuple(problems),
        signing_domains=tuple(d.domain for d in dkim.domains),
        files_mounts=events.mounts,
        event_problems=events.problems,
    )


def _accepts(*path: str) -> bool:
    """Whether the sender's config model has the field at `path` (camelCase aliases)."""
    model: Any = sc.SenderConfig
    for alias in path:
        fields = {f.alias or name: f for name, f in getattr(model, "model_fields", {}).items()}
        if alias not in fields:
            return False
        annotation = fields[alias].annotation
        args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
        model = args[0] if args else annotation
        if getattr(model, "__origin__", None) is list:
            model = model.__args__[0]
    return True


def _with_events(data: dict[str, Any], events: event_config.EventsRendered) -> dict[str, Any]:
    """The config with its events, tracking and per-class tracking sections, each rendered
    as far as the sender's config model (`mailfleet_sender.config`) has it: the sections
    land in the sender with issue 20 (a sender without them would refuse the whole file)."""
    if _accepts("events"):
        data["events"] = events.events
    if events.tracking is not None and _accepts("tracking"):
        tracking = dict(events.tracking)
        if not _accepts("tracking", "tlsCertFile"):
            tracking.pop("tlsCertFile", None)
            tracking.pop("tlsKeyFile", None)
        data["tracking"] = tracking
    if _accepts("classes", "tracking"):
        for entry in data["classes"]:
            entry["tracking"] = events.class_tracking.get(entry["name"])
    return data


def render_transport_security(ts: sp.TransportSecurity) -> sc.DeliveryTLS:
    """spec.transportSecurity as the sender's `delivery.tls` (same fields, per pod)."""
    return sc.DeliveryTLS(
        require_tls=ts.require_tls,
        min_version=ts.min_version,
        dane=ts.dane,
        dane_resolver=(
            sc.DaneResolver(address=ts.dane_resolver.address, port=ts.dane_resolver.port)
            if ts.dane_resolver is not None else None
        ),
        mta_sts=ts.mta_sts,
        providers=[
            sc.ProviderTLS(name=p.name, require_tls=p.require_tls, min_version=p.min_version,
                           dane=p.dane, mta_sts=p.mta_sts)
            for p in ts.providers
        ],
        reports=sc.TLSReports(enabled=ts.reports.enabled, organization=ts.reports.organization,
                              contact=ts.reports.contact),
    )
