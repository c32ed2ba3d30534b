"""The sandbox's certificate authority: a root minted with `cryptography`, server certificates
it issues (valid, expired, for the wrong name) and TLS contexts serving them, so that the
sender's transport security (MTA-STS WebPKI checks, DANE-TA and DANE-EE) meets real
certificate chains on real sockets. The sender trusts this CA only through its settings
(`delivery.tls.caFile`), never through the system store.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclasses.dataclass(frozen=True)
class Issued:
    """A server certificate, its key, and the chain to serve (certificate, then the CA)."""

    certificate: x509.Certificate
    key_pem: bytes
    chain_pem: bytes

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def dane_ee(self) -> str:
        """The TLSA record (presentation form) pinning this certificate's key: DANE-EE,
        SubjectPublicKeyInfo, SHA-256 (`3 1 1`, RFC 7672 §3.1.1)."""
        spki = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "3 1 1 " + hashlib.sha256(spki).hexdigest()

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting this certificate and its chain."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as directory:  # ssl loads chains from files only
            cert_path, key_path = Path(directory, "chain.pem"), Path(directory, "key.pem")
            cert_path.write_bytes(self.chain_pem)
            key_path.write_bytes(self.key_pem)
            os.chmod(key_path, 0o600)
            context.load_cert_chain(cert_path, key_path)
        return context


class SandboxCA:
    """A root CA (EC P-256) valid for a year from now."""

    def __init__(self, name: str = "mailfleet sandbox CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(
        self,
        names: Sequence[str],
        *,
        expired: bool = False,
        days: int = 30,
        addresses: Sequence[str] = (),
    ) -> Issued:
        """A server certificate for `names` (SAN dNSNames) and `addresses` (SAN iPAddresses,
        for a server reached by IP such as a webhook receiver); `expired` ends it yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start = now - datetime.timedelta(days=10 if expired else 1)
        end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=days)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(
                [*(x509.DNSName(n) for n in names),
                 *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self.pem
        return Issued(certificate=certificate, key_pem=_pem_key(key), chain_pem=chain)
