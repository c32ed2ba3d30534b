"""DNSSEC for the sandbox's zones (RFC 4033-4035): a zone signer with one ECDSA P-256 key
(a combined signing key, flags 257) that signs answers as they leave the sandbox DNS server,
so the DANE path of the sender meets real RRSIG, DNSKEY and DS records and a validating
resolver (`validating_resolver`) that checks them.

Online signing, as PowerDNS or Cloudflare do, because the sandbox's data changes while it runs
(a scene swaps a TLSA record): every RRset of an answer or authority section under a signed
zone gets its RRSIG when the query set DO; signatures are cached per RRset content. Negative
answers are "black lies" (draft-valsorda-dnsop-black-lies): NODATA with an NSEC record at the
query name whose next name is `\\000.<name>` and whose type bitmap lists only what exists
there, so a resolver can prove the denial without a pre-computed NSEC chain.

`corrupt(name, rtype)` makes the RRSIGs of one RRset bogus (signed by a key the zone does not
publish, under the zone key's tag): what a validating resolver must refuse with SERVFAIL.
Signatures and keys come from dnspython (`dns.dnssec.sign`, `make_dnskey`, `make_ds`) on
`cryptography` keys; nothing is computed by hand.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():  # dnspython loads its DSA support, which we never use
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import dns.dnssec
    import dns.dnssectypes

import threading
import time
from collections.abc import Callable, Iterable, Sequence

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = dns.dnssectypes.Algorithm.ECDSAP256SHA256
SIGNATURE_LIFETIME = 30 * 86400
"""Seconds an RRSIG is valid from its inception (an hour before it was made)."""
TypesAt = Callable[[dns.name.Name], Iterable[dns.rdatatype.RdataType]]
"""The types that exist at a name (for the NSEC type bitmap of a denial)."""


class ZoneSigner:
    """Signs RRsets of one zone; `ds` is the trust anchor a validating resolver is given."""

    def __init__(self, zone: str | dns.name.Name) -> None:
        self.zone = zone if isinstance(zone, dns.name.Name) else dns.name.from_text(zone)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._rogue = ec.generate_private_key(ec.SECP256R1())
        self.dnskey = dns.dnssec.make_dnskey(self._key.public_key(), ALGORITHM, flags=257)
        self.ds = dns.dnssec.make_ds(self.zone, self.dnskey, "SHA256")
        self.bogus: set[tuple[dns.name.Name, dns.rdatatype.RdataType]] = set()
        self._cache: dict[tuple[str, bool], dns.rrset.RRset] = {}
        self._lock = threading.Lock()

    def covers(self, name: dns.name.Name) -> bool:
        return name.is_subdomain(self.zone)

    def corrupt(self, name: str, rtype: str) -> None:
        """From now on the RRSIG of name/rtype does not verify (until `repair`)."""
        self.bogus.add((dns.name.from_text(name), dns.rdatatype.from_text(rtype)))

    def repair(self, name: str, rtype: str) -> None:
        self.bogus.discard((dns.name.from_text(name), dns.rdatatype.from_text(rtype)))

    def sign(self, rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        """The RRSIG RRset covering `rrset` (cached per content and bogusness)."""
        bogus = (rrset.name, rrset.rdtype) in self.bogus
        key = (rrset.to_text(), bogus)
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        now = int(time.time())
        rrsig = dns.dnssec.sign(
            rrset, self._rogue if bogus else self._key, self.zone, self.dnskey,
            inception=now - 3600, expiration=now + SIGNATURE_LIFETIME,
        )
        signed = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, [rrsig])
        with self._lock:
            self._cache[key] = signed
        return signed


def signer_for(signers: Sequence[ZoneSigner], name: dns.name.Name) -> ZoneSigner | None:
    """The signer of the closest enclosing signed zone."""
    best: ZoneSigner | None = None
    for signer in signers:
        if signer.covers(name) and (best is None or signer.zone.is_subdomain(best.zone)):
            best = signer
    return best


def _denial(
    qname: dns.name.Name, types: Iterable[dns.rdatatype.RdataType], ttl: int
) -> dns.rrset.RRset:
    bitmap = sorted({*types, dns.rdatatype.RRSIG, dns.rdatatype.NSEC})
    text = "\\000.{} {}".format(qname.to_text(), " ".join(dns.rdatatype.to_text(t)
                                                          for t in bitmap))
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NSEC, text)
    return dns.rrset.from_rdata_list(qname, ttl, [rdata])


def sign_response(
    signers: Sequence[ZoneSigner], response: dns.message.Message, types_at: TypesAt
) -> None:
    """Add RRSIGs (and a black-lie NSEC to negative answers) for names in signed zones."""
    question = response.question[0]
    qname = question.name
    zone_signer = signer_for(signers, qname)
    negative = response.rcode() == dns.rcode.NXDOMAIN or (
        response.rcode() == dns.rcode.NOERROR and not response.answer
    )
    if zone_signer is not None and negative:
        soa = next((r for r in response.authority if r.rdtype == dns.rdatatype.SOA), None)
        ttl = soa.ttl if soa is not None else 60
        response.set_rcode(dns.rcode.NOERROR)  # a black lie: the name "exists", no such type
        response.authority.append(_denial(qname, types_at(qname), ttl))
    for section in (response.answer, response.authority):
        for rrset in list(section):
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            signer = signer_for(signers, rrset.name)
            if signer is None or (rrset.rdtype == dns.rdatatype.DS
                                  and rrset.name == signer.zone):
                continue  # a DS belongs to the parent's (unsigned) zone
            section.append(signer.sign(rrset))
    response.ednsflags |= dns.flags.DO
