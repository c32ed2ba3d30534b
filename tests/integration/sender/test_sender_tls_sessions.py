"""Each transport security path of one MX connection over real loopback sockets: an SMTP
receiver offering STARTTLS with certificates from the sandbox CA (valid, expired, for another
name, self-signed, too old a TLS version), and the sender's `delivering.connect` under the
policy `tls_policy.decide` gives. A check that fails where no fallback is allowed must leave
nothing at the receiver."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.providers import SmtpReceiver, make_self_signed_context
from mailfleet_sender import dane, delivering, tls_policy

Mode, Result = tls_policy.Mode, tls_policy.Result
MX = "mx1.example.test"
CA = SandboxCA()
POLICY = f"version: STSv1\nmode: enforce\nmx: {MX}\nmax_age: 86400\n"
MESSAGE = b"From: a@example.net\r\nTo: b@example.test\r\nSubject: tls\r\n\r\nbody\r\n"


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    return str(CA.write(tmp_path / "ca.pem"))


async def _receiver(context: ssl.SSLContext | None) -> SmtpReceiver:
    receiver = SmtpReceiver("mx", "127.0.0.1", starttls_context=context, hostname=MX)
    await receiver.start()
    return receiver


@pytest.fixture
async def receivers() -> AsyncIterator[list[SmtpReceiver]]:
    started: list[SmtpReceiver] = []
    yield started
    for receiver in started:
        await receiver.stop()


async def _deliver(
    receiver: SmtpReceiver,
    ca_file: str,
    *,
    settings: tls_policy.Settings = tls_policy.Settings(),
    sts: str | None = None,
    tlsa: tuple[dane.TLSA, ...] | None = None,
) -> tuple[delivering.Session | delivering.DeliveryFailure, list[delivering.TlsEvent]]:
    dane_answer = None
    if tlsa is not None:
        dane_answer = tls_policy.DaneAnswer(True, {MX: tls_policy.TlsaAnswer("secure", tlsa)})
    policy = tls_policy.decide(
        domain="example.test", mx_hosts=[MX], settings=settings, dane_answer=dane_answer,
        sts_answer=tls_policy.StsAnswer(tls_policy.parse_sts_policy(sts)) if sts else None,
    )
    events: list[delivering.TlsEvent] = []
    target = delivering.Target(
        hosts=((MX, "127.0.0.1"),), port=receiver.port, security=policy,
        contexts=lambda verify, version: delivering.make_context(verify, version, ca_file),
        observe=events.append,
    )
    try:
        session = await delivering.connect(
            target, source_address=None, helo_name="mta.example.net",
            timeouts=delivering.Timeouts(connect=5, command=5),
        )
    except delivering.DeliveryFailure as failure:
        return failure, events
    reply = await session.send(sender="a@example.net", recipient="b@example.test", data=MESSAGE)
    assert reply.code == 250, reply
    await session.close()
    return session, events


def _tls12_only(context: ssl.SSLContext) -> ssl.SSLContext:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


async def test_opportunistic_starttls_encrypts_without_checking_the_certificate(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    receiver = await _receiver(make_self_signed_context("some.other.name"))
    receivers.append(receiver)
    _, [event] = await _deliver(receiver, ca_file)
    [message] = await receiver.wait_for(1)
    assert message.tls is True
    assert (event.mode, event.result, event.tls, event.fallback) == (
        Mode.OPPORTUNISTIC, Result.SUCCESS, True, False)


async def test_a_failed_handshake_without_policy_is_retried_in_clear_on_a_new_connection(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    receiver = await _receiver(_tls12_only(CA.issue([MX]).server_context()))
    receivers.append(receiver)
    _, [event] = await _deliver(receiver, ca_file,
                                settings=tls_policy.Settings(min_version="TLSv1.3"))
    [message] = await receiver.wait_for(1)
    assert message.tls is False
    assert (event.tls, event.fallback, event.refused) == (False, True, False)
    assert event.result == Result.VALIDATION_FAILURE
    assert receiver.connections_total["127.0.0.1"] == 2


async def test_require_tls_defers_instead_of_sending_in_clear(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    failing = await _receiver(_tls12_only(CA.issue([MX]).server_context()))
    plain = await _receiver(None)
    receivers.extend([failing, plain])
    settings = tls_policy.Settings(require_tls=True, min_version="TLSv1.3")
    for receiver, result in ((failing, Result.VALIDATION_FAILURE),
                             (plain, Result.STARTTLS_NOT_SUPPORTED)):
        failure, [event] = await _deliver(receiver, ca_file, settings=settings)
        assert isinstance(failure, delivering.DeliveryFailure)
        assert (failure.reply.code, failure.reply.enhanced) == (451, "4.7.5")
        assert "requireTLS" in failure.reply.text and "not sent in clear" in failure.reply.text
        assert (event.refused, event.result) == (True, result)
        assert receiver.messages == []


async def test_mta_sts_enforce_delivers_over_a_valid_certificate(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    receiver = await _receiver(CA.issue([MX]).server_context())
    receivers.append(receiver)
    _, [event] = await _deliver(receiver, ca_file, sts=POLICY)
    [message] = await receiver.wait_for(1)
    assert message.tls is True
    assert (event.mode, event.result) == (Mode.MTA_STS, Result.SUCCESS)


@pytest.mark.parametrize(
    ("context", "result"),
    [
        (lambda: CA.issue([MX], expired=True).server_context(), Result.CERTIFICATE_EXPIRED),
        (lambda: CA.issue(["mx.elsewhere.test"]).server_context(),
         Result.CERTIFICATE_HOST_MISMATCH),
        (lambda: make_self_signed_context(MX), Result.CERTIFICATE_NOT_TRUSTED),
    ],
    ids=["an expired certificate", "a certificate for another name",
         "a certificate from no trusted CA"],
)
async def test_mta_sts_enforce_defers_on_a_bad_certificate_and_sends_nothing(
    receivers: list[SmtpReceiver], ca_file: str,
    context: object, result: tls_policy.Result,
) -> None:
    receiver = await _receiver(context())  # type: ignore[operator]
    receivers.append(receiver)
    failure, [event] = await _deliver(receiver, ca_file, sts=POLICY)
    assert isinstance(failure, delivering.DeliveryFailure)
    assert failure.reply.enhanced == "4.7.5" and "MTA-STS" in failure.reply.text
    assert (event.refused, event.result) == (True, result)
    assert receiver.messages == []
    assert receiver.connections_total["127.0.0.1"] == 1  # no retry in clear


async def test_mta_sts_testing_reports_the_failure_and_still_delivers(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    receiver = await _receiver(CA.issue(["mx.elsewhere.test"]).server_context())
    receivers.append(receiver)
    _, [event] = await _deliver(receiver, ca_file, sts=POLICY.replace("enforce", "testing"))
    [message] = await receiver.wait_for(1)
    assert message.tls is True
    assert (event.result, event.fallback, event.tls) == (
        Result.CERTIFICATE_HOST_MISMATCH, True, True)


async def test_dane_ee_and_dane_ta_records_that_match_deliver_over_tls(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    issued = CA.issue([MX])
    receiver = await _receiver(issued.server_context())
    receivers.append(receiver)
    for record in (dane.TLSA(3, 0, 1, hashlib.sha256(issued.der).digest()),
                   dane.TLSA(2, 0, 1, hashlib.sha256(CA.der).digest())):
        _, [event] = await _deliver(receiver, ca_file, tlsa=(record,))
        assert (event.mode, event.result, event.tls) == (Mode.DANE, Result.SUCCESS, True)
    assert [m.tls for m in await receiver.wait_for(2)] == [True, True]


async def test_a_tlsa_mismatch_defers_even_with_a_webpki_valid_certificate(
    receivers: list[SmtpReceiver], ca_file: str
) -> None:
    receiver = await _receiver(CA.issue([MX]).server_context())
    receivers.append(receiver)
    wrong = dane.TLSA(3, 1, 1, hashlib.sha256(b"another key").digest())
    failure, [event] = await _deliver(receiver, ca_file, tlsa=(wrong,), sts=POLICY)
    assert isinstance(failure, delivering.DeliveryFailure)
    assert failure.reply.enhanced == "4.7.5" and "DANE" in failure.reply.text
    assert (event.mode, event.refused, event.result) == (
        Mode.DANE, True, Result.VALIDATION_FAILURE)
    assert receiver.messages == []
