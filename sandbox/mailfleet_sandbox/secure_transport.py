"""Transport security of the sandbox world (issue 19): the sandbox CA whose certificates every
provider presents on STARTTLS, the HTTPS host serving MTA-STS policies and collecting TLS-RPT
reports, the DNSSEC-signed zone of the DANE domain and the validating resolver that vouches
for it, and the records that tie them together.

Two providers besides the four mailbox look-alikes:

- `enforced` (`enforced.test`, MX `mx.enforced.test`): publishes an MTA-STS `enforce` policy
  (`_mta-sts` TXT, policy at `https://mta-sts.enforced.test/.well-known/mta-sts.txt`) and a
  TLS-RPT record (`_smtp._tls`) whose `rua` names a sandbox mailbox and the HTTPS collector;
- `dane` (`dane.test`, MX `mx.dane.test`): its zone is DNSSEC-signed and publishes a DANE-EE
  TLSA record (`3 1 1`, the SHA-256 of the certificate's key) at `_<port>._tcp.mx.dane.test`,
  `<port>` being the port the providers listen on (25 in the real world).

The senders learn all of it through settings only (`operator_settings`): the CA bundle path
(`senderTlsCaFile`), the policy host's port (`senderMtaStsPort`) and the validating resolver
(`senderDaneResolver`); nothing in the sender or the operator knows it runs here.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from mailfleet_sandbox import providers
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.dnssec_signing import ZoneSigner
from mailfleet_sandbox.mta_sts_server import PolicyServer
from mailfleet_sandbox.validating_resolver import ValidatingResolver

ENFORCED = providers.ProviderSpec("enforced", ("enforced.test",), "mx.enforced.test",
                                  "127.0.10.5")
DANE = providers.ProviderSpec("dane", ("dane.test",), "mx.dane.test", "127.0.10.6")
PROVIDERS = (ENFORCED, DANE)
POLICY_HOST = "127.0.53.3"
RESOLVER_HOST = "127.0.53.2"
TLSRPT_MAILBOX = "tlsrpt@dane.test"
"""The `mailto:` rua of enforced.test: a mailbox at another provider of the sandbox."""
TLSRPT_HOST = "tlsrpt.reports.test"
TLSRPT_PATH = "/v1/tlsrpt"


class SecureTransport:
    """Start after the DNS server and the provider fleet (their records and port are needed)."""

    def __init__(self, dns: DNSServer, directory: Path) -> None:
        self.dns = dns
        self.ca = SandboxCA()
        self.ca_file = directory / "ca.pem"
        self.policies = PolicyServer(self.ca, POLICY_HOST)
        self.signer: ZoneSigner | None = None
        self.resolver: ValidatingResolver | None = None

    async def start(self, fleet: providers.ProviderFleet) -> None:
        self.ca_file.parent.mkdir(parents=True, exist_ok=True)
        self.ca.write(self.ca_file)
        await self.policies.start()
        self.publish_mta_sts()
        self.signer = self.dns.sign_zone("dane.test")
        self.publish_tlsa(fleet)
        self.resolver = ValidatingResolver((self.dns.host, self.dns.port),
                                           {"dane.test": self.signer.ds}, RESOLVER_HOST)
        await self.resolver.start()

    async def stop(self) -> None:
        if self.resolver is not None:
            await self.resolver.stop()
        await self.policies.stop()

    async def __aenter__(self) -> SecureTransport:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def publish_mta_sts(self) -> None:
        domain = ENFORCED.domains[0]
        self.dns.set_records(f"_mta-sts.{domain}", "TXT", ['"v=STSv1; id=sandbox1"'])
        self.dns.set_records(f"mta-sts.{domain}", "A", [POLICY_HOST])
        self.policies.set_policy(domain, mode="enforce", mx=[ENFORCED.mx_host])
        self.dns.set_records(TLSRPT_HOST, "A", [POLICY_HOST])
        rua = (f"mailto:{TLSRPT_MAILBOX},"
               f"https://{TLSRPT_HOST}:{self.policies.port}{TLSRPT_PATH}")
        self.dns.set_records(f"_smtp._tls.{domain}", "TXT", [f"v=TLSRPTv1; rua={rua}"])

    def publish_tlsa(self, fleet: providers.ProviderFleet) -> None:
        """DANE-EE for the dane provider's certificate, at the port the providers use."""
        issued = fleet.certificates[DANE.name]
        self.dns.set_records(self.tlsa_name(fleet.port), "TLSA", [issued.dane_ee()])

    @staticmethod
    def tlsa_name(port: int) -> str:
        return f"_{port}._tcp.{DANE.mx_host}"

    def operator_settings(self) -> dict[str, Any]:
        """The operator's settings that give the senders these trust anchors (chart values)."""
        assert self.resolver is not None
        return {"senderTlsCaFile": str(self.ca_file),
                "senderMtaStsPort": self.policies.port,
                "senderDaneResolver": f"{self.resolver.host}:{self.resolver.port}"}

    def tlsrpt_reports(self, fleet: providers.ProviderFleet) -> int:
        """TLS-RPT reports that reached the reporting addresses (mailbox and collector)."""
        mailed = sum(1 for m in fleet.messages
                     if any(r.lower() == TLSRPT_MAILBOX for r in m.rcpt_to))
        posted = sum(1 for path, _ in self.policies.reports if path == TLSRPT_PATH)
        return mailed + posted
