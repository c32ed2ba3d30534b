"""DNS records a sending domain needs: DKIM, SPF, DMARC, BIMI and the return-path CNAME.

Pure (no I/O): every builder takes plain values and returns a `DnsRecord`, or raises
`RecordSpecError` naming the field and what was expected, so the reconciler can mirror the
problem in a condition instead of publishing a record receivers would reject. The same
checks exist in the CRD schema; they are repeated here because the operator must never emit
a broken record even if the schema was bypassed (an old CRD, a `--validate=false` apply).

Values are the record text as a resolver returns it with its character-strings joined;
`split_txt` gives the strings to publish (RFC 1035 §3.3.14: at most 255 bytes each; RFC 6376
§3.6.2.2 and RFC 7208 §3.3: the strings of one record are concatenated by the reader).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

TXT_STRING_LIMIT = 255
"""Bytes in one TXT character-string (RFC 1035 §3.3)."""

RecordType = Literal["TXT", "CNAME"]
RecordFamily = Literal["dkim", "spf", "dmarc", "bimi", "returnPath", "tlsrpt"]

_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"({_LABEL}\.)+[A-Za-z]([-A-Za-z0-9]{{0,61}}[A-Za-z0-9])?")
# Names that are not host names (SPF include targets like _spf.google.com) may hold "_".
_DNS_NAME_RE = re.compile(r"([A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}")
_SELECTOR_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_MAILTO_RE = re.compile(r"mailto:[^@\s,!;]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}(![0-9]+[kmgt]?)?")
_HTTPS_RE = re.compile(r"https://[^\s/?#;]+(/[^\s;]*)?")

DMARC_POLICIES = ("none", "quarantine", "reject")
ALIGNMENT_MODES = ("r", "s")
SPF_ALL_QUALIFIERS = ("~all", "-all", "?all")


class RecordSpecError(ValueError):
    """A spec value no correct record can be built from; `field` is the spec path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class DnsRecord:
    """One record to publish: `name` is fully qualified without the final dot."""

    family: RecordFamily
    name: str
    type: RecordType
    value: str
    selector: str | None = None
    """For DKIM records: the selector, so verification can be tied back to a key."""

    @property
    def strings(self) -> tuple[str, ...]:
        """The character-strings to publish for a TXT record (one for a CNAME)."""
        return split_txt(self.value) if self.type == "TXT" else (self.value,)


def split_txt(value: str) -> tuple[str, ...]:
    """Cut a TXT value into strings of at most 255 bytes (values here are ASCII)."""
    raw = value.encode("ascii")
    if not raw:
        return ("",)
    return tuple(
        raw[i : i + TXT_STRING_LIMIT].decode("ascii")
        for i in range(0, len(raw), TXT_STRING_LIMIT)
    )


# --- names -------------------------------------------------------------------------------------


def check_domain(domain: str, *, field: str = "spec.domain") -> str:
    """The domain in lower case, or RecordSpecError when it is not a host name."""
    if len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain):
        raise RecordSpecError(
            field,
            f"{domain!r} is not a domain name: expected dot-separated labels of letters, "
            "digits and hyphens, like example.com, with no trailing dot",
        )
    return domain.lower()


def check_selector(selector: str, *, field: str = "spec.dkim.selectorPrefix") -> str:
    """A DKIM selector must be one DNS label (RFC 6376 §3.1): no dots, underscores or spaces."""
    if not _SELECTOR_RE.fullmatch(selector):
        raise RecordSpecError(
            field,
            f"{selector!r} cannot be a DKIM selector: use lower-case letters, digits and "
            "'-' (at most 63 characters, starting and ending with a letter or digit)",
        )
    return selector


