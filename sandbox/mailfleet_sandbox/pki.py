"""The sandbox control plane's certificates and keys, made with `cryptography`.

What kubeadm makes for a cluster, kept small: one CA that signs the API server's serving
certificate and every client certificate (the API server authenticates clients by their
certificate's CN as user and O as groups), and the service-account signing key pair. Files are
written once under `<dir>` and reused, so a restarted sandbox keeps its identities.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
SERVICE_CLUSTER_IP = "10.96.0.1"
"""The `kubernetes` Service's cluster IP for --service-cluster-ip-range 10.96.0.0/16."""
API_SERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class SandboxPKI:
    """A CA under `directory` and the certificates the control plane and its clients use."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.ca = KeyPair(self.directory / "ca.crt", self.directory / "ca.key")
        self.service_account_key = self.directory / "sa.key"
        self.service_account_pub = self.directory / "sa.pub"

    def ensure(self) -> SandboxPKI:
        """Create the CA and the service-account keys unless they exist."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.ca.cert.exists() and self.ca.key.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            now = datetime.datetime.now(datetime.UTC)
            cert = (x509.CertificateBuilder()
                    .subject_name(_name("mailfleet-sandbox-ca"))
                    .issuer_name(_name("mailfleet-sandbox-ca"))
                    .public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(hours=1))
                    .not_valid_after(now + VALIDITY * 10)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(
                        digital_signature=True, key_cert_sign=True, crl_sign=True,
                        content_commitment=False, key_encipherment=False,
                        data_encipherment=False, key_agreement=False, encipher_only=False,
                        decipher_only=False), critical=True)
                    .sign(key, hashes.SHA256()))
            _write_key(self.ca.key, key)
            self.ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if not self.service_account_key.exists():
            sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_key(self.service_account_key, sa)
            self.service_account_pub.write_bytes(sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return self

    def _issue(self, stem: str, subject: x509.Name, *, server: bool,
               dns_names: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> KeyPair:
        pair = KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        ca_key = serialization.load_pem_private_key(self.ca.key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(ca_cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if dns_names or ips:
            alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(pair.key, key)
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def api_server(self, host: str) -> KeyPair:
        """The serving certificate: the loopback address clients dial and the in-cluster
        names and cluster IP a pod's in-cluster config would use."""
        ips = tuple(dict.fromkeys((host, "127.0.0.1", SERVICE_CLUSTER_IP)))
        return self._issue("apiserver", _name("kube-apiserver"), server=True,
                           dns_names=API_SERVER_NAMES, ips=ips)

    def client(self, stem: str, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate: the API server reads CN as the user, O as the groups."""
        return self._issue(stem, _name(user, groups), server=False)
