"""The real control plane for tests: one `ControlPlane` (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler from `make kube`) per session, on a background event
loop thread so that synchronous tests and subprocesses (kubectl) can use it.

Tests that need it take `real_control_plane`; it skips with the build command when the binaries
are not built (`make test` builds them first when Go is available).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailfleet_sandbox import control_plane
from mailfleet_sandbox.cluster_api import ClusterApi


class ThreadedControlPlane:
    """A started ControlPlane on its own loop thread, with an admin `api` and kubeconfig."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="sandbox-control-plane")
        self.plane = control_plane.ControlPlane(root)
        self.api: ClusterApi | None = None

    def start(self) -> ThreadedControlPlane:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.plane.start(), self.loop).result(180)
        admin = self.plane.pki.client("admin", "kubernetes-admin", ("system:masters",))
        self.api = ClusterApi(self.plane.url, ca=self.plane.pki.ca.cert, cert=admin.cert,
                              key=admin.key)
        return self

    @property
    def kubeconfig(self) -> Path:
        return self.plane.admin_kubeconfig

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        asyncio.run_coroutine_threadsafe(self.plane.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def real_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedControlPlane]:
    if not control_plane.binaries_built():
        pytest.skip(f"the real control plane is not built in {control_plane.binaries_dir()}: "
                    "run `make kube`")
    plane = ThreadedControlPlane(tmp_path_factory.mktemp("control-plane")).start()
    try:
        yield plane
    finally:
        plane.stop()
