"""Outbound SMTP sessions with aiosmtplib: one connection to one destination, bound to one
source IP and HELO name, carrying several messages in turn.

Protocol only: the session turns every answer (or failure to get one) into a `hooks.Reply`
with the stage it happened at; what to do with it is the scheduler's business. The session
also tells whether the end of a transaction's DATA was written (`data_sent`): an attempt
aborted after that point may have been delivered, one aborted before it cannot have been.

TLS: to MX hosts STARTTLS is opportunistic and unauthenticated (RFC 7435: encrypting beats
refusing, and MX certificates rarely match); to a relay it is what the config says, and the
relay's certificate is verified unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Sequence

import aiosmtplib
import aiosmtplib.protocol

from mailfleet_sender.hooks import Reply

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s*")


def parse_reply(code: int, message: str, stage: str, mx_host: str | None = None) -> Reply:
    """Split `2.0.0 text` into enhanced code and text."""
    text = " ".join(message.split())
    match = _ENHANCED.match(text)
    enhanced = match.group(1) if match else None
    if match:
        text = text[match.end() :]
    return Reply(code=code, text=text, stage=stage, enhanced=enhanced, mx_host=mx_host)


class DeliveryFailure(Exception):
    """The whole connection failed (connect, EHLO, STARTTLS, AUTH, or it dropped)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to connect: candidate addresses in order, and the TLS/AUTH policy."""

    hosts: tuple[tuple[str, str], ...]
    """(host name, IP address) pairs in preference order."""
    port: int
    tls: str = "opportunistic"
    """opportunistic, starttls, implicit, none."""
    verify_certificate: bool = False
    username: str | None = None
    password: str | None = None


@dataclasses.dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    command: float = 60.0


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Session:
    """A connected SMTP client. `send()` returns the final reply of one transaction; raises
    `DeliveryFailure` when the connection is unusable (the caller closes it)."""

    def __init__(self, smtp: aiosmtplib.SMTP, mx_host: str) -> None:
        self._smtp = smtp
        self.mx_host = mx_host
        self.sent = 0
        self.broken = False
        self.data_sent = False
        """The current (or last) transaction's message and final dot were written."""

    @property
    def tls(self) -> bool:
        return self._smtp.get_transport_info("sslcontext") is not None

    async def send(self, *, sender: str, recipient: str, data: bytes) -> Reply:
        smtp = self._smtp
        self.sent += 1
        self.data_sent = False
        for stage, address in (("mail", sender), ("rcpt", recipient)):
            if "\r" in address or "\n" in address:
                # aiosmtplib writes addresses verbatim (GHSA-v3q9-hj7j-63hq, no fixed release
                # yet): a line break would inject commands. Intake refuses such addresses;
                # this holds even for a spool written by another version.
                return Reply(code=554, text="address contains a line break: not sent",
                             stage=stage, enhanced="5.5.2", mx_host=self.mx_host)
        stage = "mail"
        try:
            await smtp.mail(sender, options=[f"SIZE={len(data)}"] if smtp.supports_extension(
                "size") else None)
            stage = "rcpt"
            await smtp.rcpt(recipient)
            stage = "data"
            response = await self._data(data)
        except aiosmtplib.SMTPResponseException as exc:
            reply = parse_reply(exc.code, exc.message, stage, self.mx_host)
            if exc.code == 421 or not smtp.is_connected:
                self.broken = True
                return reply
            try:
                await smtp.rset()
            except aiosmtplib.SMTPException:
                self.broken = True
            return reply
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.broken = True
            raise DeliveryFailure(
                Reply(code=451, text=f"connection lost: {exc}", stage=stage, enhanced="4.4.2",
                      mx_host=self.mx_host)
            ) from exc
        return parse_reply(response.code, response.message, "data", self.mx_host)

    async def _data(self, data: bytes) -> aiosmtplib.SMTPResponse:
        """DATA as `SMTP.data` does it, but marking the moment the message is written (right
        after the 354, with no await in between), which `SMTP.data` does not expose."""
        smtp = self._smtp
        start = await smtp.execute_command(b"DATA")
        if start.code != aiosmtplib.SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        message = aiosmtplib.protocol.normalize_message_line_endings(data)
        protocol.write(aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", message) + b".\r\n")
        self.data_sent = True
        response = await protocol.read_response(timeout=smtp.timeout)
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    def abort(self) -> None:
        """Drop the connection without QUIT: the lease under it is ending, nothing more may
        leave from its address."""
        self.broken = True
        self._smtp.close()

    async def close(self) -> None:
        smtp = self._smtp
        if not smtp.is_connected:
            return
        if self.broken:
            smtp.close()
            return
        try:
            await smtp.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()


async def connect(
    target: Target, *, source_address: str | None, helo_name: str, timeouts: Timeouts
) -> Session:
    """Try the target's addresses in order; the first that greets and EHLOs wins."""
    last: Reply | None = None
    for host_name, address in target.hosts:
        smtp = aiosmtplib.SMTP(
            hostname=address,
            port=target.port,
            source_address=(source_address, 0) if source_address else None,
            local_hostname=helo_name,
            timeout=timeouts.command,
            use_tls=target.tls == "implicit",
            start_tls=_start_tls_mode(target.tls),
            validate_certs=target.verify_certificate,
            tls_context=None if target.verify_certificate else _insecure_context(),
        )
        try:
            await smtp.connect(timeout=timeouts.connect)
            await smtp._ehlo_or_helo_if_needed()
            if target.username is not None and target.password is not None:
                await smtp.login(target.username, target.password)
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            last = parse_reply(exc.code, exc.message, "connect", host_name)
            if exc.code >= 500 and target.username is not None:
                # A relay refusing our login refuses every address the same way.
                raise DeliveryFailure(last) from exc
            continue
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            last = Reply(
                code=451, text=f"cannot connect to {host_name}: {exc}", stage="connect",
                enhanced="4.4.1", mx_host=host_name,
            )
            continue
        return Session(smtp, host_name)
    raise DeliveryFailure(
        last or Reply(code=451, text="no host to connect to", stage="connect", enhanced="4.4.4")
    )


def _start_tls_mode(tls: str) -> bool | None:
    if tls == "opportunistic":
        return None
    return tls == "starttls"


def relay_hosts(host: str) -> Sequence[tuple[str, str]]:
    return ((host, host),)
