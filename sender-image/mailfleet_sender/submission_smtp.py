"""SMTP submission (aiosmtpd): AUTH PLAIN/LOGIN against the mounted credentials, STARTTLS with
the mounted certificate, and the limits of `config.Submission`. The protocol lives in aiosmtpd;
policy comes from `intake` (the same checks as HTTP); this module only wires them together and
adds the per-connection limits aiosmtpd lacks.

Smuggling (2023 advisories): aiosmtpd ends DATA only on <CRLF>.<CRLF>, and `intake` refuses any
message with a bare LF or CR, so `<LF>.<LF>` can neither end the data nor hide in it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailfleet_sender import config, from_domains, intake, messages, session_limits, units

log = logging.getLogger(__name__)


def load_credentials(path: str | None) -> dict[str, str]:
    """user -> password from a `user:password` file or a Secret directory (file per user).
    A user whose password is empty is left out (logged): a Secret key with an empty value
    must not become a login that any empty password passes."""
    if path is None:
        return {}
    p = Path(path)
    found: dict[str, str] = {}
    if p.is_dir():
        for entry in sorted(p.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            found[entry.name] = entry.read_text(encoding="utf-8").strip()
    else:
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            user, _, password = line.partition(":")
            found[user] = password
    users = {user: password for user, password in found.items() if user and password}
    for user in sorted(set(found) - set(users)):
        log.warning("smtp user with an empty password ignored", extra={"user": user})
    return users


def tls_context(cfg: config.Submission) -> ssl.SSLContext | None:
    if cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    return context


class Authenticator:
    """Constant-time check of AUTH PLAIN/LOGIN; reloaded with the config."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        expected = self.users.get(user, "")
        supplied = data.password.decode("utf-8", "replace")
        # Compared whatever the user, so timing does not tell which users exist; an empty
        # password never passes, even against an empty stored one.
        ok = (
            hmac.compare_digest(expected.encode(), supplied.encode())
            and bool(expected)
            and bool(supplied)
            and user in self.users
        )
        if not ok:
            log.info("smtp auth failed", extra={"user": user})
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


class Handler:
    """aiosmtpd hooks: recipient limits at RCPT, the From domains and then the whole message
    to `intake` at DATA."""

    def __init__(self, intake_: intake.Intake) -> None:
        self.intake = intake_

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.intake.accepting:
            return intake.DRAINING.smtp_reply()
        if address and not messages.is_address(address):
            return "553 5.1.7 Bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        problem = self.intake.check_recipient(address, len(envelope.rcpt_tos))
        if problem is not None:
            return problem.smtp_reply()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        session_limits.data_complete(server)
        data = envelope.original_content or b""
        refused = from_domains.refusal(
            self.intake.cfg.submission.smtp_from_domains,
            data=data,
            envelope_sender=envelope.mail_from or None,
        )
        if refused is not None:
            self.intake.metrics.rejected.labels("smtp", "from_domain").inc()
            return refused.smtp_reply()
        result = await self.intake.submit(
            sender=envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            data=data,
            via="smtp",
            started=True,
        )
        if isinstance(result, messages.Rejection):
            return result.smtp_reply()
        return f"250 2.0.0 OK queued as {result.spool_id}"


class SubmissionSMTP(session_limits.LimitedSMTP):
    """aiosmtpd's protocol plus a connection limit and a transaction limit per session (and
    the per-client cap and DATA deadline of `session_limits`)."""

    def __init__(self, server: SMTPServer, **kwargs: Any) -> None:
        super().__init__(server.handler, **kwargs)
        self._server = server
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = not self._counted and getattr(self, "_original_transport", None) is None
        super().connection_made(transport)
        if first:
            self._counted = True
            self._server.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._server.sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if len(self._server.sessions) > self._server.cfg.max_connections:
            await self.push("421 4.7.0 Too many connections, try again later")
            return
        if not self._server.intake.accepting:
            await self.push(intake.DRAINING.smtp_reply())
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        await super().push(status)
        head = status[:3]
        if head in ("421", b"421") and self.transport is not None:
            self.transport.close()


