"""`fault_upstream`: an API server (the emulator, or the session's real control plane) with a
direct `Connection` to it and a factory of `ApiFaultProxy`s in front of it (tests cut a client
off from the API by pointing it at a proxy and switching the proxy to `blackhole` or `error`)."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailfleet_operator.kube.config import Connection
from mailfleet_sandbox.api_fault_proxy import ApiFaultProxy
from mailfleet_sandbox.kube import ApiServer

FAULT_UPSTREAMS = ["emulator", "kubernetes"]


@dataclasses.dataclass
class FaultUpstream:
    kind: str
    connection: Connection
    """Direct to the API server (admin)."""
    ca: Path | None
    plane: object | None = None

    def proxy(self, host: str = "127.0.0.1") -> ApiFaultProxy:
        if self.plane is None:
            return ApiFaultProxy(upstream=self.connection.server, host=host)
        return ApiFaultProxy.for_control_plane(self.plane, host=host)  # type: ignore[arg-type]

    def client_ssl(self) -> ssl.SSLContext | bool:
        """For a raw aiohttp client of a proxy (no client certificate: the proxy's own)."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else False


@pytest.fixture(params=FAULT_UPSTREAMS)
async def fault_upstream(request: pytest.FixtureRequest) -> AsyncIterator[FaultUpstream]:
    if request.param == "emulator":
        async with ApiServer(host="127.0.0.1", port=0, bookmark_interval=0.5) as api:
            yield FaultUpstream("emulator", Connection(server=api.url), None)
        return
    threaded = request.getfixturevalue("real_control_plane")
    plane = threaded.plane
    admin = plane.pki.client("admin", "kubernetes-admin", ("system:masters",))
    yield FaultUpstream(
        "kubernetes",
        Connection(server=plane.url, ca_data=plane.pki.ca.cert.read_bytes(),
                   client_cert_data=admin.cert.read_bytes(),
                   client_key_data=admin.key.read_bytes()),
        plane.pki.ca.cert,
        plane,
    )
