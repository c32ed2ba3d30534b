"""Fixtures for the Kubernetes API emulator: a running `ApiServer` and a kubeconfig for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailfleet_sandbox.kube import ApiServer


@pytest.fixture
async def kube_api() -> AsyncIterator[ApiServer]:
    """A fresh in-memory API emulator on a free loopback port (function scope)."""
    async with ApiServer(host="127.0.0.1", port=0, bookmark_interval=0.5) as api:
        yield api


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
