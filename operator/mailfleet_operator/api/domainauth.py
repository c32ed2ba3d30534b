"""DomainAuth (`da`): everything DNS says about a sending domain (DESIGN.md §2).

Pure (no I/O). The spec says which SPF, DKIM, DMARC and BIMI records the domain should have
and how DKIM keys rotate; the status lists the records, whether DNS serves them, and the DKIM
key life cycle: Pending -> Published -> Verified -> Active -> Retiring -> Retired. Private
keys live only in Secrets (`keys[].secretName`), never in the status.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from mailfleet_operator.api import common
from mailfleet_operator.api.common import (
    Conditions,
    DomainName,
    Duration,
    HttpsURL,
    IPAddress,
    IPOrCIDR,
    MailtoURI,
    RecordName,
    Rule,
    SpecModel,
    StatusModel,
)

KIND = "DomainAuth"
PLURAL = "domainauths"
SINGULAR = "domainauth"
SHORT_NAMES = ("da",)

DKIMAlgorithm = Literal["rsa-2048", "rsa-3072", "ed25519", "dual"]
KeyAlgorithm = Literal["rsa-2048", "rsa-3072", "ed25519"]
KeyRetention = Literal["Retain", "Delete"]
KeyState = Literal["Pending", "Published", "Verified", "Active", "Retiring", "Retired"]
DMARCPolicy = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]
PublishMode = Literal["Manual", "ExternalDNS"]
RecordType = Literal["TXT", "CNAME", "MX", "A", "AAAA"]

READY = "Ready"
DKIM_READY = "DKIMReady"
SPF_VALID = "SPFValid"
DMARC_VALID = "DMARCValid"
BIMI_VALID = "BIMIValid"
DKIM_ROTATION_STALLED = "DKIMRotationStalled"
CONDITION_TYPES = (READY, DKIM_READY, SPF_VALID, DMARC_VALID, BIMI_VALID, DKIM_ROTATION_STALLED)

SELECTOR_PREFIX_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"

SPF_LOOKUP_LIMIT = 10
"""RFC 7208 §4.6.4: DNS lookups one SPF check may cause (include, a, mx, ptr, exists)."""
MAX_REPORT_URIS = 16


class DKIM(SpecModel):
    """DKIM signing keys and their rotation."""

    algorithm: DKIMAlgorithm = Field(
        default="rsa-2048",
        description=(
            "rsa-2048, rsa-3072, ed25519, or dual (an RSA-2048 and an Ed25519 key side by "
            "side, every message signed with both: Ed25519 for receivers that know it, RSA "
            "for the rest)."
        ),
    )
    selector_prefix: str = Field(
        default="mf",
        pattern=SELECTOR_PREFIX_PATTERN,
        max_length=32,
        description=(
            "Start of every selector name (a DNS label); selectors are <prefix>-<n> (and "
            "<prefix>-<n>-ed for the Ed25519 key of a dual pair), n counting up, so a new key "
            "never reuses a published name."
        ),
    )
    rotate_every: Annotated[Duration, common.at_least("1d")] = Field(
        default="90d",
        description=(
            "Rotate the active key once it is older than this; at least 1d, as every "
            "rotation publishes a record and waits for DNS and the pools before the switch."
        ),
    )
    overlap: Annotated[Duration, common.at_least("1h")] = Field(
        default="1h",
        description=(
            "How long a replaced key stays published once no pool signs with it, so mail "
            "signed with it still verifies; at least 1h and at least the TTL of its record "
            "(receivers verify queued and retried mail long after it was signed)."
        ),
    )
    revision_history_limit: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retired keys kept (as Secrets) after their record is removed.",
    )
    key_retention: KeyRetention = Field(
        default="Retain",
        description=(
            "Retain: the private-key Secrets outlive the DomainAuth (no owner reference), and "
            "a DomainAuth re-created with the same name and domain adopts them; Delete: they "
            "are owned by the DomainAuth and garbage-collected with it."
        ),
    )


class SPF(SpecModel):
    """The domain's one v=spf1 record; the pools' egress IPs are added automatically."""

    rules = (
        Rule(
            cel=f"self.flatten || size(self.include) <= {SPF_LOOKUP_LIMIT}",
            message=(
                f"spf.include names more than {SPF_LOOKUP_LIMIT} domains: RFC 7208 allows "
                f"{SPF_LOOKUP_LIMIT} DNS lookups per SPF check; drop includes or set "
                "spf.flatten"
            ),
            holds=lambda spf: spf.flatten or len(spf.include) <= SPF_LOOKUP_LIMIT,
        ),
    )

    include: list[RecordName] = Field(
        default_factory=list,
        description=(
            "Names whose SPF is included, e.g. amazonses.com for a relay or _spf.google.com."
        ),
    )
    extra_ips: list[IPOrCIDR] = Field(
        default_factory=list,
        alias="extraIPs",
        description="More senders (IPs or CIDR networks) besides the pools' IPs.",
    )
    all: Literal["~all", "-all"] = Field(
        default="~all", description="Verdict for other senders: ~all (softfail) or -all (fail)."
    )
    flatten: bool = Field(
        default=False,
        description=(
            "Resolve includes into ip4/ip6 mechanisms so the record stays under the RFC 7208 "
            "limit of 10 DNS lookups."
        ),
    )


class DMARC(SpecModel):
    """The _dmarc TXT record."""

    policy: DMARCPolicy = Field(
        default="none",
        description="What receivers do with unaligned mail: none, quarantine or reject.",
    )
    subdomain_policy: DMARCPolicy | None = Field(
        default=None, description="Policy for subdomains (sp=); the policy when omitted."
    )
    pct: int = Field(
        default=100, ge=0, le=100, description="Percentage of failing mail the policy applies to."
    )
    rua: Annotated[list[MailtoURI], common.unique_items("rua URI")] = Field(
        default_factory=list,
        max_length=MAX_REPORT_URIS,
        description="Where aggregate reports go, e.g. mailto:dmarc@example.com.",
    )
    ruf: Annotated[list[MailtoURI], common.unique_items("ruf URI")] = Field(
        default_factory=list,
        max_length=MAX_REPORT_URIS,
        description="Where failure (forensic) reports go.",
    )
    adkim: Alignment = Field(default="r", description="DKIM alignment: r (relaxed) or s (strict).")
    aspf: Alignment = Field(default="r", description="SPF alignment: r (relaxed) or s (strict).")


class BIMI(SpecModel):
    """The default._bimi record showing the brand logo in supporting mailboxes."""

    logo_url: HttpsURL = Field(alias="logoURL", description="HTTPS URL of the SVG Tiny PS logo.")
    authority_url: HttpsURL | None = Field(
        default=None,
        alias="authorityURL",
        description="HTTPS URL of the Verified Mark Certificate (PEM), if any.",
    )


TLSRPT_URI_PATTERN = r"^(mailto:[^@\s,!;]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}|https://[^\s,;/?#]+(/[^\s,;]*)?)$"

TLSRPTURI = Annotated[str, Field(pattern=TLSRPT_URI_PATTERN, max_length=512)]


class TLSRPT(SpecModel):
    """The `_smtp._tls` TXT record (RFC 8460 §3): where receivers send TLS reports about mail
    sent to this domain."""

    rua: Annotated[list[TLSRPTURI], common.unique_items("rua URI")] = Field(
        min_length=1,
        max_length=MAX_REPORT_URIS,
        description="mailto: or https: URIs, e.g. mailto:tls-reports@example.com.",
    )


class Publish(SpecModel):
    """How the records reach DNS."""

    mode: PublishMode = Field(
        default="Manual",
        description=(
            "Manual: records are listed in status for you to publish; ExternalDNS: a "
            "DNSEndpoint (externaldns.k8s.io/v1alpha1) is created for external-dns."
        ),
    )
    ttl: int = Field(default=300, ge=30, le=86400, description="TTL in seconds of the records.")


class Verification(SpecModel):
    """How the operator checks that DNS serves the records."""

    nameservers: list[IPAddress] = Field(
        default_factory=list,
        description="Resolvers to query (IPs); the operator's system resolvers when empty.",
    )
    port: int = Field(default=53, ge=1, le=65535, description="DNS port of the nameservers.")
    interval: Annotated[Duration, common.at_least("10s")] = Field(
        default="5m",
        description=(
            "How often the records are checked; at least 10s, as each check queries every "
            "nameserver for every record (0s would query them in a loop)."
        ),
    )


def _inside_domain(spec: DomainAuthSpec) -> bool:
    if spec.return_path is None:
        return True
    path, domain = spec.return_path.lower(), spec.domain.lower()
    return path == domain or path.endswith("." + domain)


class DomainAuthSpec(SpecModel):
    """Desired DNS authentication of one sending domain."""

    rules = (
        Rule(
            cel=(
                "!has(self.returnPath) || self.returnPath.lowerAscii() == "
                "self.domain.lowerAscii() || "
                "self.returnPath.lowerAscii().endsWith('.' + self.domain.lowerAscii())"
            ),
            message=(
                "returnPath must be the domain or a name under it (e.g. bounces.example.com "
                "for example.com): its SPF record is written in the domain's zone, and DMARC "
                "aligns SPF on it"
            ),
            holds=_inside_domain,
        ),
    )

    domain: DomainName = Field(description="The sending domain (RFC 5322 From), e.g. example.com.")
    dkim: DKIM = Field(default_factory=DKIM, description="DKIM keys and rotation.")
    spf: SPF = Field(default_factory=SPF, description="The SPF record.")
    dmarc: DMARC = Field(default_factory=DMARC, description="The DMARC record.")
    bimi: BIMI | None = Field(default=None, description="The BIMI record; none when omitted.")
    tlsrpt: TLSRPT | None = Field(
        default=None, description="The TLS-RPT record (_smtp._tls); none when omitted."
    )
    return_path: DomainName | None = Field(
        default=None,
        description=(
            "Envelope sender (bounce) domain, e.g. bounces.example.com; it gets its own SPF "
            "record. The domain itself when omitted."
        ),
    )
    publish: Publish = Field(default_factory=Publish, description="How the records reach DNS.")
    verification: Verification = Field(
        default_factory=Verification, description="How DNS is checked."
    )


# --- status -------------------------------------------------------------------------------------


class DNSRecord(StatusModel):
    """One record the domain needs."""

    name: str = Field(
        description="Fully qualified record name, e.g. mf-20250101._domainkey.example.com."
    )
    type: RecordType = Field(description="Record type, e.g. TXT.")
    value: str = Field(description="Record value as it should be published.")
    published: bool = Field(default=False, description="Whether DNS served exactly this value.")
    checked_at: datetime.datetime | None = Field(
        default=None,
        description=(
            "When a check first found DNS as `published` and `problem` say (checks that find "
            "nothing new do not rewrite it)."
        ),
    )
    problem: str | None = Field(default=None, description="What is wrong, when not published.")


class DKIMKey(StatusModel):
    """One DKIM key; its private half is only in the Secret."""

    selector: str = Field(description="Selector of the key.")
    algorithm: KeyAlgorithm = Field(description="rsa-2048, rsa-3072 or ed25519.")
    state: KeyState = Field(
        description="Pending, Published, Verified, Active, Retiring or Retired."
    )
    secret_name: str = Field(description="Secret holding the private key.")
    created_at: datetime.datetime | None = Field(default=None, description="When the key was made.")
    activated_at: datetime.datetime | None = Field(
        default=None, description="When senders began signing with the key."
    )
    retiring_since: datetime.datetime | None = Field(
        default=None, description="When the key stopped signing (still published for overlap)."
    )


class DKIMStatus(StatusModel):
    """Where the DKIM key rotation stands."""

    active: str | None = Field(
        default=None,
        description=(
            "Selector senders sign with; with the dual algorithm both selectors, "
            "comma-separated (RSA first)."
        ),
    )
    pending: str | None = Field(
        default=None,
        description="Selector(s) of the next key, published but not yet signing.",
    )
    retiring: list[str] = Field(
        default_factory=list, description="Selectors still published but no longer signing."
    )
    next_rotation_at: datetime.datetime | None = Field(
        default=None, description="When the next rotation starts."
    )
    keys: list[DKIMKey] = Field(
        default_factory=list,
        description="Every key not yet deleted, newest first.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["selector"],
        },
    )


class DomainAuthStatus(StatusModel):
    """Observed state of a DomainAuth."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status was computed from."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="Ready, DKIMReady, SPFValid and DMARCValid.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    records: list[DNSRecord] = Field(
        default_factory=list, description="Every record the domain needs, and whether DNS has it."
    )
    dkim: DKIMStatus = Field(default_factory=DKIMStatus, description="DKIM key rotation.")
    active_selector: str | None = Field(
        default=None,
        description="Active selector(s), comma-separated, for `kubectl get da`.",
    )


class DomainAuth(SpecModel):
    """The DNS authentication (SPF, DKIM, DMARC, BIMI) of a sending domain, kept right."""

    api_version: Literal["mailfleet.io/v1alpha1"] = Field(
        default="mailfleet.io/v1alpha1", description="mailfleet.io/v1alpha1"
    )
    kind: Literal["DomainAuth"] = Field(default="DomainAuth", description="DomainAuth")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: DomainAuthSpec = Field(description="Desired DNS authentication.")
    status: DomainAuthStatus | None = Field(default=None, description="Observed state.")
