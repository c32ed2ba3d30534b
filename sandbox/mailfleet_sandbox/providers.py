"""Mailbox provider simulators (DESIGN.md §5): aiosmtpd receivers that stand in for Gmail,
Outlook, Yahoo or Orange MX hosts on their own 127.x addresses.

Each receiver answers per recipient at RCPT time the way providers do: throttling above a
per-source-IP rate (421 4.7.0, connection closed), unknown users (550 5.1.1), full mailboxes
(452 4.2.2), scripted answers, a hook for anything else; DATA-time answers can be scripted too.
It records every accepted message (peer IP, HELO, envelope, bytes, TLS) and every answer it gave
(`attempts`), verifies SPF, DKIM and DMARC independently when given a resolver, and can send ARF
complaint reports back for a deterministic fraction of accepted mail.

The peer IP is the connecting socket's source address: the sender binds its assigned 127.x
source IP, so per-IP counting here measures exactly what the operator promised.

`ProviderFleet` runs several providers on distinct 127.0.10.x addresses on one common port and
publishes their MX and A records in a DNSServer, so MX delivery works unchanged except for the
destination port (the sender's sandbox setting; port 25 needs root).

Protocol (aiosmtpd's SMTP) apart from policy (`ProviderBehaviour`, decided by `_decide_rcpt`)
apart from reply text (`ReplyTexts`, one per provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import socket
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import aiosmtplib
import dns.asyncresolver
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailfleet_sandbox import reports, verifying
from mailfleet_sandbox.certificates import Issued, SandboxCA
from mailfleet_sandbox.dns import DNSServer

log = logging.getLogger(__name__)

Reply = tuple[int, str]
"""An SMTP answer: code and text (the text may start with an enhanced status code)."""
RcptHook = Callable[[str, str], Reply | None]
"""(rcpt, peer_ip) -> an answer to force, or None for the normal policy."""
DataHook = Callable[[str, tuple[str, ...], bytes], Reply | None]
"""(peer_ip, accepted rcpts, data) -> an answer to DATA to force, or None to accept."""
FeedbackSink = Callable[[bytes], Awaitable[None]]
FeedbackTarget = tuple[str, int] | FeedbackSink
MessageHook = Callable[["ReceivedMessage"], None]
"""Called (synchronously, on the loop) with every accepted message once it is recorded."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message as the provider saw it."""

    provider: str
    peer_ip: str
    helo: str
    mail_from: str
    """The envelope sender; "" for the null reverse-path (bounces, DSNs)."""
    rcpt_to: tuple[str, ...]
    data: bytes
    received_at: float
    """time.time() when DATA was accepted."""
    tls: bool
    """Whether STARTTLS was in effect for this transaction."""
    verdicts: dict[str, str] = field(default_factory=dict)
    """{"spf", "dkim", "dmarc"} results when the receiver verifies (see verifying.py), with
    details under dotted keys ("spf.domain", "dkim.domains", "dmarc.policy"); {} otherwise."""

    def header(self, name: str) -> str | None:
        """First value of a header of the message (unfolded), e.g. "Subject"."""
        return reports.header_value(self.data, name)


class Attempt(NamedTuple):
    """One answer given to a recipient: at RCPT, and again at DATA for accepted recipients."""

    peer_ip: str
    rcpt: str
    code: int
    stage: str = "RCPT"
    """"RCPT" or "DATA"."""


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class ReplyTexts:
    """What one provider says; `{ip}` and `{rcpt}` are filled in. Codes are fixed by the
    behaviour (421 throttle, 550 5.1.1 unknown, 452 4.2.2 full), texts imitate the provider so
    the sender's bounce classifier meets realistic wording."""

    throttled: str = "4.7.0 Too many messages from {ip}, try again later"
    unknown_user: str = "5.1.1 <{rcpt}>: Recipient address rejected: User unknown"
    mailbox_full: str = "4.2.2 <{rcpt}>: Mailbox full"
    too_many_connections: str = "4.7.0 Too many concurrent connections from {ip}"
    rcpt_ok: str = "2.1.5 OK"
    data_ok: str = "2.0.0 OK: queued"


