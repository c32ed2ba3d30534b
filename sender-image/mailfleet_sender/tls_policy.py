"""Transport security per destination: which TLS each MX host of a domain must offer, decided
from what DNS and the MTA-STS policy said. Pure (no I/O): the lookups are done by
`transport_security`, the handshake and checks by `delivering`.

Order of precedence (DESIGN.md §3, RFC 7672 §2.2, RFC 8461 §2):
1. DANE: the domain's MX RRset and an MX host's TLSA RRset are DNSSEC-secure (the AD bit from
   the validating resolver the config names). That host's certificate must match a TLSA
   record; no plaintext, no fallback. A TLSA lookup that failed (bogus or SERVFAIL) under a
   secure MX makes that host unusable: an attacker who can break the lookup must not be able
   to strip TLS.
2. MTA-STS: hosts not covered by DANE follow the domain's policy. `enforce`: only MX hosts
   matching the policy's patterns, WebPKI-valid certificate for the MX name, no fallback.
   `testing`: the same check is made and reported (TLS-RPT) but never blocks delivery.
3. Otherwise opportunistic STARTTLS (RFC 7435): encrypt when offered without checking the
   certificate, and after a failed handshake retry the same host in clear on a new connection.
   `requireTLS` (pool or provider setting) removes the clear retry.

A check that fails where no fallback is allowed defers the message with a 4.7.5 reply; it is
never sent in clear.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from mailfleet_sender import dane

MAX_STS_AGE = 31_557_600
"""RFC 8461 §3.2: max_age is at most one year."""
STS_MAX_BYTES = 64 * 1024
"""RFC 8461 §3.3: a policy body larger than this is refused."""


class Mode(enum.StrEnum):
    """What governs a host's TLS (the `policy` label of metrics and TLS-RPT policy types)."""

    DANE = "dane"
    MTA_STS = "mta-sts"
    OPPORTUNISTIC = "opportunistic"
    REQUIRE_TLS = "require-tls"
    NONE = "none"


class Result(enum.StrEnum):
    """RFC 8460 §4.3 result types (failures), plus success."""

    SUCCESS = "success"
    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective TLS settings for one destination (pool defaults, then the provider's)."""

    opportunistic: bool = True
    require_tls: bool = False
    min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    dane: bool = True
    mta_sts: bool = True


# --------------------------------------------------------------------------- MTA-STS text


@dataclasses.dataclass(frozen=True)
class StsPolicy:
    """A parsed `/.well-known/mta-sts.txt` (RFC 8461 §3.2)."""

    mode: Literal["enforce", "testing", "none"]
    mx: tuple[str, ...]
    max_age: int
    text: str = ""
    """The body as fetched, for the TLS-RPT `policy-string`."""

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)


class PolicyError(ValueError):
    """The policy body or TXT record is not valid; the message says why."""


_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def parse_sts_record(texts: Sequence[str]) -> str | None:
    """The `id` of the one `v=STSv1` TXT record among `texts` (RFC 8461 §3.1); None when no
    record starts with `v=STSv1`. Several such records, or a bad one, is an error."""
    records = [t for t in texts if t.strip().startswith("v=STSv1")]
    if not records:
        return None
    if len(records) > 1:
        raise PolicyError("more than one v=STSv1 record")
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if fields.get("v") != "STSv1":
        raise PolicyError("v=STSv1 must come first")
    sts_id = fields.get("id", "")
    if not _STS_ID.match(sts_id):
        raise PolicyError(f"bad id {sts_id!r}")
    return sts_id


def parse_sts_policy(text: str) -> StsPolicy:
    """Parse a policy body; unknown keys are ignored (RFC 8461 §3.2), missing ones refused."""
    if len(text.encode()) > STS_MAX_BYTES:
        raise PolicyError("policy larger than 64 KiB")
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"not a key: value line: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        elif key not in fields:
            fields[key] = value
    if fields.get("version") != "STSv1":
        raise PolicyError("version must be STSv1")
    mode: Literal["enforce", "testing", "none"]
    if fields.get("mode") == "enforce":
        mode = "enforce"
    elif fields.get("mode") == "testing":
        mode = "testing"
    elif fields.get("mode") == "none":
        mode = "none"
    else:
        raise PolicyError(f"bad mode {fields.get('mode')!r}")
    age_text = fields.get("max_age", "")
    if not age_text.isdigit() or len(age_text) > 10:
        raise PolicyError(f"bad max_age {age_text!r}")
    if mode != "none" and not mx:
        raise PolicyError("no mx pattern")
    return StsPolicy(
        mode=mode, mx=tuple(mx), max_age=min(int(age_text), MAX_STS_AGE), text=text
    )


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact, or `*.` matching exactly one leftmost label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


# --------------------------------------------------------------------------- decisions


@dataclasses.dataclass(frozen=True)
class TlsaAnswer:
    """The TLSA lookup of one MX host through the validating resolver."""

    status: Literal["secure", "insecure", "bogus"]
    records: tuple[dane.TLSA, ...] = ()


