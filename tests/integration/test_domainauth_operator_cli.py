"""`mailfleet operator run` as a process: it serves probes and metrics and reconciles."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import create_domainauth, install_crds, key_states, wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_operator_command_serves_probes_and_metrics_and_reconciles(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer
) -> None:
    install_crds(kube_api)
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailfleet_cli", "operator", "run", "--namespace", "default",
        "--standalone", "--http-port", str(port), "--kubeconfig", str(kubeconfig),
        "--dns-nameserver", f"{dns_server.host}:{dns_server.port}",
        env={**os.environ, "MAILFLEET_OPERATOR_HTTP_HOST": "127.0.0.1"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def status(path: str) -> int:
                try:
                    async with http.get(path) as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return 0

            async def ready() -> bool:
                return await status("/readyz") == 200

            await wait_for(ready, within=20, message="/readyz to answer 200")
            assert await status("/healthz") == 200
            create_domainauth(kube_api, {})
            await wait_for(lambda: key_states(kube_api).get("mf-1") == "Published", within=10)
            async with http.get("/metrics") as response:
                text = await response.text()
        assert 'mailfleet_operator_reconciles_total{kind="DomainAuth"}' in text
        assert 'mailfleet_operator_dkim_transitions_total{reason="KeyPublished"} 1.0' in text
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert b"PRIVATE KEY" not in stderr
    assert process.returncode is not None