PROVIDER_REPLIES: dict[str, ReplyTexts] = {
    "gmail": ReplyTexts(
        throttled=(
            "4.7.0 [{ip}] Our system has detected an unusual rate of unsolicited mail "
            "originating from your IP address. To protect our users from spam, mail sent from "
            "your IP address has been temporarily rate limited. - gsmtp"
        ),
        unknown_user=(
            "5.1.1 The email account that you tried to reach does not exist. Please try "
            "double-checking the recipient's email address for typos or unnecessary spaces. "
            "- gsmtp"
        ),
        mailbox_full=(
            "4.2.2 The email account that you tried to reach is over quota and inactive. - gsmtp"
        ),
        too_many_connections="4.7.0 Try again later, closing connection. (EHLO) - gsmtp",
        rcpt_ok="2.1.5 OK - gsmtp",
        data_ok="2.0.0 OK - gsmtp",
    ),
    "outlook": ReplyTexts(
        throttled="4.7.0 Server busy. Please try again later from [{ip}]. (S77714)",
        unknown_user=(
            "5.1.1 <{rcpt}>: Requested action not taken: mailbox unavailable (S2017062302)"
        ),
        mailbox_full="4.2.2 <{rcpt}>: Mailbox full (S2017040802)",
        too_many_connections="4.7.0 Too many connections from [{ip}]. (S3114)",
        rcpt_ok="2.1.5 Recipient OK",
        data_ok="2.6.0 Queued mail for delivery",
    ),
    "yahoo": ReplyTexts(
        throttled=(
            "4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or "
            "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
        ),
        unknown_user="5.1.1 <{rcpt}>: Recipient address rejected: user doesn't exist",
        mailbox_full="4.2.2 <{rcpt}>: mailbox is full",
        too_many_connections="4.7.0 [TSS09] All messages from {ip} will be permanently deferred",
        rcpt_ok="2.1.5 Ok",
        data_ok="2.0.0 Ok: queued",
    ),
    "orange": ReplyTexts(
        throttled="4.7.0 Service refuse. Veuillez essayer plus tard. OFR_421 [{ip}]",
        unknown_user="5.1.1 <{rcpt}>: Adresse d au moins un destinataire invalide. OFR_416",
        mailbox_full="4.2.2 <{rcpt}>: Boite du destinataire pleine. OFR_417",
        too_many_connections="4.7.0 Trop de connexions, reessayez plus tard. OFR_421 [{ip}]",
        rcpt_ok="2.1.5 Recipient OK",
        data_ok="2.0.0 Message accepted for delivery",
    ),
}


@dataclass
class ProviderBehaviour:
    """What a provider does with incoming mail. Mutable: tests change it while it runs."""

    rate_limit_per_ip: float | None = None
    """Messages per second accepted from one source IP (token bucket, burst = max(1, rate));
    the first RCPT of a message over it gets 421 4.7.0 and the connection is closed."""
    unknown_users: set[str] = field(default_factory=set)
    """Recipients answered 550 5.1.1 (compared lower-case)."""
    full_mailboxes: set[str] = field(default_factory=set)
    """Recipients answered 452 4.2.2."""
    complaint_rate: float = 0.0
    """Fraction of accepted messages reported as abuse (ARF): exactly every 1/rate-th one."""
    scripted: dict[str, Reply] = field(default_factory=dict)
    """rcpt -> fixed RCPT answer, checked first."""
    bounce_after_accept: set[str] = field(default_factory=set)
    """Recipients accepted at RCPT and DATA, then bounced with a DSN (5.1.1) sent to the
    envelope sender through `bounce_target`: the asynchronous bounce some providers do."""
    data_scripted: dict[str, Reply] = field(default_factory=dict)
    """rcpt -> fixed answer to DATA when that recipient is in the transaction."""
    on_rcpt: RcptHook | None = None
    on_data: DataHook | None = None
    greeting_delay: float = 0.0
    """Seconds before the 220 banner (tarpitting at connect)."""
    rcpt_delay: float = 0.0
    """Seconds before each RCPT answer (tarpitting)."""
    max_connections_per_ip: int | None = None
    """Concurrent connections from one IP; more get 421 at connect and are closed."""


