"""Outbound SMTP sessions with aiosmtplib: one connection to one destination, bound to one
source IP and HELO name, carrying several messages in turn.

Protocol only: the session turns every answer (or failure to get one) into a `hooks.Reply`
with the stage it happened at; what to do with it is the scheduler's business. The session
also tells whether the end of a transaction's DATA was written (`data_sent`): an attempt
aborted after that point may have been delivered, one aborted before it cannot have been.

`send` calls the caller's `guard` before each write of a transaction (MAIL, RCPT, DATA, the
message): the dispatcher re-checks the lease there, so a transaction never writes from an IP
whose lease ended, even when the cancellation meant to stop it is lost. It is lost in
`asyncio.wait_for` of Python 3.11 (which aiosmtplib reads replies with) when the reply and the
cancellation are due together, as after a process was frozen past its lease.

TLS: to MX hosts each host gets what its domain's `tls_policy.DomainPolicy` says (DANE,
MTA-STS, requireTLS, or opportunistic STARTTLS with a retry in clear on a new connection after
a failed handshake; see `tls_policy`); every outcome goes to the target's `observe` callback
(metrics, TLS-RPT). A host whose check fails where no fallback is allowed is skipped with a
451 4.7.5 reply; when every host is, the delivery is deferred, never sent in clear. To a relay
TLS is what the config says, and the relay's certificate is verified unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import ssl
from collections.abc import Callable, Sequence

import aiosmtplib
import aiosmtplib.protocol

from mailfleet_sender import dane, tls_policy
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
    security: tls_policy.DomainPolicy | None = None
    """Per MX host TLS requirements (MX delivery); None: `tls` alone decides (relay)."""
    contexts: Callable[[str, str], ssl.SSLContext] | None = None
    """(verify: none|webpki|dane, min version) -> client context."""
    observe: Callable[[TlsEvent], None] | None = None


@dataclasses.dataclass(frozen=True)
class TlsEvent:
    """How one connection to one MX host went, TLS-wise (metrics and TLS-RPT)."""

    host: str
    address: str
    mode: tls_policy.Mode
    result: tls_policy.Result
    """success, or the RFC 8460 failure type of the (first) failed check."""
    tls: bool
    """The session that carries mail is encrypted."""
    fallback: bool = False
    """A failed handshake was retried in clear (or without the failed check)."""
    refused: bool = False
    """The host was not used: the check failed where no fallback is allowed."""
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    command: float = 60.0


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _wire_form(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, dot-stuffed, the final dot. What the
    spool holds already has CRLF only (`intake` refuses bare CR and LF): then aiosmtplib's
    two regular expressions over the whole message are skipped, a cost per delivery."""
    crlf = data.count(b"\r\n")
    if not (data.endswith(b"\r\n") and data.count(b"\r") == crlf == data.count(b"\n")):
        data = aiosmtplib.protocol.normalize_message_line_endings(data)
    if data.startswith(b".") or b"\n." in data:
        data = aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", data)
    return data + b".\r\n"


class Session:
    """A connected SMTP client. `send()` returns the final reply of one transaction; raises
    `DeliveryFailure` when the connection is unusable (the caller closes it)."""

    def __init__(self, smtp: aiosmtplib.SMTP, mx_host: str, policy_key: str = "") -> None:
        self._smtp = smtp
        self.mx_host = mx_host
        self.policy_key = policy_key
        """`DomainPolicy.key` the connection was checked for: mail of another key may not use
        it (a strict domain's mail must not ride a connection that fell back to clear)."""
        self.sent = 0
        self.broken = False
        self.data_sent = False
        """The current (or last) transaction's message and final dot were written."""

    @property
    def tls(self) -> bool:
        return self._smtp.get_transport_info("sslcontext") is not None

    async def send(self, *, sender: str, recipient: str, data: bytes,
                   guard: Callable[[str], None] = lambda stage: None) -> Reply:
        """One transaction; `guard(stage)` runs before each write ("mail", "rcpt", "data",
        "message") and stops the transaction by raising (its exception propagates)."""
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
            guard(stage)
            await smtp.mail(sender, options=[f"SIZE={len(data)}"] if smtp.supports_extension(
                "size") else None)
            stage = "rcpt"
            guard(stage)
            await smtp.rcpt(recipient)
            stage = "data"
            response = await self._data(data, guard)
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

    async def _data(self, data: bytes, guard: Callable[[str], None]
                    ) -> aiosmtplib.SMTPResponse:
        """DATA as `SMTP.data` does it, but marking the moment the message is written (right
        after the 354 and the guard, with no await in between), which `SMTP.data` does not
        expose."""
        smtp = self._smtp
        guard("data")
        start = await smtp.execute_command(b"DATA")
        if start.code != aiosmtplib.SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        guard("message")
        protocol.write(_wire_form(data))
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
    if target.security is not None:
        return await _connect_mx(target, target.security, source_address=source_address,
                                 helo_name=helo_name, timeouts=timeouts)
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


