"""Every signature the signer produces is verified by dkimpy, the independent implementation."""

from __future__ import annotations

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailfleet_sender import dkim_signing

RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
KEYS = {
    "rsa": dkim_signing.SigningKey("example.com", "r", RSA_2048),
    "ed": dkim_signing.SigningKey("example.com", "e", ED),
}
RECORDS = {
    b"r._domainkey.example.com.": dkim_signing.public_key_record(RSA_2048).encode(),
    b"e._domainkey.example.com.": dkim_signing.public_key_record(ED).encode(),
}


def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
    return RECORDS.get(name)


def verify(message: bytes, count: int) -> list[bool]:
    d = dkim.DKIM(message)
    results = []
    for i in range(count):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.ValidationError:
            results.append(False)
    return results


MESSAGE = (
    b"From: Alice  <alice@example.com>\r\nTo: bob@example.org,\r\n\tcarol@example.org\r\n"
    b"Subject:   spaced \t subject  \r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n\r\nHello  \t world \r\n\r\n\r\n"
)


@pytest.mark.parametrize(
    "names",
    [["rsa"], ["ed"], ["rsa", "ed"]],
    ids=["rsa-sha256 verifies", "ed25519-sha256 verifies", "dual signature both verify"],
)
def test_signatures_verify_with_dkimpy(names: list[str]) -> None:
    headers = dkim_signing.sign_message(MESSAGE, [KEYS[n] for n in names], timestamp=1700000000)
    assert verify(headers + MESSAGE, len(names)) == [True] * len(names)


def test_rsa_3072_verifies() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    RECORDS[b"big._domainkey.example.com."] = dkim_signing.public_key_record(key).encode()
    signer = dkim_signing.SigningKey("example.com", "big", key)
    headers = dkim_signing.sign_message(MESSAGE, [signer], timestamp=1700000000)
    assert verify(headers + MESSAGE, 1) == [True]


def test_a_from_added_after_signing_breaks_the_signature() -> None:
    signed = dkim_signing.sign_message(MESSAGE, [KEYS["rsa"]], timestamp=1) + MESSAGE
    forged = b"From: ceo@example.com\r\n" + signed
    assert verify(forged, 1) == [False]
    assert b"h=from:from:" in signed.replace(b"\r\n\t", b"")


def test_a_changed_body_breaks_the_signature() -> None:
    signed = dkim_signing.sign_message(MESSAGE, [KEYS["ed"]], timestamp=1) + MESSAGE
    assert verify(signed.replace(b"world", b"w0rld"), 1) == [False]


def test_a_message_without_from_is_not_signed() -> None:
    with pytest.raises(dkim_signing.DKIMSigningError):
        dkim_signing.sign_message(b"Subject: x\r\n\r\nbody\r\n", [KEYS["rsa"]], timestamp=1)


_line = st.text(alphabet=st.sampled_from(list("ab \t.:;-=")), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(alphabet=st.sampled_from(list("xy \t")), max_size=30),
    body_lines=st.lists(_line, max_size=12),
    trailing_blank=st.integers(min_value=0, max_value=3),
    folded_to=st.booleans(),
)
def test_canonicalization_agrees_with_dkimpy_on_arbitrary_whitespace(
    subject: str, body_lines: list[str], trailing_blank: int, folded_to: bool
) -> None:
    to = b"To: a@example.org,\r\n  \t b@example.org" if folded_to else b"To: a@example.org"
    # Every message on the wire ends in CRLF (SMTP DATA adds it; submission normalises it).
    body = b"".join(line.encode() + b"\r\n" for line in body_lines) + b"\r\n" * trailing_blank
    message = (b"From: x@example.com\r\n" + to + b"\r\nSubject:" + subject.encode() +
               b"\r\n\r\n" + body)
    headers = dkim_signing.sign_message(message, [KEYS["ed"]], timestamp=1)
    assert verify(headers + message, 1) == [True]
