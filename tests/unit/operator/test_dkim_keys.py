"""Key generation and loading: what DNS gets, what the Secret holds, and refusals of garbage."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailfleet_operator.logic import keys


@pytest.mark.parametrize(
    ("algorithm", "public_length"),
    [
        pytest.param("rsa-2048", 294, id="RSA-2048 publishes the DER SubjectPublicKeyInfo"),
        pytest.param("rsa-3072", 422, id="RSA-3072 publishes a longer SubjectPublicKeyInfo"),
        pytest.param("ed25519", 32, id="Ed25519 publishes the raw 32-byte key as RFC 8463 says"),
    ],
)
def test_generated_keys_round_trip_through_pkcs8_pem(
    algorithm: keys.KeyAlgorithm, public_length: int
) -> None:
    key = keys.generate_key(algorithm)
    assert key.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(base64.b64decode(key.public_b64)) == public_length
    assert keys.load_key(key.private_pem, algorithm=algorithm) == key


def test_the_private_key_never_shows_in_repr() -> None:
    key = keys.generate_key("ed25519")
    assert "PRIVATE" not in repr(key) and "<redacted>" in repr(key)


@pytest.mark.parametrize(
    ("pem", "algorithm", "match"),
    [
        pytest.param(b"garbage", "rsa-2048", "not a readable", id="garbage is refused"),
        pytest.param(b"", "ed25519", "not a readable", id="an emptied Secret is refused"),
        pytest.param(None, "rsa-2048", "expected an RSA", id="an Ed25519 key claiming RSA"),
        pytest.param("rsa1024", "rsa-2048", "2048-bit", id="an RSA key of the wrong size"),
    ],
)
def test_stored_key_material_is_checked(
    pem: bytes | str | None, algorithm: str, match: str
) -> None:
    if pem is None:
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif pem == "rsa1024":
        pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    assert isinstance(pem, bytes)
    with pytest.raises(keys.KeyMaterialError, match=match) as caught:
        keys.load_key(pem, algorithm=algorithm)  # type: ignore[arg-type]
    assert "BEGIN" not in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "algorithms"),
    [
        pytest.param("rsa-2048", ("rsa-2048",), id="one RSA key"),
        pytest.param("dual", ("rsa-2048", "ed25519"), id="dual means RSA-2048 plus Ed25519"),
    ],
)
def test_algorithms_for(setting: str, algorithms: tuple[str, ...]) -> None:
    assert keys.algorithms_for(setting) == algorithms