class _Refused(Exception):
    def __init__(self, result: tls_policy.Result, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


async def _connect_mx(
    target: Target,
    policy: tls_policy.DomainPolicy,
    *,
    source_address: str | None,
    helo_name: str,
    timeouts: Timeouts,
) -> Session:
    """MX delivery under the domain's transport security policy (see the module docstring)."""
    last: Reply | None = None
    for host_name, address in target.hosts:
        security = policy.host(host_name)
        if security.refused is not None:
            _observe(target, TlsEvent(host_name, address, security.mode, security.refused,
                                      tls=False, refused=True, detail=security.detail))
            last = _refusal(host_name, security, security.refused, security.detail)
            continue
        try:
            return await _open_mx(target, policy, security, host_name, address,
                                  source_address=source_address, helo_name=helo_name,
                                  timeouts=timeouts)
        except _Refused as refused:
            _observe(target, TlsEvent(host_name, address, security.mode, refused.result,
                                      tls=False, refused=True, detail=refused.detail))
            last = _refusal(host_name, security, refused.result, refused.detail)
        except aiosmtplib.SMTPResponseException as exc:
            last = parse_reply(exc.code, exc.message, "connect", host_name)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            last = Reply(
                code=451, text=f"cannot connect to {host_name}: {exc}", stage="connect",
                enhanced="4.4.1", mx_host=host_name,
            )
    raise DeliveryFailure(
        last or Reply(code=451, text="no host to connect to", stage="connect", enhanced="4.4.4")
    )


def _refusal(host: str, security: tls_policy.HostSecurity, result: tls_policy.Result,
             detail: str) -> Reply:
    return Reply(code=451, text=tls_policy.refusal_text(host, security, result, detail),
                 stage="starttls", enhanced="4.7.5", mx_host=host)


def _observe(target: Target, event: TlsEvent) -> None:
    if target.observe is not None:
        target.observe(event)


async def _open_mx(
    target: Target,
    policy: tls_policy.DomainPolicy,
    security: tls_policy.HostSecurity,
    host_name: str,
    address: str,
    *,
    source_address: str | None,
    helo_name: str,
    timeouts: Timeouts,
) -> Session:
    """One host: connect, EHLO, STARTTLS as required, check; retry in clear when allowed.
    Testing-mode MTA-STS first tries the checked handshake, then an unchecked one."""
    steps: list[str] = []
    if security.starttls:
        steps.append(security.verify)
        if not security.enforced and security.verify != "none":
            steps.append("none")
    if security.fallback or not security.starttls:
        steps.append("clear")
    first: tuple[tls_policy.Result, str] | None = None
    for step in steps:
        smtp = aiosmtplib.SMTP(
            hostname=address, port=target.port,
            source_address=(source_address, 0) if source_address else None,
            local_hostname=helo_name, timeout=timeouts.command, start_tls=False,
        )
        try:
            await smtp.connect(timeout=timeouts.connect)
            await smtp._ehlo_or_helo_if_needed()
            if step != "clear" and not smtp.supports_extension("starttls") and (
                "clear" in steps
            ):
                # Nothing was tried on this connection: it carries the mail in clear as is
                # (a new connection would only greet the same way).
                first = first or (tls_policy.Result.STARTTLS_NOT_SUPPORTED,
                                  f"{host_name} does not offer STARTTLS")
                step = "clear"
            elif step != "clear":
                await _start_tls(target, security, smtp, host_name, step, timeouts)
        except _Refused as refused:
            smtp.close()
            if first is None:
                first = (refused.result, refused.detail)
            continue
        except BaseException:
            smtp.close()
            raise
        result, detail = first or (tls_policy.Result.SUCCESS, "")
        if step == "clear" and not security.starttls:
            result = tls_policy.Result.SUCCESS  # TLS not wanted: nothing failed
        _observe(target, TlsEvent(
            host_name, address, security.mode, result, tls=step != "clear",
            fallback=first is not None, detail=detail,
        ))
        return Session(smtp, host_name, policy.key)
    assert first is not None
    raise _Refused(*first)


async def _start_tls(target: Target, security: tls_policy.HostSecurity,
                     smtp: aiosmtplib.SMTP, host_name: str, verify: str,
                     timeouts: Timeouts) -> None:
    """STARTTLS and the check `verify` asks for; `_Refused` with the RFC 8460 result type."""
    if not smtp.supports_extension("starttls"):
        raise _Refused(tls_policy.Result.STARTTLS_NOT_SUPPORTED,
                       f"{host_name} does not offer STARTTLS")
    assert target.contexts is not None
    context = target.contexts(verify, security.min_version)
    try:
        await smtp.starttls(tls_context=context, server_hostname=host_name,
                            timeout=timeouts.command)
    except ssl.SSLCertVerificationError as exc:
        raise _Refused(_verify_result(exc), _text(exc)) from exc
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise _Refused(_verify_result(cause), _text(cause)) from exc
        raise _Refused(tls_policy.Result.VALIDATION_FAILURE,
                       f"TLS handshake failed: {_text(exc)}") from exc
    if verify == "dane":
        match = dane.match_chain(security.tlsa, peer_chain(smtp), names=[host_name],
                                 now=datetime.datetime.now(datetime.UTC))
        if not match.ok:
            result = (tls_policy.Result.CERTIFICATE_EXPIRED if match.expired
                      else tls_policy.Result.CERTIFICATE_HOST_MISMATCH if match.name_mismatch
                      else tls_policy.Result.VALIDATION_FAILURE)
            raise _Refused(result, match.detail)
    await smtp._ehlo_or_helo_if_needed()  # RFC 3207 §4.2: EHLO again over TLS


_EXPIRED, _HOSTNAME_MISMATCH = 10, 62
_UNTRUSTED = {2, 18, 19, 20, 21, 27}


def _verify_result(exc: ssl.SSLCertVerificationError) -> tls_policy.Result:
    """OpenSSL's verify code as an RFC 8460 result type."""
    if exc.verify_code == _EXPIRED:
        return tls_policy.Result.CERTIFICATE_EXPIRED
    if exc.verify_code == _HOSTNAME_MISMATCH:
        return tls_policy.Result.CERTIFICATE_HOST_MISMATCH
    if exc.verify_code in _UNTRUSTED:
        return tls_policy.Result.CERTIFICATE_NOT_TRUSTED
    return tls_policy.Result.VALIDATION_FAILURE


def _text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def peer_chain(smtp: aiosmtplib.SMTP) -> list[bytes]:
    """DER certificates the server presented, its own first. Python < 3.13 has no public
    accessor for the whole chain; the C method behind 3.13's is used, else the leaf alone."""
    ssl_object = smtp.get_transport_info("ssl_object")
    if ssl_object is None:
        return []
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:
        return [bytes(c) for c in public()]
    inner = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if inner is not None:
        return [c.public_bytes(2) for c in inner() or ()]  # 2: _ssl.ENCODING_DER
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def make_context(verify: str, min_version: str, ca_file: str | None = None) -> ssl.SSLContext:
    """A client context: `webpki` checks chain and host name against the system store (plus
    `ca_file`); `none` and `dane` check nothing in OpenSSL (DANE is checked after)."""
    if verify == "webpki":
        context = ssl.create_default_context()
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = {
        "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
        "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
    }[min_version]
    return context


def _start_tls_mode(tls: str) -> bool | None:
    if tls == "opportunistic":
        return None
    return tls == "starttls"


def relay_hosts(host: str) -> Sequence[tuple[str, str]]:
    return ((host, host),)
