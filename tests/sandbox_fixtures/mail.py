"""Fixtures for the mail side of the sandbox: a running DNS server, an SMTP receiver and a
fleet of simulated providers, each on real loopback sockets and torn down after the test.

`provider_fleet` publishes its providers' MX/A records in the `dns_server` it shares with the
test, so code under test only needs `dns_server.resolver()` (or its host/port) and
`provider_fleet.port` as the destination SMTP port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet, SmtpReceiver


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    """An authoritative DNS server on 127.0.0.1 (UDP+TCP, free port), empty."""
    async with DNSServer("127.0.0.1") as server:
        yield server


@pytest.fixture
async def smtp_receiver(dns_server: DNSServer) -> AsyncIterator[SmtpReceiver]:
    """A catch-all receiver on 127.0.0.1 (free port) verifying SPF/DKIM/DMARC via dns_server."""
    async with SmtpReceiver("sink", "127.0.0.1", verify_with=dns_server) as receiver:
        yield receiver


@pytest.fixture
async def provider_fleet(dns_server: DNSServer) -> AsyncIterator[ProviderFleet]:
    """gmail/outlook/yahoo/orange on 127.0.10.1-4, one common port, MX records in dns_server."""
    async with ProviderFleet(dns_server) as fleet:
        yield fleet