# --------------------------------------------------------------------------- TLS


def make_self_signed_cert(hostname: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM), EC P-256, valid a day, SAN = hostname."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def make_self_signed_context(hostname: str) -> ssl.SSLContext:
    """A server-side TLS context with a fresh self-signed certificate, for STARTTLS tests."""
    cert_pem, key_pem = make_self_signed_cert(hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as directory:  # ssl loads chains from files only
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        os.chmod(key_path, 0o600)
        context.load_cert_chain(cert_path, key_path)
    return context


# --------------------------------------------------------------------------- protocol


class _Transaction(Envelope):  # type: ignore[misc]
    """Per-message state: the throttling decision is taken once, at the first RCPT."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle_checked = False


class _ProviderSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's protocol plus connection accounting, a greeting gate and close-after-421."""

    def __init__(self, receiver: SmtpReceiver, **kwargs: Any) -> None:
        super().__init__(receiver._handler, **kwargs)
        self._receiver = receiver
        self._counted_ip: str | None = None

    def _create_envelope(self) -> Envelope:
        return _Transaction()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._counted_ip is None and getattr(self, "_original_transport", None) is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self._counted_ip = str(peer[0]) if peer else "?"
            self._receiver._connection_opened(self._counted_ip, self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted_ip is not None:
            self._receiver._connection_closed(self._counted_ip, self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        behaviour = self._receiver.behaviour
        if behaviour.greeting_delay > 0:
            await asyncio.sleep(behaviour.greeting_delay)
        ip = self._counted_ip or "?"
        limit = behaviour.max_connections_per_ip
        if limit is not None and self._receiver.open_connections[ip] > limit:
            text = self._receiver.replies.too_many_connections.format(ip=ip, rcpt="")
            await self.push(f"421 {text}")
            return
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg: str) -> None:
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException:
            # The client gave up on our certificate (or the handshake failed): recorded, so a
            # scene can tell "deferred for TLS" from "never tried".
            self._receiver._tls_failed(self._counted_ip or "?")
            raise

    async def push(self, status: str) -> None:  # type: ignore[override]
        await super().push(status)
        head = status[:3]
        if head == "421" and self.transport is not None:
            self.transport.close()  # RFC 5321 §3.8: 421 means the service is closing


class _Handler:
    """aiosmtpd hooks; policy decisions are delegated to the receiver."""

    def __init__(self, receiver: SmtpReceiver) -> None:
        self._receiver = receiver

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: _Transaction,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        peer_ip = _peer_ip(session)
        behaviour = self._receiver.behaviour
        if behaviour.rcpt_delay > 0:
            await asyncio.sleep(behaviour.rcpt_delay)
        code, text = self._receiver._decide_rcpt(envelope, address, peer_ip)
        self._receiver._record_attempt(Attempt(peer_ip, address, code, "RCPT"))
        if 200 <= code < 300:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return f"{code} {text}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self._receiver._on_data(session, envelope)


# --------------------------------------------------------------------------- receiver


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer  # typed str in aiosmtpd, a (host, port) tuple in practice
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SmtpReceiver:
    """One provider's MX host on host:port (port 0 picks a free one; see `port` after start)."""

    def __init__(
        self,
        name: str = "sink",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        behaviour: ProviderBehaviour | None = None,
        verify_with: DNSServer | dns.asyncresolver.Resolver | None = None,
        starttls_context: ssl.SSLContext | None = None,
        eml_dir: Path | None = None,
        record_file: Path | None = None,
        hostname: str | None = None,
        replies: ReplyTexts | None = None,
        feedback_target: FeedbackTarget | None = None,
        feedback_rcpt: str = "fbl@mailfleet.test",
        data_size_limit: int = 35 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.behaviour = behaviour or ProviderBehaviour()
        self.verify_with = verify_with
        self.starttls_context = starttls_context
        self.eml_dir = eml_dir
        self.record_file = record_file
        self.hostname = hostname or f"mx.{name}.test"
        """Shown in the 220 banner and used as the ARF reporting MTA; never socket.getfqdn()."""
        self.replies = replies or PROVIDER_REPLIES.get(name, ReplyTexts())
        self.feedback_target = feedback_target
        """Where ARF reports go: (host, port) of an SMTP server, or an async callable."""
        self.feedback_rcpt = feedback_rcpt
        self.bounce_target: FeedbackTarget | None = None
        """Where asynchronous DSNs go (None: the feedback target); sent MAIL FROM:<> to the
        original envelope sender."""
        self.bounces: list[bytes] = []
        """Every asynchronous DSN generated."""
        """The envelope and To: recipient of ARF reports (the pool's FBL address)."""
        self.data_size_limit = data_size_limit
        self.messages: list[ReceivedMessage] = []
        self.attempts: list[Attempt] = []
        self.complaints: list[bytes] = []
        """Every ARF report generated (whether or not it could be sent)."""
        self.open_connections: Counter[str] = Counter()
        self.peak_connections: Counter[str] = Counter()
        """Highest number of simultaneous connections seen per source IP."""
        self.connections_total: Counter[str] = Counter()
        self.tls_failures: list[tuple[str, float]] = []
        """(peer IP, time.time()) of every STARTTLS handshake that did not complete."""
        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None
        self._protocols: set[_ProviderSMTP] = set()
        self._buckets: dict[str, _TokenBucket] = {}
        self._changed = asyncio.Event()
        self.listeners: list[asyncio.Event] = []
        """Extra events set on every new message or answer (ProviderFleet waits on them)."""
        self.on_message: list[MessageHook] = []
        """Observers of accepted messages (e.g. engagement.Engagement: recipients reading)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> _ProviderSMTP:
            return _ProviderSMTP(
                self,
                hostname=self.hostname,
                ident="ESMTP mailfleet-sandbox",
                tls_context=self.starttls_context,
                enable_SMTPUTF8=True,
                data_size_limit=self.data_size_limit,
                timeout=60,
                loop=loop,
            )

        self._server = await loop.create_server(factory, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("smtp receiver started", extra={"provider": self.name, "port": self.port})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for protocol in list(self._protocols):
                if protocol.transport is not None:
                    protocol.transport.close()
            await self._server.wait_closed()
            self._server = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def __aenter__(self) -> SmtpReceiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- waiting and measuring

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - part of the sandbox API
        what: str = "condition",
    ) -> None:
        """Wait until `predicate()` holds, re-checked after every message or answer."""
        await _wait_on(self._changed, predicate, timeout, f"{self.name}: {what}")

    async def wait_for(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109 - part of the sandbox API
    ) -> list[ReceivedMessage]:
        """Wait until at least `count` messages were accepted; returns them all."""
        await self.wait_until(
            lambda: len(self.messages) >= count, timeout, what=f"{count} messages"
        )
        return list(self.messages)

    def received_by_ip(self) -> dict[str, int]:
        """Accepted messages per source IP."""
        return dict(Counter(m.peer_ip for m in self.messages))

    def received_per_second(self, ip: str | None = None) -> float:
        """Mean acceptance rate between the first and last message (from `ip`, or all)."""
        stamps = [m.received_at for m in self.messages if ip is None or m.peer_ip == ip]
        if len(stamps) < 2 or stamps[-1] == stamps[0]:
            return 0.0
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def max_in_window(self, window: float = 1.0, ip: str | None = None) -> int:
        """Most messages accepted within any `window` seconds: checks a rate was never exceeded."""
        stamps = sorted(m.received_at for m in self.messages if ip is None or m.peer_ip == ip)
        best, start = 0, 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def clear(self) -> None:
        """Forget recorded messages, answers, reports and rate state (between test phases)."""
        self.messages.clear()
        self.attempts.clear()
        self.complaints.clear()
        self.bounces.clear()
        self._buckets.clear()
        self._accepted = 0

    def codes_for(self, rcpt: str, stage: str | None = "RCPT") -> list[int]:
        """Codes answered to `rcpt` in order (at RCPT by default; stage None for all)."""
        return [
            a.code
            for a in self.attempts
            if a.rcpt.lower() == rcpt.lower() and (stage is None or a.stage == stage)
        ]

    # ----------------------------------------------------------------- policy

    def _decide_rcpt(self, envelope: _Transaction, rcpt: str, peer_ip: str) -> Reply:
        """Precedence: scripted, hook, throttling (once per message), unknown, full, accept."""
        behaviour = self.behaviour
        key = rcpt.lower()
        if key in {k.lower() for k in behaviour.scripted}:
            return next(v for k, v in behaviour.scripted.items() if k.lower() == key)
        if behaviour.on_rcpt is not None:
            forced = behaviour.on_rcpt(rcpt, peer_ip)
            if forced is not None:
                return forced
        if not envelope.throttle_checked:
            envelope.throttle_checked = True
            if behaviour.rate_limit_per_ip is not None:
                bucket = self._buckets.get(peer_ip)
                if bucket is None or bucket.rate != behaviour.rate_limit_per_ip:
                    bucket = self._buckets[peer_ip] = _TokenBucket(behaviour.rate_limit_per_ip)
                if not bucket.take():
                    return 421, self.replies.throttled.format(ip=peer_ip, rcpt=rcpt)
        if key in {u.lower() for u in behaviour.unknown_users}:
            return 550, self.replies.unknown_user.format(ip=peer_ip, rcpt=rcpt)
        if key in {u.lower() for u in behaviour.full_mailboxes}:
            return 452, self.replies.mailbox_full.format(ip=peer_ip, rcpt=rcpt)
        return 250, self.replies.rcpt_ok.format(ip=peer_ip, rcpt=rcpt)

    def _decide_data(self, peer_ip: str, rcpts: tuple[str, ...], data: bytes) -> Reply | None:
        behaviour = self.behaviour
        scripted = {k.lower(): v for k, v in behaviour.data_scripted.items()}
        for rcpt in rcpts:
            if rcpt.lower() in scripted:
                return scripted[rcpt.lower()]
        if behaviour.on_data is not None:
            return behaviour.on_data(peer_ip, rcpts, data)
        return None

    async def _on_data(self, session: Session, envelope: Envelope) -> str:
        peer_ip = _peer_ip(session)
        rcpts = tuple(envelope.rcpt_tos)
        mail_from = envelope.mail_from or ""
        mail_from = "" if mail_from == "<>" else mail_from  # aiosmtpd keeps the null path as <>
        raw = envelope.original_content or envelope.content or b""
        data = raw.encode("utf-8", errors="surrogateescape") if isinstance(raw, str) else raw
        forced = self._decide_data(peer_ip, rcpts, data)
        code, text = forced if forced is not None else (250, self.replies.data_ok)
        for rcpt in rcpts:
            self._record_attempt(Attempt(peer_ip, rcpt, code, "DATA"))
        if not 200 <= code < 300:
            return f"{code} {text}"
        verdicts: dict[str, str] = {}
        if self.verify_with is not None:
            resolver = (
                self.verify_with.resolver()
                if isinstance(self.verify_with, DNSServer)
                else self.verify_with
            )
            try:
                verdicts = await verifying.verify_message(
                    resolver=resolver,
                    peer_ip=peer_ip,
                    helo=session.host_name or "",
                    mail_from=mail_from,
                    data=data,
                )
            except Exception as error:  # a verifier bug must not turn into a 500 to the sender
                log.exception("verification failed", extra={"provider": self.name})
                verdicts = {"error": repr(error)}
        message = ReceivedMessage(
            provider=self.name,
            peer_ip=peer_ip,
            helo=session.host_name or "",
            mail_from=mail_from,
            rcpt_to=rcpts,
            data=data,
            received_at=time.time(),
            tls=session.ssl is not None,
            verdicts=verdicts,
        )
        self._store(message)
        self._maybe_complain(message)
        self._maybe_bounce(message)
        return f"{code} {text}"

    # ----------------------------------------------------------------- recording

    def _record_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self._notify()

    def _store(self, message: ReceivedMessage) -> None:
        self.messages.append(message)
        index = len(self.messages)
        eml_name = ""
        # Small synchronous writes: acceptable in a test bed, keeps ordering trivial.
        if self.eml_dir is not None:
            self.eml_dir.mkdir(parents=True, exist_ok=True)
            eml_name = f"{self.name}-{index:06d}.eml"
            (self.eml_dir / eml_name).write_bytes(message.data)
        if self.record_file is not None:
            entry = asdict(message)
            entry.pop("data")
            entry["rcpt_to"] = list(message.rcpt_to)
            entry["size"] = len(message.data)
            entry["eml"] = eml_name
            entry["message_id"] = message.header("Message-ID")
            with self.record_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
        for hook in self.on_message:
            try:
                hook(message)
            except Exception:  # an observer's bug must not turn into a 500 to the sender
                log.exception("message hook failed", extra={"provider": self.name})
        self._notify()

    def _tls_failed(self, ip: str) -> None:
        self.tls_failures.append((ip, time.time()))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        for event in self.listeners:
            event.set()

    def _connection_opened(self, ip: str, protocol: _ProviderSMTP) -> None:
        self._protocols.add(protocol)
        self.open_connections[ip] += 1
        self.connections_total[ip] += 1
        self.peak_connections[ip] = max(self.peak_connections[ip], self.open_connections[ip])

    def _connection_closed(self, ip: str, protocol: _ProviderSMTP) -> None:
        if protocol in self._protocols:
            self._protocols.discard(protocol)
            self.open_connections[ip] -= 1

    # ----------------------------------------------------------------- complaints

    def _maybe_complain(self, message: ReceivedMessage) -> None:
        """Complain about exactly floor(n * rate) of the first n accepted messages."""
        self._accepted += 1
        rate = self.behaviour.complaint_rate
        if rate <= 0:
            return
        n = self._accepted
        if int(n * rate + 1e-9) <= int((n - 1) * rate + 1e-9):
            return
        report = reports.build_arf(
            message.data,
            source_ip=message.peer_ip,
            mail_from=message.mail_from,
            rcpt_to=message.rcpt_to[0],
            user_agent=f"mailfleet-sandbox-{self.name}-fbl/1.0",
            reporting_mta=self.hostname,
            from_addr=f"fbl@{self.hostname}",
            to_addr=self.feedback_rcpt,
            arrival=message.received_at,
        )
        self.complaints.append(report)
        self._spawn_report(
            report, self.feedback_target, sender=f"fbl@{self.hostname}", rcpt=self.feedback_rcpt
        )

    def _maybe_bounce(self, message: ReceivedMessage) -> None:
        bounced = {u.lower() for u in self.behaviour.bounce_after_accept}
        for rcpt in message.rcpt_to:
            if rcpt.lower() not in bounced or not message.mail_from:
                continue
            dsn = reports.build_dsn(
                message.data,
                rcpt,
                status="5.1.1",
                diagnostic="smtp; 550 5.1.1 " + self.replies.unknown_user.format(
                    ip=message.peer_ip, rcpt=rcpt
                ).removeprefix("5.1.1 "),
                reporting_mta=self.hostname,
                from_addr=f"MAILER-DAEMON@{self.hostname}",
                to_addr=message.mail_from,
                arrival=message.received_at,
            )
            self.bounces.append(dsn)
            self._spawn_report(
                dsn, self.bounce_target or self.feedback_target, sender="", rcpt=message.mail_from
            )

    def _spawn_report(
        self, report: bytes, target: FeedbackTarget | None, *, sender: str, rcpt: str
    ) -> None:
        if target is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._send_report(report, target, sender=sender, rcpt=rcpt)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_report(
        self, report: bytes, target: FeedbackTarget, *, sender: str, rcpt: str
    ) -> None:
        try:
            if isinstance(target, tuple):
                host, port = target
                # a client, not aiosmtplib.send: DSNs go out with the null sender MAIL FROM:<>
                client = aiosmtplib.SMTP(
                    hostname=host,
                    port=port,
                    local_hostname=self.hostname,
                    start_tls=False,
                    timeout=10,
                )
                async with client:
                    await client.sendmail(sender, [rcpt], report)
            else:
                await target(report)
        except Exception:  # the report is kept in self.complaints / self.bounces either way
            log.warning(
                "could not deliver report",
                extra={"provider": self.name, "rcpt": rcpt},
                exc_info=True,
            )


# --------------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class ProviderSpec:
    """A simulated provider: its mail domains, its MX host name and its 127.x address."""

    name: str
    domains: tuple[str, ...]
    mx_host: str
    address: str


DEFAULT_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("gmail", ("gmail.test", "googlemail.test"), "gmail-smtp-in.l.google.test",
                 "127.0.10.1"),
    ProviderSpec("outlook", ("outlook.test", "hotmail.test", "live.test"),
                 "outlook-test.mail.protection.outlook.test", "127.0.10.2"),
    ProviderSpec("yahoo", ("yahoo.test", "aol.test"), "mta5.am0.yahoodns.test", "127.0.10.3"),
    ProviderSpec("orange", ("orange.test", "wanadoo.test"), "smtp-in.orange.test",
                 "127.0.10.4"),
)  # fmt: skip


class ProviderFleet:
    """Several providers on distinct 127.x addresses sharing one port, with their MX and A
    records published in `dns` (MX 10 <mx_host>, A <address>)."""

    def __init__(
        self,
        dns: DNSServer | None = None,
        *,
        providers: Sequence[ProviderSpec] = DEFAULT_PROVIDERS,
        port: int = 0,
        behaviours: dict[str, ProviderBehaviour] | None = None,
        verify: bool = True,
        starttls: bool = False,
        ca: SandboxCA | None = None,
        feedback_target: FeedbackTarget | None = None,
        record_dir: Path | None = None,
    ) -> None:
        """`ca`: every provider offers STARTTLS with a certificate for its MX name from this
        CA (`starttls` alone: a self-signed one)."""
        self.dns = dns
        self.specs = tuple(providers)
        self.port = port
        """The common SMTP port of every provider (set by start when 0)."""
        self.receivers: dict[str, SmtpReceiver] = {}
        self._behaviours = behaviours or {}
        self._verify = verify
        self._starttls = starttls
        self._ca = ca
        self.certificates: dict[str, Issued] = {}
        """provider -> the certificate its MX host presents (with `ca`)."""
        self._feedback_target = feedback_target
        self._record_dir = record_dir
        self._changed = asyncio.Event()

    def __getitem__(self, name: str) -> SmtpReceiver:
        return self.receivers[name]

    def __iter__(self) -> Iterator[SmtpReceiver]:
        return iter(self.receivers.values())

    def _build(self, port: int) -> dict[str, SmtpReceiver]:
        built: dict[str, SmtpReceiver] = {}
        for spec in self.specs:
            built[spec.name] = SmtpReceiver(
                spec.name,
                spec.address,
                port,
                behaviour=self._behaviours.get(spec.name) or ProviderBehaviour(),
                verify_with=self.dns if self._verify else None,
                starttls_context=self._tls_context(spec),
                hostname=spec.mx_host,
                feedback_target=self._feedback_target,
                eml_dir=(self._record_dir / spec.name) if self._record_dir else None,
                record_file=(self._record_dir / f"{spec.name}.jsonl") if self._record_dir else None,
            )
        return built

    def _tls_context(self, spec: ProviderSpec) -> ssl.SSLContext | None:
        if self._ca is not None:
            issued = self.certificates.get(spec.name)
            if issued is None:
                issued = self.certificates[spec.name] = self._ca.issue([spec.mx_host])
            return issued.server_context()
        return make_self_signed_context(spec.mx_host) if self._starttls else None

    async def start(self) -> None:
        """Start every provider on one port number (retrying with another free port when one
        address has it taken), then publish the DNS records."""
        last_error: OSError | None = None
        for _attempt in range(20):
            port = self.port or _free_port(self.specs[0].address)
            receivers = self._build(port)
            started: list[SmtpReceiver] = []
            try:
                for receiver in receivers.values():
                    await receiver.start()
                    started.append(receiver)
            except OSError as error:
                last_error = error
                for receiver in started:
                    await receiver.stop()
                if self.port:
                    raise
                continue
            self.port, self.receivers = port, receivers
            for receiver in receivers.values():
                receiver.listeners.append(self._changed)
            self.publish_dns()
            return
        raise OSError("no common free port for the provider fleet") from last_error

    def publish_dns(self) -> None:
        """(Re)write each provider's MX and A records into the DNS server."""
        if self.dns is None:
            return
        for spec in self.specs:
            for domain in spec.domains:
                self.dns.set_records(domain, "MX", [f"10 {spec.mx_host}."])
            self.dns.set_records(spec.mx_host, "A", [spec.address])
            self.dns.add_ptr(spec.address, spec.mx_host)

    async def stop(self) -> None:
        for receiver in self.receivers.values():
            await receiver.stop()

    async def __aenter__(self) -> ProviderFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def set_feedback_target(
        self, target: FeedbackTarget | None, rcpt: str | None = None
    ) -> None:
        """Where every provider sends its ARF reports from now on (and to which address)."""
        self._feedback_target = target
        for receiver in self.receivers.values():
            receiver.feedback_target = target
            if rcpt is not None:
                receiver.feedback_rcpt = rcpt

    def provider_for(self, address_or_domain: str) -> SmtpReceiver | None:
        """The receiver that hosts a recipient address or domain, if any."""
        domain = address_or_domain.rpartition("@")[2].lower()
        for spec in self.specs:
            if domain in spec.domains:
                return self.receivers.get(spec.name)
        return None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Every provider's accepted messages, in arrival order."""
        merged = [m for r in self.receivers.values() for m in r.messages]
        return sorted(merged, key=lambda m: m.received_at)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - part of the sandbox API
        what: str = "condition",
    ) -> None:
        """Wait until `predicate()` holds, re-checked after any provider's message or answer."""
        await _wait_on(self._changed, predicate, timeout, f"fleet: {what}")

    async def wait_for(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109 - part of the sandbox API
    ) -> list[ReceivedMessage]:
        """Wait until the whole fleet accepted at least `count` messages; returns them all."""
        await self.wait_until(lambda: len(self.messages) >= count, timeout, f"{count} messages")
        return self.messages


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def _wait_on(
    event: asyncio.Event,
    predicate: Callable[[], bool],
    timeout: float,  # noqa: ASYNC109 - a deadline for a condition, not an I/O timeout
    what: str,
) -> None:
    """Re-check `predicate` each time `event` fires; no polling sleeps. Checking and clearing
    happen without an await in between, so no wake-up is lost on the single loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), remaining)
