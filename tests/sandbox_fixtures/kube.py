"""Fixtures for the Kubernetes API the integration tests talk to: `kube_api` is the API
emulator (`mailfleet_sandbox.kube.ApiServer`) and, as a second parameter, the real control
plane (`RealCluster` over the session's `real_control_plane`), with the same in-process calls;
`kubeconfig` is a kubeconfig for it.

Every test that takes `kube_api` runs twice, `[emulator]` and `[kubernetes]` (issue 13), except
the emulator's own tests in tests/integration/kube/. A test that relies on emulator-only
machinery says so with `@pytest.mark.emulator_only("why")`: its `[kubernetes]` run is skipped
with that reason. `kube_tls` is the TLS context the sandbox's aiohttp clients (ExternalDNS,
ClusterDNS) need for the param (None for the emulator, which has no authentication).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mailfleet_sandbox.kube import ApiServer

if TYPE_CHECKING:  # imported late: every fixture module loads as a plugin, in name order
    from sandbox_fixtures.real_cluster import RealCluster

KUBE_API_PARAMS = ["emulator", "kubernetes"]
EMULATOR_ONLY_DIRS = ("tests/integration/kube/",)
"""Tests of the emulator itself: they run against `[emulator]` only."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "emulator_only(reason): relies on the API emulator's internals; the "
                   "[kubernetes] run of kube_api is skipped with the reason")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kube_api" not in metafunc.fixturenames:
        return
    path = Path(str(metafunc.definition.path)).as_posix()
    if any(part in path for part in EMULATOR_ONLY_DIRS):
        return
    metafunc.parametrize("kube_api", KUBE_API_PARAMS, indirect=True, ids=KUBE_API_PARAMS)


@pytest.fixture(scope="session")
def real_cluster(real_control_plane: object) -> RealCluster:
    """The session's real control plane with the emulator's calls (see real_cluster.py)."""
    from sandbox_fixtures.operator import DNSENDPOINT_CRD, install_crds
    from sandbox_fixtures.real_cluster import RealCluster

    cluster = RealCluster(real_control_plane)  # type: ignore[arg-type]
    # The CRDs the tests use, once (as a Helm install would, before the operator): they stay
    # for the session, and the garbage collector must know them before a test deletes a
    # SendingPool and waits for its children to go.
    install_crds(cluster)  # type: ignore[arg-type]
    group, version = DNSENDPOINT_CRD["spec"]["group"], DNSENDPOINT_CRD["spec"]["versions"][0]
    cluster.wait_for_garbage_collection(f"{group}/{version['name']}", "DNSEndpoint")
    return cluster


@pytest.fixture
async def kube_api(request: pytest.FixtureRequest) -> AsyncIterator[ApiServer | RealCluster]:
    """A fresh in-memory API emulator on a free loopback port (function scope), or, for the
    `kubernetes` param, the session's real control plane, cleaned after the test."""
    if getattr(request, "param", "emulator") == "emulator":
        async with ApiServer(host="127.0.0.1", port=0, bookmark_interval=0.5) as api:
            yield api
        return
    marker = request.node.get_closest_marker("emulator_only")
    if marker is not None:
        pytest.skip(f"emulator only: {marker.args[0] if marker.args else ''}".rstrip(": "))
    cluster: RealCluster = request.getfixturevalue("real_cluster")
    await asyncio.to_thread(cluster.clean)  # a clean start even after an aborted test
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.clean)


@pytest.fixture
def kube_tls(kube_api: ApiServer | RealCluster) -> ssl.SSLContext | None:
    """The TLS identity for an aiohttp client of `kube_api` (None: the emulator's plain HTTP)."""
    from sandbox_fixtures.real_cluster import RealCluster

    return kube_api.ssl_context if isinstance(kube_api, RealCluster) else None


@pytest.fixture
def kubeconfig(kube_api: ApiServer, tmp_path: Path) -> Path:
    """A kubeconfig file for `kube_api`; hand it to kubectl/kopf with --kubeconfig."""
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig")


class ThreadedApiServer:
    """An ApiServer on its own event loop thread, for synchronous tests and subprocesses
    (kubectl, blocking clients) that must not block the server's loop."""

    def __init__(self, **kwargs: object) -> None:
        import asyncio
        import threading

        self._kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="sandbox-kube-api")
        self.api: ApiServer | None = None

    def start(self) -> ApiServer:
        import asyncio

        self._thread.start()
        api = ApiServer(**self._kwargs)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(api.start(), self.loop).result(10)
        self.api = api
        return api

    def call(self, coro: object, timeout: float = 10) -> object:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        import asyncio

        if self.api is not None:
            asyncio.run_coroutine_threadsafe(self.api.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def kube_api_thread() -> object:
    """A session-wide emulator running on a background thread (see ThreadedApiServer)."""
    server = ThreadedApiServer(host="127.0.0.1", port=0, bookmark_interval=0.5)
    server.start()
    yield server
    server.stop()
