"""DKIM key material: generation, loading from a Secret's PEM, the public half for DNS.

No I/O (CPU only, via `cryptography`). Private keys travel as PKCS#8 PEM bytes inside
`DkimKey`, whose repr hides them, so a key that ends up in a log line or an exception shows
as `<redacted>`. Error messages never quote key material either.

Public key encodings, as receivers expect them in the `p=` tag:
- RSA (RFC 6376 §3.6.1): base64 of the DER SubjectPublicKeyInfo.
- Ed25519 (RFC 8463 §4.2): base64 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

KeyAlgorithm = Literal["rsa-2048", "rsa-3072", "ed25519"]
KEY_ALGORITHMS: tuple[KeyAlgorithm, ...] = ("rsa-2048", "rsa-3072", "ed25519")
DUAL: tuple[KeyAlgorithm, ...] = ("rsa-2048", "ed25519")
"""`dual` signs each message twice: RSA for every receiver, Ed25519 for those that know it."""


class KeyMaterialError(ValueError):
    """Stored key material cannot be used; the message names the problem, never the bytes."""


@dataclasses.dataclass(frozen=True)
class DkimKey:
    """A key pair: private PEM for the sender, public base64 for the DNS record."""

    algorithm: KeyAlgorithm
    private_pem: bytes = dataclasses.field(repr=False)
    public_b64: str

    @property
    def key_type(self) -> Literal["rsa", "ed25519"]:
        return key_type_of(self.algorithm)

    def __repr__(self) -> str:
        return f"DkimKey(algorithm={self.algorithm!r}, private_pem=<redacted>)"


def key_type_of(algorithm: KeyAlgorithm) -> Literal["rsa", "ed25519"]:
    """The DKIM `k=` tag of an algorithm."""
    return "ed25519" if algorithm == "ed25519" else "rsa"


def algorithms_for(setting: str) -> tuple[KeyAlgorithm, ...]:
    """Spec `dkim.algorithm` (`rsa-2048`, `rsa-3072`, `ed25519`, `dual`) -> keys per rotation."""
    if setting == "dual":
        return DUAL
    for algorithm in KEY_ALGORITHMS:
        if setting == algorithm:
            return (algorithm,)
    raise ValueError(f"unknown DKIM algorithm {setting!r}: expected one of "
                     f"{', '.join(KEY_ALGORITHMS)} or dual")


def generate_key(algorithm: KeyAlgorithm) -> DkimKey:
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=_rsa_bits(algorithm))
    pem = private.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return DkimKey(algorithm=algorithm, private_pem=pem, public_b64=_public_b64(private))


def load_key(private_pem: bytes, *, algorithm: KeyAlgorithm) -> DkimKey:
    """Read a stored key and check it is what its Secret claims to be."""
    try:
        private = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as error:
        # cryptography's messages do not quote the input, but keep ours fixed anyway.
        raise KeyMaterialError("not a readable unencrypted PEM private key") from error
    if algorithm == "ed25519":
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise KeyMaterialError("expected an Ed25519 private key")
    else:
        if not isinstance(private, rsa.RSAPrivateKey):
            raise KeyMaterialError(f"expected an RSA private key for {algorithm}")
        if private.key_size != _rsa_bits(algorithm):
            raise KeyMaterialError(
                f"expected a {_rsa_bits(algorithm)}-bit RSA key, found {private.key_size} bits"
            )
    return DkimKey(algorithm=algorithm, private_pem=private_pem, public_b64=_public_b64(private))


def _rsa_bits(algorithm: KeyAlgorithm) -> int:
    return 3072 if algorithm == "rsa-3072" else 2048


def _public_b64(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
    else:
        raw = private.public_key().public_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    return base64.b64encode(raw).decode("ascii")