@dataclasses.dataclass(frozen=True)
class DaneAnswer:
    """What the validating resolver said about a domain's MX RRset and its hosts' TLSA."""

    mx_secure: bool
    tlsa: Mapping[str, TlsaAnswer] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StsAnswer:
    """The domain's MTA-STS state: the policy in force (fresh or cached) and, when the last
    discovery or fetch failed, why (reported even when a cached policy still applies)."""

    policy: StsPolicy | None
    error: Result | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class HostSecurity:
    """What one MX host must offer, and what is allowed when it does not."""

    mode: Mode
    starttls: bool
    """Ask for STARTTLS."""
    fallback: bool
    """A failed handshake (or no STARTTLS) may be retried in clear."""
    verify: Literal["none", "webpki", "dane"] = "none"
    tlsa: tuple[dane.TLSA, ...] = ()
    enforced: bool = True
    """False in MTA-STS testing mode: a failed check is reported, delivery goes on."""
    min_version: str = "TLSv1.2"
    refused: Result | None = None
    """Set when the host must not be used at all (and why)."""
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class DomainPolicy:
    """Per MX host security of one recipient domain, and the policy reported in TLS-RPT."""

    domain: str
    hosts: Mapping[str, HostSecurity]
    sts: StsPolicy | None = None
    sts_error: Result | None = None

    @property
    def key(self) -> str:
        """Equal for deliveries that may share one connection."""
        return self.domain if self.strict else ""

    @property
    def strict(self) -> bool:
        """Some host of the domain is held to more than opportunistic TLS."""
        strict = (Mode.DANE, Mode.MTA_STS, Mode.REQUIRE_TLS)
        return any(h.mode in strict for h in self.hosts.values())

    def host(self, name: str) -> HostSecurity:
        return self.hosts.get(name.lower().rstrip("."), _OPPORTUNISTIC)


_OPPORTUNISTIC = HostSecurity(mode=Mode.OPPORTUNISTIC, starttls=True, fallback=True)


def decide(
    *,
    domain: str,
    mx_hosts: Sequence[str],
    settings: Settings,
    dane_answer: DaneAnswer | None,
    sts_answer: StsAnswer | None,
) -> DomainPolicy:
    """The security of every MX host of `domain` (see the module docstring for the order)."""
    hosts: dict[str, HostSecurity] = {}
    sts = sts_answer.policy if sts_answer is not None and settings.mta_sts else None
    for raw in mx_hosts:
        host = raw.lower().rstrip(".")
        hosts[host] = _decide_host(host, settings, dane_answer, sts)
    return DomainPolicy(
        domain=domain,
        hosts=hosts,
        sts=sts if sts is not None and sts.mode != "none" else None,
        sts_error=sts_answer.error if sts_answer is not None and settings.mta_sts else None,
    )


def _decide_host(
    host: str, settings: Settings, dane_answer: DaneAnswer | None, sts: StsPolicy | None
) -> HostSecurity:
    version = settings.min_version
    if settings.dane and dane_answer is not None and dane_answer.mx_secure:
        answer = dane_answer.tlsa.get(host)
        if answer is not None and answer.status == "bogus":
            return HostSecurity(
                mode=Mode.DANE, starttls=True, fallback=False, verify="dane",
                min_version=version, refused=Result.DNSSEC_INVALID,
                detail=f"TLSA lookup for {host} failed DNSSEC validation",
            )
        if answer is not None and answer.status == "secure" and answer.records:
            usable = tuple(r for r in answer.records if r.usable)
            # RFC 7672 §2.2: only unusable records still mean "TLS, no plaintext".
            return HostSecurity(
                mode=Mode.DANE, starttls=True, fallback=False,
                verify="dane" if usable else "none", tlsa=usable, min_version=version,
            )
    if sts is not None and sts.mode in ("enforce", "testing"):
        enforced = sts.mode == "enforce"
        if enforced and not sts.matches(host):
            return HostSecurity(
                mode=Mode.MTA_STS, starttls=True, fallback=False, verify="webpki",
                min_version=version, refused=Result.VALIDATION_FAILURE,
                detail=f"MX {host} is not listed in the MTA-STS policy",
            )
        return HostSecurity(
            mode=Mode.MTA_STS, starttls=True, fallback=not enforced and not settings.require_tls,
            verify="webpki", enforced=enforced, min_version=version,
        )
    if settings.require_tls:
        return HostSecurity(
            mode=Mode.REQUIRE_TLS, starttls=True, fallback=False, min_version=version
        )
    if not settings.opportunistic:
        return HostSecurity(mode=Mode.NONE, starttls=False, fallback=True, min_version=version)
    return HostSecurity(
        mode=Mode.OPPORTUNISTIC, starttls=True, fallback=True, min_version=version
    )


def refusal_text(host: str, security: HostSecurity, result: Result, detail: str) -> str:
    """The deferral text of a 4.7.5 reply (what a user reads in the outcome)."""
    policy = {
        Mode.DANE: "DANE",
        Mode.MTA_STS: "MTA-STS",
        Mode.REQUIRE_TLS: "requireTLS",
    }.get(security.mode, str(security.mode))
    why = f": {detail}" if detail else ""
    return f"TLS required by {policy} for {host} not met ({result}){why}; not sent in clear"
