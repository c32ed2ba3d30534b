"""DANE for SMTP (RFC 7672): does the certificate chain an MX host presented match its TLSA
records? Pure (no I/O): the records come from `transport_security`, the chain from the TLS
session in `delivering`. Certificates are read with `cryptography`, never parsed by hand.

Usable records (RFC 7672 §3.1): usage 3 (DANE-EE) matches the server's own certificate, with
no name or expiry check (the DNS binds the key to the host); usage 2 (DANE-TA) matches a trust
anchor the server includes in its chain, and the server's certificate must then chain up to it
with valid signatures and dates and carry the MX host's name. Selector 0 is the whole
certificate, 1 its SubjectPublicKeyInfo; matching type 0 is the data itself, 1 SHA-256, 2
SHA-512. Usages 0 and 1 (PKIX) are unusable for SMTP and are ignored.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

DANE_TA = 2
DANE_EE = 3


@dataclasses.dataclass(frozen=True)
class TLSA:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.mtype in (
            0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Match:
    ok: bool
    detail: str = ""
    expired: bool = False
    name_mismatch: bool = False


def association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The data a TLSA record with this selector and matching type carries for `cert`."""
    if selector == 0:
        content = cert.public_bytes(serialization.Encoding.DER)
    else:
        content = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if mtype == 1:
        return hashlib.sha256(content).digest()
    if mtype == 2:
        return hashlib.sha512(content).digest()
    return content


def _matches(record: TLSA, cert: x509.Certificate) -> bool:
    return association(cert, record.selector, record.mtype) == record.data


def match_chain(
    records: Sequence[TLSA],
    chain_der: Sequence[bytes],
    *,
    names: Sequence[str],
    now: datetime.datetime,
) -> Match:
    """Check a presented chain (server certificate first) against usable TLSA records.
    `names`: reference identifiers for DANE-TA (the MX host name, RFC 7672 §3.2.2)."""
    if not chain_der:
        return Match(False, "no certificate presented")
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        return Match(False, f"unreadable certificate: {exc}")
    leaf = chain[0]
    usable = [r for r in records if r.usable]
    if any(r.usage == DANE_EE and _matches(r, leaf) for r in usable):
        return Match(True, "DANE-EE")
    last = Match(False, "no TLSA record matches the certificate chain")
    for index, cert in enumerate(chain):
        if not any(r.usage == DANE_TA and _matches(r, cert) for r in usable):
            continue
        verdict = _chains_to(chain[: index + 1], names=names, now=now)
        if verdict.ok:
            return verdict
        last = verdict
    return last


def _chains_to(path: Sequence[x509.Certificate], *, names: Sequence[str],
               now: datetime.datetime) -> Match:
    """path[0] is the server certificate, path[-1] the matched trust anchor."""
    for cert, issuer in itertools.pairwise(path):
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as exc:
            return Match(False, f"chain to the DANE-TA anchor is broken: {exc}")
    for cert in path[:-1] if len(path) > 1 else path:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return Match(False, "certificate outside its validity period", expired=True)
    if not any(name_matches(path[0], name) for name in names):
        return Match(False, f"certificate names none of {', '.join(names)}", name_mismatch=True)
    return Match(True, "DANE-TA")


def name_matches(cert: x509.Certificate, name: str) -> bool:
    """RFC 6125 DNS-ID check (SAN dNSName, one leftmost wildcard label)."""
    name = name.lower().rstrip(".")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    for pattern in sans.value.get_values_for_type(x509.DNSName):
        pattern = pattern.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*."):
            label, dot, rest = name.partition(".")
            if label and dot and rest == pattern[2:]:
                return True
    return False
