"""A DNSSEC-validating resolver for the sandbox (RFC 4035 §5): what a node-local Unbound is to
a cluster, and what the senders' `delivery.tls.daneResolver` names.

It answers over UDP and TCP on a 127.x address by asking the sandbox DNS server (the
upstream, over TCP, with DO set) and validating the answer against the trust anchors it was
given (a DS per signed zone, `ZoneSigner.ds`): the zone's DNSKEY RRset must contain a key
matching the DS and be signed by it, every RRset of the answer must carry an RRSIG that
verifies under that DNSKEY RRset, and a negative answer must come with a signed NSEC record
that denies the name or the type. Then, and only then, the answer carries AD (when the client
asked with DO or AD). A failed check is "bogus": SERVFAIL, as real validating resolvers answer
(RFC 4035 §5.5). Names under no trust anchor are "insecure": answered without AD.

`outcomes` counts secure, insecure and bogus answers, for tests. Signature checks are
dnspython's `dns.dnssec.validate` (on `cryptography`); nothing is verified by hand.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():  # dnspython loads its DSA support, which we never use
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import dns.dnssec
    import dns.dnssectypes

import logging
from collections import Counter
from collections.abc import Mapping
from types import TracebackType

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DS
import dns.rrset

from mailfleet_sandbox import dns_transport

log = logging.getLogger(__name__)
UPSTREAM_TIMEOUT = 3.0
"""Seconds per question to the upstream (the sandbox DNS server)."""
Signatures = Mapping[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset]
"""RRSIG RRsets of a reply by (owner, covered type)."""


class Bogus(Exception):
    """An answer under a trust anchor that does not validate."""


class ValidatingResolver:
    """Validating DNS resolver on host:port (0: a free port, same for UDP and TCP)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        anchors: Mapping[str, dns.rdtypes.ANY.DS.DS],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self.anchors = {dns.name.from_text(zone): ds for zone, ds in anchors.items()}
        self.host = host
        self.port = port
        self.outcomes: Counter[str] = Counter()
        """"secure", "insecure", "bogus" (and "failed" for an upstream that did not answer)."""
        self._listener: dns_transport.DnsListener | None = None

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._listener = dns_transport.DnsListener(self._answer_sized, self.host, self.port)
        self.port = await self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    async def __aenter__(self) -> ValidatingResolver:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def add_anchor(self, zone: str, ds: dns.rdtypes.ANY.DS.DS) -> None:
        self.anchors[dns.name.from_text(zone)] = ds

    # ----------------------------------------------------------------- answering
    async def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return None
        question = query.question[0]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        try:
            upstream = await self._ask(question.name, question.rdtype)
        except (dns.exception.DNSException, OSError) as exc:
            log.info("upstream did not answer %s: %s", question.name, exc)
            self.outcomes["failed"] += 1
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        anchor = self._anchor_for(question.name)
        secure = False
        if upstream.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            response.set_rcode(upstream.rcode())
            return response.to_wire()
        if anchor is not None:
            try:
                secure = await self._validate(anchor, question.name, question.rdtype, upstream)
            except (Bogus, dns.exception.ValidationFailure, dns.exception.DNSException,
                    OSError) as exc:
                log.info("bogus answer for %s/%s: %s", question.name,
                         dns.rdatatype.to_text(question.rdtype), exc)
                self.outcomes["bogus"] += 1
                response.set_rcode(dns.rcode.SERVFAIL)
                return response.to_wire()
        self.outcomes["secure" if secure else "insecure"] += 1
        wants_dnssec = bool(query.ednsflags & dns.flags.DO)
        response.set_rcode(upstream.rcode())
        for mine, theirs in ((response.answer, upstream.answer),
                             (response.authority, upstream.authority)):
            mine.extend(r for r in theirs if wants_dnssec or r.rdtype not in (
                dns.rdatatype.RRSIG, dns.rdatatype.NSEC))
        if secure and (wants_dnssec or query.flags & dns.flags.AD):
            response.flags |= dns.flags.AD
        return response.to_wire()

    def _anchor_for(self, name: dns.name.Name) -> dns.name.Name | None:
        zones = [z for z in self.anchors if name.is_subdomain(z)]
        return max(zones, key=len) if zones else None

    async def _ask(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
                   ) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        host, port = self.upstream
        return await dns.asyncquery.tcp(query, host, port=port, timeout=UPSTREAM_TIMEOUT)

    async def _zone_keys(self, zone: dns.name.Name) -> dns.rrset.RRset:
        """The zone's DNSKEY RRset, proved by the trust anchor (a key matches the DS and
        signed the RRset). Asked every time: the sandbox's keys may change, a cache would
        only hide that."""
        reply = await self._ask(zone, dns.rdatatype.DNSKEY)
        keys = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        sigs = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                               dns.rdatatype.DNSKEY)
        if keys is None or sigs is None:
            raise Bogus(f"no signed DNSKEY at {zone}")
        anchor = self.anchors[zone]
        algorithm = dns.dnssectypes.DSDigest.to_text(anchor.digest_type)
        if not any(dns.dnssec.make_ds(zone, key, algorithm) == anchor for key in keys):
            raise Bogus(f"no DNSKEY of {zone} matches its trust anchor")
        dns.dnssec.validate(keys, sigs, {zone: keys})
        return keys

    async def _validate(self, zone: dns.name.Name, qname: dns.name.Name,
                        qtype: dns.rdatatype.RdataType, reply: dns.message.Message) -> bool:
        """True when every RRset is proved secure; False when the chain leaves the zone
        (a CNAME to an unsigned name: insecure). Raises Bogus (or ValidationFailure)."""
        keys = await self._zone_keys(zone)
        sections = reply.answer + reply.authority
        rrsigs = {(r.name, r.covers): r for r in sections if r.rdtype == dns.rdatatype.RRSIG}
        secure = True
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            if not rrset.name.is_subdomain(zone):
                secure = False
                continue
            self._verify(rrset, rrsigs, zone, keys)
        if any(r.rdtype == qtype for r in reply.answer):
            return secure
        if any(r.rdtype == dns.rdatatype.CNAME for r in reply.answer):
            return False  # a CNAME to a name without the type: not proved here
        self._verify_denial(qname, qtype, reply, rrsigs, zone, keys)
        return secure

    @staticmethod
    def _verify(rrset: dns.rrset.RRset, rrsigs: Signatures, zone: dns.name.Name,
                keys: dns.rrset.RRset) -> None:
        sig = rrsigs.get((rrset.name, rrset.rdtype))
        if sig is None:
            raise Bogus(f"no RRSIG for {rrset.name}/{dns.rdatatype.to_text(rrset.rdtype)}")
        dns.dnssec.validate(rrset, sig, {zone: keys})

    def _verify_denial(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
                       reply: dns.message.Message,
                       rrsigs: Signatures,
                       zone: dns.name.Name, keys: dns.rrset.RRset) -> None:
        """A signed NSEC at the name without the type (NODATA), or one whose span covers
        the name (NXDOMAIN)."""
        for nsec in (r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC):
            self._verify(nsec, rrsigs, zone, keys)
            rdata = nsec[0]
            types = {dns.rdatatype.from_text(t) for t in rdata.to_text().split()[1:]}
            if nsec.name == qname and qtype not in types \
                    and dns.rdatatype.CNAME not in types:
                return
            if reply.rcode() == dns.rcode.NXDOMAIN and nsec.name < qname < rdata.next:
                return
        raise Bogus(f"no proof that {qname}/{dns.rdatatype.to_text(qtype)} does not exist")

    async def _answer_sized(self, wire: bytes, udp: bool) -> bytes | None:
        """`answer`, truncated over UDP beyond RFC 9715's safe size (the client retries on
        TCP)."""
        answer = await self.answer(wire)
        if answer is None or not udp or len(answer) <= 1232:
            return answer
        truncated = dns.message.from_wire(answer)
        truncated.answer.clear()
        truncated.authority.clear()
        truncated.flags |= dns.flags.TC
        return truncated.to_wire()
