"""The inbound feedback port (aiosmtpd): where the pool's bounce domain MX and the feedback-loop
addresses deliver DSNs, ARF complaint reports and mailto unsubscribes. Protocol only: every
message goes to `deliverability` (which reads it with `feedback` and acts), and this module
turns the verdict into an SMTP reply.

Replies: 250 once a report was applied, or understood and needing nothing (a delay, or a copy
already counted: `duplicate`); 554 5.6.0 with the reason for anything unusable (not a report,
malformed, too big or too many parts, a mark that does not verify, a message we never sent), so
the reporter sees a clear error and nothing changes here; 451 4.7.1 at MAIL FROM to a source
over its rate (`report_limits`), 451 4.3.2 when the replay ledger is full.
No AUTH: reports come from the whole Internet, and only our sealed marks are trusted.

Parsing runs in worker threads (`parseConcurrency` at a time): a 10 MB report takes seconds of
CPU in the email package, which on the event loop would stall every listener of the pod and its
probes. Matching results are applied back on the loop, which owns the state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailfleet_sender import (
    deliverability,
    feedback,
    report_limits,
    reported_copies,
    reports,
    session_limits,
    tlsrpt_inbound,
)

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 50
UNSUBSCRIBE_LOCAL_PART = "unsubscribe"


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class Handler:
    def __init__(self, layer: deliverability.Deliverability) -> None:
        self.layer = layer
        limits = layer.limits
        self.sources = report_limits.SourceLimiter.from_limits(limits)
        self.parsing = asyncio.Semaphore(limits.parse_concurrency)
        self.tls_reports: tlsrpt_inbound.Inbound | None = None
        """Where TLS-RPT report mail goes (`multipart/report; report-type=tlsrpt`)."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        if not self.sources.allow(peer, asyncio.get_running_loop().time()):
            self.layer.metrics.feedback_rate_limited.inc()
            return "451 4.7.1 Too many reports from your address, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        session_limits.data_complete(server)
        data = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        if self.tls_reports is not None and tlsrpt_inbound.is_report_mail(data):
            async with self.parsing:
                return await self.tls_reports.reply_to_mail(data)
        if any(r.partition("@")[0].lower() == UNSUBSCRIBE_LOCAL_PART for r in rcpts):
            token = feedback.unsubscribe_token(data)
            if token is not None:
                result = self.layer.unsubscribe(token, via="mailto")
                if result.status == 200:
                    await self.layer.flush_events()
                    return "250 2.0.0 Unsubscribed"
                return f"554 5.7.1 Unsubscribe refused: {result.result}"
        try:
            async with self.parsing:
                reading = await asyncio.to_thread(self.layer.read_report, data, rcpts)
            counted = self.layer.apply_reading(reading)
        except reports.ReportError as error:
            self.layer.refuse_report(error)
            return f"554 5.6.0 Report refused: {error.reason}: {_one_line(error.detail)}"
        except reported_copies.LedgerFull:
            return "451 4.3.2 Too many reports to remember, try again later"
        except Exception:  # a bug must not lose the report silently: the reporter retries
            log.exception("report processing failed")
            return "451 4.3.0 Temporary local problem"
        if counted:
            await self.layer.flush_events()
            return f"250 2.0.0 {reading.report} applied ({counted} recipients)"
        if reading.events:
            return f"250 2.0.0 {reading.report} duplicate: already counted"
        return f"250 2.0.0 {reading.report} noted: {reading.note or 'nothing to do'}"


class FeedbackSMTP(session_limits.LimitedSMTP):
    def __init__(self, server: FeedbackServer, **kwargs: Any) -> None:
        super().__init__(server.handler, **kwargs)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if getattr(self, "_original_transport", None) is None:
            self._server.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._server.sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if len(self._server.sessions) > self._server.max_connections:
            await self.push("421 4.7.0 Too many connections, try again later")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()


class FeedbackServer:
    def __init__(
        self,
        layer: deliverability.Deliverability,
        *,
        host: str,
        port: int,
        hostname: str,
        max_connections: int,
        max_connections_per_client: int = 10,
        idle_timeout: float = 60.0,
        data_timeout: float = 50.0,
    ) -> None:
        self.handler = Handler(layer)
        self.host = host
        self.port = port
        self.hostname = hostname
        self.max_connections = max_connections
        self.sessions: set[FeedbackSMTP] = set()
        self.clients = session_limits.ClientCounter()
        self.max_connections_per_client = max_connections_per_client
        self.idle_timeout = idle_timeout
        self.data_timeout = data_timeout
        self._server: asyncio.AbstractServer | None = None

    def _protocol(self) -> FeedbackSMTP:
        return FeedbackSMTP(
            self,
            hostname=self.hostname,
            ident="mailfleet feedback",
            data_size_limit=self.handler.layer.limits.max_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=self.idle_timeout,
            command_call_limit={"*": 30, "RCPT": MAX_RECIPIENTS + 10},
            limits=session_limits.Limits(
                clients=self.clients,
                per_client=self.max_connections_per_client,
                data_timeout=self.data_timeout,
            ),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("feedback port listening", extra={"port": self.port})

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None