def dkim_record_name(*, domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def dmarc_record_name(*, domain: str) -> str:
    return f"_dmarc.{domain}"


def bimi_record_name(*, domain: str, selector: str = "default") -> str:
    return f"{selector}._bimi.{domain}"


# --- DKIM --------------------------------------------------------------------------------------


def build_dkim_record(
    *, domain: str, selector: str, key_type: Literal["rsa", "ed25519"], public_key_b64: str
) -> DnsRecord:
    """`v=DKIM1; k=rsa; p=...` at `<selector>._domainkey.<domain>` (RFC 6376 §3.6.1, 8463)."""
    check_selector(selector)
    if not public_key_b64 or not re.fullmatch(r"[A-Za-z0-9+/]+=*", public_key_b64):
        raise RecordSpecError("dkim", "the public key must be non-empty base64")
    return DnsRecord(
        family="dkim",
        name=dkim_record_name(domain=domain, selector=selector),
        type="TXT",
        value=f"v=DKIM1; k={key_type}; p={public_key_b64}",
        selector=selector,
    )


def parse_tags(value: str) -> dict[str, str]:
    """Tag-list syntax shared by DKIM, DMARC and BIMI: `a=1; b=2` (RFC 6376 §3.2)."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        if "=" not in part:
            continue
        name, _, tag_value = part.partition("=")
        tags[name.strip()] = re.sub(r"\s+", "", tag_value)
    return tags


def same_dkim_key(published: str, expected: str) -> bool:
    """Whether a published DKIM record carries exactly the expected key and key type.

    Compared on tags, not bytes, because publishers may reorder tags or add whitespace
    between the strings; the key itself (`p=`) must match exactly.
    """
    got, want = parse_tags(published), parse_tags(expected)
    return (
        got.get("v", "DKIM1") == "DKIM1"
        and got.get("k", "rsa") == want.get("k", "rsa")
        and got.get("p", "") == want.get("p")
    )


# --- SPF ---------------------------------------------------------------------------------------


def build_spf_record(
    *,
    domain: str,
    pool_ips: Iterable[str],
    extra_ips: Iterable[str] = (),
    include: Sequence[str] = (),
    all_qualifier: str = "~all",
) -> DnsRecord:
    """One `v=spf1` record for the domain (RFC 7208 §3.2: a second one is a permerror).

    IPv4 before IPv6, each sorted and de-duplicated, so the record only changes when the set
    of addresses does (a reordering would otherwise churn DNS on every pool change).
    """
    if all_qualifier not in SPF_ALL_QUALIFIERS:
        raise RecordSpecError("spec.spf.all", f"expected one of {', '.join(SPF_ALL_QUALIFIERS)}")
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for field, values in (("spec.spf.extraIPs", extra_ips), ("pool egress IPs", pool_ips)):
        for text in values:
            try:
                networks.add(ipaddress.ip_network(text, strict=False))
            except ValueError as error:
                raise RecordSpecError(field, f"{text!r} is not an IP address or network") from error
    v4 = sorted(n for n in networks if isinstance(n, ipaddress.IPv4Network))
    v6 = sorted(n for n in networks if isinstance(n, ipaddress.IPv6Network))
    terms = ["v=spf1"]
    terms += [f"ip4:{_network_text(n)}" for n in v4]
    terms += [f"ip6:{_network_text(n)}" for n in v6]
    seen: set[str] = set()
    for index, target in enumerate(include):
        if len(target) > 253 or not _DNS_NAME_RE.fullmatch(target):
            raise RecordSpecError(
                f"spec.spf.include[{index}]", f"{target!r} is not a DNS name like _spf.example.com"
            )
        if target.lower() not in seen:
            seen.add(target.lower())
            terms.append(f"include:{target}")
    terms.append(all_qualifier)
    return DnsRecord(family="spf", name=domain, type="TXT", value=" ".join(terms))


def _network_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    full = network.prefixlen == network.max_prefixlen
    return str(network.network_address) if full else str(network)


def is_spf(value: str) -> bool:
    """RFC 7208 §4.5: a record is SPF when it starts with `v=spf1` followed by space or end."""
    lowered = value.lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


def is_dmarc(value: str) -> bool:
    return re.match(r"v\s*=\s*DMARC1\s*(;|$)", value) is not None


def is_bimi(value: str) -> bool:
    return re.match(r"v\s*=\s*BIMI1\s*(;|$)", value) is not None


def is_tlsrpt(value: str) -> bool:
    return re.match(r"v\s*=\s*TLSRPTv1\s*(;|$)", value) is not None


def same_spf(published: str, expected: str) -> bool:
    """Equal up to whitespace and case of mechanism names (what a receiver would evaluate)."""
    return published.lower().split() == expected.lower().split()


# --- DMARC -------------------------------------------------------------------------------------


def build_dmarc_record(
    *,
    domain: str,
    policy: str = "none",
    subdomain_policy: str | None = None,
    pct: int = 100,
    rua: Sequence[str] = (),
    ruf: Sequence[str] = (),
    adkim: str = "r",
    aspf: str = "r",
) -> DnsRecord:
    """`v=DMARC1; p=...` at `_dmarc.<domain>` (RFC 7489 §6.3); tags at default are left out."""
    if policy not in DMARC_POLICIES:
        raise RecordSpecError("spec.dmarc.policy", f"expected one of {', '.join(DMARC_POLICIES)}")
    if subdomain_policy is not None and subdomain_policy not in DMARC_POLICIES:
        raise RecordSpecError(
            "spec.dmarc.subdomainPolicy", f"expected one of {', '.join(DMARC_POLICIES)}"
        )
    if not 0 <= pct <= 100:
        raise RecordSpecError("spec.dmarc.pct", f"{pct} is not a percentage (0 to 100)")
    for name, mode in (("adkim", adkim), ("aspf", aspf)):
        if mode not in ALIGNMENT_MODES:
            raise RecordSpecError(f"spec.dmarc.{name}", "expected r (relaxed) or s (strict)")
    for name, uris in (("rua", rua), ("ruf", ruf)):
        for index, uri in enumerate(uris):
            if not _MAILTO_RE.fullmatch(uri):
                raise RecordSpecError(
                    f"spec.dmarc.{name}[{index}]",
                    f"{uri!r} is not a mailto URI: expected mailto:reports@example.com",
                )
    tags = [f"v=DMARC1; p={policy}"]
    if subdomain_policy is not None:
        tags.append(f"sp={subdomain_policy}")
    if pct != 100:
        tags.append(f"pct={pct}")
    if rua:
        tags.append(f"rua={','.join(rua)}")
    if ruf:
        tags.append(f"ruf={','.join(ruf)}")
    if adkim != "r":
        tags.append(f"adkim={adkim}")
    if aspf != "r":
        tags.append(f"aspf={aspf}")
    return DnsRecord(
        family="dmarc", name=dmarc_record_name(domain=domain), type="TXT", value="; ".join(tags)
    )


def same_tags(published: str, expected: str) -> bool:
    """DMARC/BIMI equality: the same tags with the same values, in any order or spacing."""
    return parse_tags(published) == parse_tags(expected)


# --- BIMI --------------------------------------------------------------------------------------


def build_bimi_record(
    *,
    domain: str,
    logo_url: str,
    authority_url: str | None = None,
    dmarc_policy: str | None,
    dmarc_pct: int = 100,
    dmarc_subdomain_policy: str | None = None,
) -> DnsRecord:
    """`v=BIMI1; l=...; a=...` at `default._bimi.<domain>`.

    BIMI (draft-brand-indicators-for-message-identification §4.3) only shows a logo for mail
    under an enforcing DMARC policy: p=quarantine or reject, pct=100, and sp not none.
    Publishing it otherwise would be a record that can never work, so it is refused.
    """
    if not _HTTPS_RE.fullmatch(logo_url):
        raise RecordSpecError(
            "spec.bimi.logoURL", f"{logo_url!r} is not an https:// URL (BIMI requires HTTPS)"
        )
    if authority_url is not None and not _HTTPS_RE.fullmatch(authority_url):
        raise RecordSpecError(
            "spec.bimi.authorityURL",
            f"{authority_url!r} is not an https:// URL (BIMI requires HTTPS)",
        )
    if dmarc_policy not in ("quarantine", "reject") or dmarc_pct != 100:
        raise RecordSpecError(
            "spec.bimi",
            "BIMI requires a DMARC policy of quarantine or reject at pct=100; "
            f"spec.dmarc has policy={dmarc_policy or 'unset'} pct={dmarc_pct}",
        )
    if dmarc_subdomain_policy == "none":
        raise RecordSpecError("spec.bimi", "BIMI requires spec.dmarc.subdomainPolicy not none")
    value = f"v=BIMI1; l={logo_url}"
    if authority_url is not None:
        value += f"; a={authority_url}"
    return DnsRecord(family="bimi", name=bimi_record_name(domain=domain), type="TXT", value=value)


# --- return path -------------------------------------------------------------------------------


def build_return_path_record(*, domain: str, host: str, target: str) -> DnsRecord:
    """CNAME `<host>` -> `<target>`: the bounce domain (RFC 5321 MAIL FROM) of the pool.

    `host` may be a single label (taken below `domain`) or a full name inside `domain`;
    the return path must be in the domain for relaxed SPF alignment under DMARC.
    """
    name = host if "." in host else f"{host}.{domain}"
    name = check_domain(name, field="spec.returnPath")
    if name != domain and not name.endswith(f".{domain}"):
        raise RecordSpecError(
            "spec.returnPath",
            f"{name} is not inside {domain}: SPF alignment under DMARC needs the return path "
            "in the sending domain",
        )
    if name == domain:
        raise RecordSpecError(
            "spec.returnPath", "the return path cannot be the domain apex (a CNAME there is "
            "not allowed next to other records)"
        )
    target = check_domain(target.rstrip("."), field="spec.returnPath.target")
    return DnsRecord(family="returnPath", name=name, type="CNAME", value=target)


# --- TLS-RPT -----------------------------------------------------------------------------------


def tlsrpt_record_name(*, domain: str) -> str:
    return f"_smtp._tls.{domain}"


def build_tlsrpt_record(*, domain: str, rua: Sequence[str]) -> DnsRecord:
    """`v=TLSRPTv1; rua=...` at `_smtp._tls.<domain>` (RFC 8460 §3): mailto or https URIs."""
    if not rua:
        raise RecordSpecError("spec.tlsrpt.rua", "at least one mailto: or https: URI is needed")
    for index, uri in enumerate(rua):
        if not (_MAILTO_RE.fullmatch(uri) or _HTTPS_RE.fullmatch(uri)) or "," in uri:
            raise RecordSpecError(
                f"spec.tlsrpt.rua[{index}]",
                f"{uri!r} is neither a mailto: nor an https: URI",
            )
    return DnsRecord(
        family="tlsrpt", name=tlsrpt_record_name(domain=domain), type="TXT",
        value=f"v=TLSRPTv1; rua={','.join(rua)}",
    )
