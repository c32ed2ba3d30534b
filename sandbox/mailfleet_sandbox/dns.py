"""An authoritative DNS server for the sandbox (DESIGN.md §5): provider MX records, the sending
domains' SPF/DKIM/DMARC records, PTRs and test DNSBL zones, served over real UDP and TCP sockets
on a 127.x address so that the operator and the sender resolve through dnspython exactly as they
would in production, only pointed at this server.

Why a server and not a mocked resolver: the code under test owns its resolver (caching, TCP
fallback, negative answers); only real packets exercise that. Wire format is never hand-rolled:
dnspython parses queries and renders answers.

Semantics follow RFC 1034/2308: the server is authoritative (AA) for every name it knows;
NXDOMAIN for names that do not exist (neither records nor descendants), NOERROR with an empty
answer (NODATA) for names that exist with other types or are empty non-terminals, and an SOA in
the authority section of negative answers whose TTL is min(SOA TTL, SOA minimum) so negative
caching works. CNAMEs are chased within the server's data. UDP answers larger than 512 bytes (or
the client's EDNS payload size) are truncated (TC) so that clients retry over TCP. Malformed
queries get FORMERR, opcodes other than QUERY get NOTIMP.

Negative answers need an SOA: the closest enclosing SOA in the data (set one with
`set_records(apex, "SOA", ...)` or `load_zone_text`) wins; otherwise one is synthesized at the
name's last two labels ("example.test." for "_dmarc.example.test."), which is close enough to a
real zone cut for a sandbox.

The server is also every zone's nameserver, as a real authoritative server would say: at a zone
apex (an SOA in the data, or a synthesized one) SOA and NS questions are answered, the NS
naming `nameserver_name` (default `ns.sandbox.test`), whose A record is the server's own
address (on 127.0.0.0/8). So a client can find a record's zone and its nameservers and ask
them directly, as the operator verifies DKIM keys. Static SOA or NS records win (a test gives
a zone a second nameserver that way).

Records come from the static store (set_records and friends) and from attached sources
(`attach_source`), callables returning `Record`s on each query (`external_dns` feeds the API
emulator's DNSEndpoint objects in there, `cluster_dns` its Services and Pods, each returning a
snapshot it keeps up to date from watches). A static (name, type) wins over a sourced one.

Single asyncio loop by design; a lock makes mutations from another thread safe too (see
`run_in_thread`). Never query this server with a *synchronous* resolver from the loop thread
that runs it: that deadlocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import struct
import threading
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.reversename
import dns.rrset
import dns.zone

from mailfleet_sandbox import dns_transport, dnssec_signing

log = logging.getLogger(__name__)
_R = typing.TypeVar("_R", bound=dns.resolver.BaseResolver)

UDP_DEFAULT_PAYLOAD = 512
"""Largest UDP answer to a client without EDNS (RFC 1035 §4.2.1); bigger ones are truncated."""
MAX_CNAME_CHAIN = 8
"""CNAME hops followed inside the server's data before giving up (loops included)."""
TXT_CHUNK = 255
"""A TXT character-string holds at most 255 bytes; longer values are split like publishers do."""
SANDBOX_DNSBL_ZONE = "zen.dnsbl.test"
"""The DNSBL zone the sandbox's pools check by default (a Spamhaus ZEN stand-in)."""
DNSBL_LISTED_ADDRESS = "127.0.0.2"
"""The A record a DNSBL returns for a listed IP (the de-facto standard return code)."""


@dataclass(frozen=True)
class Record:
    """One rrset as a feed provides it: values in zone-file text form (TXT may be plain text)."""

    name: str
    rtype: str
    values: tuple[str, ...]
    ttl: int = 300


RecordSource = Callable[[], Iterable[Record]]
"""A feed of records consulted on every query; it must be cheap (return a snapshot)."""

_Node = dict[dns.rdatatype.RdataType, dns.rrset.RRset]