class SMTPServer:
    """The listener; `stop()` refuses new sessions and waits for open transactions."""

    def __init__(
        self,
        cfg: config.Submission,
        intake_: intake.Intake,
        hostname: str,
        *,
        host: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.cfg = cfg
        self.reuse_port = reuse_port
        """Share the port with the other intake processes (SO_REUSEPORT: `intake_workers`)."""
        self.host = host or cfg.listen_address or "0.0.0.0"
        self.intake = intake_
        self.hostname = hostname
        self.handler = Handler(intake_)
        self.sessions: set[SubmissionSMTP] = set()
        self.clients = session_limits.ClientCounter()
        self._server: asyncio.AbstractServer | None = None
        self._tls = tls_context(cfg)
        self._authenticator = Authenticator(load_credentials(cfg.credentials_file))
        self.port = 0

    def auth_required(self) -> bool:
        """Closed by default: AUTH first, unless the config opens the listener on purpose
        (`allowUnauthenticated` and no credentials at all)."""
        return self.cfg.credentials_file is not None or not self.cfg.allow_unauthenticated

    def explain(self) -> None:
        """One log line at start when the listener's settings make it refuse everything or
        accept anyone, so an operator reading the logs knows why."""
        cfg = self.cfg
        if not self.auth_required():
            log.warning("smtp submission accepts mail without AUTH (allowUnauthenticated): "
                        "only for trusted networks")
        elif not self._authenticator.users:
            log.warning("smtp submission has no usable credentials (no credentialsFile, or "
                        "only empty passwords): AUTH never succeeds, MAIL gets 530")
        elif self._tls is None and not cfg.allow_plaintext_auth:
            log.warning("smtp submission has no TLS certificate and allowPlaintextAuth is "
                        "false: AUTH is not offered, MAIL gets 530")

    def reload(self, cfg: config.Submission) -> None:
        """Credentials and certificate are re-read on config reload (rotated Secrets)."""
        self.cfg = cfg
        try:
            self._authenticator.users = load_credentials(cfg.credentials_file)
        except (OSError, UnicodeDecodeError):
            log.exception("cannot reload the smtp credentials; keeping the old ones")
        try:
            self._tls = tls_context(cfg)
        except (OSError, ssl.SSLError):
            log.exception("cannot reload the submission certificate; keeping the old one")

    def _protocol(self) -> SubmissionSMTP:
        cfg = self.cfg
        per_session = cfg.messages_per_connection
        limits: dict[str, int] = {
            "*": 30,
            "MAIL": per_session,
            "RCPT": per_session * cfg.max_recipients,
            "DATA": per_session,
            "RSET": per_session,
            "NOOP": per_session,
        }
        return SubmissionSMTP(
            self,
            hostname=self.hostname,
            ident="mailfleet",
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            tls_context=self._tls,
            require_starttls=False,
            timeout=units.duration_seconds(cfg.idle_timeout),
            auth_required=self.auth_required(),
            # Never AUTH in clear unless allowed: without a certificate that means no AUTH.
            auth_require_tls=not cfg.allow_plaintext_auth,
            authenticator=self._authenticator,
            command_call_limit=limits,
            limits=session_limits.Limits(
                clients=self.clients,
                per_client=cfg.max_connections_per_client,
                data_timeout=units.duration_seconds(cfg.data_timeout),
            ),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, self.cfg.smtp_port, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("smtp submission listening", extra={"port": self.port, "pid": os.getpid()})
        self.explain()

    def serving(self) -> bool:
        return self._server is not None

    def close_listener(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self, *, grace: float) -> None:
        """No new sessions; sessions in a transaction get `grace` seconds to finish it."""
        self.close_listener()
        deadline = asyncio.get_running_loop().time() + grace
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            busy = [s for s in self.sessions if _in_transaction(s)]
            if not busy:
                break
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def _in_transaction(session: SubmissionSMTP) -> bool:
    envelope = session.envelope
    return envelope is not None and (bool(envelope.mail_from) or bool(envelope.rcpt_tos))