def _to_name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.derelativize(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def _to_rdtype(rtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rtype, str):
        return dns.rdatatype.RdataType.make(rtype.upper())
    return dns.rdatatype.RdataType.make(rtype)


def split_txt(value: str | bytes) -> list[bytes]:
    """Split a TXT value into <=255-byte character-strings (RFC 7208 §3.3 style publishing)."""
    raw = value.encode() if isinstance(value, str) else value
    if not raw:
        return [b""]
    return [raw[i : i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)]


def _parse_rdata(rdtype: dns.rdatatype.RdataType, value: str) -> dns.rdata.Rdata:
    """Zone-file text to rdata; a TXT value not starting with a quote is taken as plain text."""
    if rdtype == dns.rdatatype.TXT and not value.lstrip().startswith('"'):
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, split_txt(value))
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False
    )


@functools.lru_cache(maxsize=4096)
def _build_rrset(name: str, rtype: str, values: tuple[str, ...], ttl: int) -> dns.rrset.RRset:
    rdtype = _to_rdtype(rtype)
    rdatas = [_parse_rdata(rdtype, value) for value in values]
    return dns.rrset.from_rdata_list(_to_name(name), ttl, rdatas)


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def dnsbl_query_name(zone: str, ip: str) -> dns.name.Name:
    """`4.3.2.1.zen.example.test.` for 1.2.3.4, nibbles for IPv6 (RFC 5782 §2.1, §2.4)."""
    reverse = dns.reversename.from_address(ip)
    suffix = (
        dns.reversename.ipv4_reverse_domain
        if ipaddress.ip_address(ip).version == 4
        else dns.reversename.ipv6_reverse_domain
    )
    return reverse.relativize(suffix).derelativize(_to_name(zone))


class DNSServer:
    """Authoritative UDP+TCP DNS server on a loopback address; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        negative_ttl: int = 30,
        udp_payload_limit: int | None = None,
        nameserver_name: str = "ns.sandbox.test",
    ) -> None:
        self.host = host
        self.nameserver_name = _to_name(nameserver_name)
        """The host name the synthesized NS records name; its A record is `host`."""
        self.port = port
        self.negative_ttl = negative_ttl
        """SOA minimum of synthesized SOAs: how long resolvers cache NXDOMAIN/NODATA."""
        self.udp_payload_limit = udp_payload_limit
        """Cap on UDP answer size regardless of EDNS (None: the client's EDNS size or 512)."""
        self.queries: list[tuple[str, str]] = []
        """Every question seen, as (lower-case name without final dot, type), e.g.
        ("gmail.test", "MX"): lets tests assert that a client cached an answer."""
        self._lock = threading.RLock()
        self._store: dict[dns.name.Name, _Node] = {}
        self._sources: list[RecordSource] = []
        self._failures: dict[
            tuple[dns.name.Name, dns.rdatatype.RdataType | None], dns.rcode.Rcode
        ] = {}
        self._serial = 1
        self._listener: dns_transport.DnsListener | None = None
        self._requested_port = port
        self.secure_zones: set[dns.name.Name] = set()
        """Zones this server vouches for as a validating resolver would: answers under them
        carry AD when the query asked (DO or AD set). A stand-in for a DNSSEC-validating
        resolver (bogus data is a `set_failure(..., "SERVFAIL")`, as such a resolver answers)."""
        self.signers: list[dnssec_signing.ZoneSigner] = []
        """Zones signed for real (`sign_zone`): answers to DO queries carry RRSIGs."""

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind UDP and TCP on the same port (a free one when port is 0)."""
        self._listener = dns_transport.DnsListener(
            lambda wire, udp: self.handle_wire(wire, udp=udp), self.host, self._requested_port)
        self.port = await self._listener.start()
        log.info("dns server started", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    async def __aenter__(self) -> DNSServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[DNSServer]:
        """Serve from a private event loop in a daemon thread, for synchronous callers."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="sandbox-dns", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    @property
    def address(self) -> str:
        """The server as "host:port", for configs that name a nameserver with a port."""
        return f"{self.host}:{self.port}"

    def resolver(
        self, *, timeout: float = 2.0, lifetime: float = 5.0
    ) -> dns.asyncresolver.Resolver:
        """An async resolver that asks only this server (no /etc/resolv.conf, no cache)."""
        return self._aimed(dns.asyncresolver.Resolver(configure=False), timeout, lifetime)

    def sync_resolver(
        self, *, timeout: float = 2.0, lifetime: float = 5.0
    ) -> dns.resolver.Resolver:
        """A blocking resolver for code in another thread than the one serving (never the same)."""
        return self._aimed(dns.resolver.Resolver(configure=False), timeout, lifetime)

    def _aimed(self, resolver: _R, timeout: float, lifetime: float) -> _R:
        """`resolver` asking only this server, for either flavour of dnspython resolver."""
        resolver.nameservers = [dns.nameserver.Do53Nameserver(self.host, self.port)]
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        return resolver

    # ----------------------------------------------------------------- records

    def set_records(self, name: str, rtype: str, values: Sequence[str], ttl: int = 300) -> None:
        """Replace the rrset; values in zone-file text form (plain text accepted for TXT).

        An empty `values` removes the rrset.
        """
        if isinstance(values, str):
            raise TypeError("values must be a sequence of strings, not one string")
        owner = _to_name(name)
        rdtype = _to_rdtype(rtype)
        rrset = (
            dns.rrset.from_rdata_list(owner, ttl, [_parse_rdata(rdtype, v) for v in values])
            if values
            else None
        )
        with self._lock:
            node = self._store.setdefault(owner, {})
            if rrset is None:
                node.pop(rdtype, None)
                if not node:
                    del self._store[owner]
            else:
                node[rdtype] = rrset
            self._serial += 1

    def add_record(self, name: str, rtype: str, value: str, ttl: int = 300) -> None:
        """Add one value to the rrset (created if missing); the rrset takes the given TTL."""
        owner = _to_name(name)
        rdtype = _to_rdtype(rtype)
        rdata = _parse_rdata(rdtype, value)
        with self._lock:
            node = self._store.setdefault(owner, {})
            old = node.get(rdtype)
            rdatas = [*(old or []), rdata]
            node[rdtype] = dns.rrset.from_rdata_list(owner, ttl, rdatas)
            self._serial += 1

    def remove_records(self, name: str, rtype: str | None = None) -> None:
        """Remove one rrset, or every record at the name when rtype is None."""
        owner = _to_name(name)
        with self._lock:
            node = self._store.get(owner)
            if node is None:
                return
            if rtype is None:
                node.clear()
            else:
                node.pop(_to_rdtype(rtype), None)
            if not node:
                del self._store[owner]
            self._serial += 1

    def records(self, name: str, rtype: str) -> list[str]:
        """Values in presentation form (TXT as quoted chunks), static and sourced alike."""
        node = self._view().get(_to_name(name), {})
        rrset = node.get(_to_rdtype(rtype))
        return [rdata.to_text() for rdata in rrset] if rrset is not None else []

    def txt_values(self, name: str) -> list[str]:
        """Each TXT record's character-strings joined and decoded: what SPF/DKIM readers see."""
        node = self._view().get(_to_name(name), {})
        rrset = node.get(dns.rdatatype.TXT)
        if rrset is None:
            return []
        return [b"".join(rdata.strings).decode(errors="replace") for rdata in rrset]

    def names(self) -> list[str]:
        """Every owner name with records (lower-case, no final dot), sorted."""
        return sorted(n.to_text(omit_final_dot=True).lower() for n in self._view())

    def load_zone_text(self, text: str, origin: str) -> None:
        """Load a zone file (dns.zone parses it; NS records optional, this is a sandbox); its
        SOA, when present, then answers negative queries under it."""
        zone = dns.zone.from_text(
            text, origin=_to_name(origin), relativize=False, check_origin=False
        )
        with self._lock:
            for owner, rdataset in zone.iterate_rdatasets():
                absolute = _to_name(owner)
                rrset = dns.rrset.from_rdata_list(absolute, rdataset.ttl, list(rdataset))
                self._store.setdefault(absolute, {})[rdataset.rdtype] = rrset
            self._serial += 1

    def list_on_dnsbl(self, zone: str, ip: str, reason: str = "listed") -> None:
        """List `ip` on the DNSBL `zone`: A 127.0.0.2 and a TXT reason at the reversed name."""
        owner = dnsbl_query_name(zone, ip).to_text()
        self.set_records(owner, "A", [DNSBL_LISTED_ADDRESS])
        self.set_records(owner, "TXT", [reason])

    def delist_from_dnsbl(self, zone: str, ip: str) -> None:
        self.remove_records(dnsbl_query_name(zone, ip).to_text())

    def add_ptr(self, ip: str, name: str) -> None:
        """Reverse DNS for `ip` (what receivers check against the HELO name)."""
        owner = dns.reversename.from_address(ip).to_text()
        self.set_records(owner, "PTR", [_to_name(name).to_text()])

    def set_failure(self, name: str, rcode: str = "SERVFAIL", rtype: str | None = None) -> None:
        """Answer queries for `name` (and `rtype`, or any type) with an error rcode: temperror."""
        key = (_to_name(name), _to_rdtype(rtype) if rtype else None)
        with self._lock:
            self._failures[key] = dns.rcode.from_text(rcode)

    def clear_failure(self, name: str, rtype: str | None = None) -> None:
        with self._lock:
            self._failures.pop((_to_name(name), _to_rdtype(rtype) if rtype else None), None)

    def attach_source(self, source: RecordSource) -> Callable[[], None]:
        """Serve records from a feed too (e.g. DNSEndpoint objects); returns a detach callable."""
        with self._lock:
            self._sources.append(source)

        def detach() -> None:
            with self._lock:
                if source in self._sources:
                    self._sources.remove(source)

        return detach

    def query_count(self, name: str, rtype: str | None = None) -> int:
        """How many questions for name (and type) arrived: for asserting client-side caching."""
        wanted = name.rstrip(".").lower()
        return sum(1 for n, t in self.queries if n == wanted and (rtype is None or t == rtype))

    # ----------------------------------------------------------------- answering

    def _view(self) -> dict[dns.name.Name, _Node]:
        with self._lock:
            if not self._sources:
                return dict(self._store)  # a snapshot: other threads may mutate the store
            merged: dict[dns.name.Name, _Node] = {}
            for source in self._sources:
                for record in source():
                    rrset = _build_rrset(
                        record.name, record.rtype, tuple(record.values), record.ttl
                    )
                    merged.setdefault(rrset.name, {})[rrset.rdtype] = rrset
            for owner, node in self._store.items():
                merged.setdefault(owner, {}).update(node)
            return merged

    def _soa_for(self, view: dict[dns.name.Name, _Node], name: dns.name.Name) -> dns.rrset.RRset:
        """Closest enclosing SOA in the data, else one synthesized at the last two labels."""
        candidate = name
        while True:
            node = view.get(candidate)
            if node is not None and dns.rdatatype.SOA in node:
                soa = node[dns.rdatatype.SOA]
                minimum = min(soa.ttl, soa[0].minimum)
                return dns.rrset.from_rdata_list(candidate, minimum, list(soa))
            if candidate == dns.name.root:
                break
            candidate = candidate.parent()
        labels = name.labels
        apex = dns.name.Name(labels[-3:]) if len(labels) >= 3 else name
        text = apex.to_text()
        return dns.rrset.from_text(
            apex,
            self.negative_ttl,
            "IN",
            "SOA",
            f"ns.{text} hostmaster.{text} {self._serial} 3600 600 86400 {self.negative_ttl}",
        )

    def _resolve(self, query: dns.message.Message, response: dns.message.Message) -> None:
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        with self._lock:
            failure = self._failures.get((qname, qtype), self._failures.get((qname, None)))
            view = self._view()
        if failure is not None:
            response.set_rcode(failure)
            return
        synthesized = self._synthesize(view, qname, qtype)
        if synthesized is not None:
            if len(synthesized):
                response.answer.append(synthesized)
            else:
                response.authority.append(self._soa_for(view, qname))
            return
        name = qname
        for _hop in range(MAX_CNAME_CHAIN):
            node = view.get(name)
            if not node:
                exists = any(other.is_subdomain(name) for other in view if other != name)
                if not exists:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa_for(view, name))
                return
            if qtype == dns.rdatatype.ANY:
                for rrset in node.values():
                    response.answer.append(dns.rrset.from_rdata_list(name, rrset.ttl, list(rrset)))
                return
            found = node.get(qtype)
            if found is not None:
                response.answer.append(dns.rrset.from_rdata_list(name, found.ttl, list(found)))
                if qtype == dns.rdatatype.MX:
                    self._add_mx_glue(view, found, response)
                return
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None or qtype == dns.rdatatype.CNAME:
                response.authority.append(self._soa_for(view, name))
                return
            response.answer.append(dns.rrset.from_rdata_list(name, cname.ttl, list(cname)))
            name = cname[0].target
        response.set_rcode(dns.rcode.SERVFAIL)  # CNAME loop or too long a chain

    def _synthesize(
        self, view: dict[dns.name.Name, _Node], name: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
    ) -> dns.rrset.RRset | None:
        """This server as the zone's nameserver: SOA and NS at an apex, the A record of
        `nameserver_name` (an empty rrset: NODATA there). None: answer from the data."""
        static = view.get(name, {})
        if qtype in static:
            return None
        if name == self.nameserver_name:
            if qtype == dns.rdatatype.A and _is_ipv4(self.host):
                return dns.rrset.from_text(name, 300, "IN", "A", self.host)
            return dns.rrset.RRset(name, dns.rdataclass.IN, qtype)
        if qtype not in (dns.rdatatype.SOA, dns.rdatatype.NS):
            return None
        soa = self._soa_for(view, name)
        if soa.name != name:
            return None
        if qtype == dns.rdatatype.SOA:
            return soa
        return dns.rrset.from_text(name, 300, "IN", "NS", self.nameserver_name.to_text())

    @staticmethod
    def _add_mx_glue(
        view: dict[dns.name.Name, _Node], mx: dns.rrset.RRset, response: dns.message.Message
    ) -> None:
        for rdata in mx:
            node = view.get(rdata.exchange, {})
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                if rdtype in node:
                    response.additional.append(node[rdtype])

    def handle_wire(self, wire: bytes, *, udp: bool) -> bytes | None:
        """One query in, one answer out (None: drop). Public so tests can probe without sockets."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return self._formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer those
        if len(query.question) != 1:
            return self._formerr(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        self.queries.append(
            (
                question.name.to_text(omit_final_dot=True).lower(),
                dns.rdatatype.to_text(question.rdtype),
            )
        )
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            response.set_rcode(dns.rcode.REFUSED)
        else:
            self._resolve(query, response)
            self._vouch(query, response, question.name)
            if self.signers and query.ednsflags & dns.flags.DO:
                dnssec_signing.sign_response(self.signers, response, self._types_at)
        limit = 65535
        if udp:
            limit = UDP_DEFAULT_PAYLOAD
            if query.edns >= 0:
                limit = max(UDP_DEFAULT_PAYLOAD, query.payload)
            if self.udp_payload_limit is not None:
                limit = min(limit, self.udp_payload_limit)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def sign_zone(self, zone: str) -> dnssec_signing.ZoneSigner:
        """Sign `zone` from now on (DNSSEC, see `dnssec_signing`): its DNSKEY is served at
        the apex, with the DS a parent would serve there; give `signer.ds` to a validating
        resolver as the zone's trust anchor."""
        signer = dnssec_signing.ZoneSigner(_to_name(zone))
        apex = signer.zone.to_text()
        self.set_records(apex, "DNSKEY", [signer.dnskey.to_text()])
        self.set_records(apex, "DS", [signer.ds.to_text()])
        with self._lock:
            self.signers = [s for s in self.signers if s.zone != signer.zone] + [signer]
        return signer

    def _types_at(self, name: dns.name.Name) -> list[dns.rdatatype.RdataType]:
        return list(self._view().get(name, {}))

    def mark_secure(self, zone: str) -> None:
        """Answer for names under `zone` as validated (AD) from now on, with no signatures: a
        stand-in that tests of "AD only from the named resolver" need. Real DNSSEC:
        `sign_zone` plus `validating_resolver.ValidatingResolver`."""
        self.secure_zones.add(_to_name(zone))

    def _vouch(
        self, query: dns.message.Message, response: dns.message.Message, name: dns.name.Name
    ) -> None:
        asked = query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO
        if (
            asked
            and response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
            and any(name.is_subdomain(zone) for zone in self.secure_zones)
        ):
            response.flags |= dns.flags.AD

    @staticmethod
    def _formerr(wire: bytes) -> bytes | None:
        if len(wire) < 2:
            return None
        (query_id,) = struct.unpack("!H", wire[:2])
        response = dns.message.Message(id=query_id)
        response.flags = dns.flags.QR
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
