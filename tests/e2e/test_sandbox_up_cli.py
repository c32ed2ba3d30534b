"""`mailfleet sandbox up --control-plane kubernetes --samples`, as a newcomer runs it: the
samples come to Ready on the real control plane, `kubectl version` reports the real server,
and `mailfleet sandbox down` stops everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mailfleet_sandbox import control_plane

pytestmark = pytest.mark.slow
KUBECTL = str(Path(sys.executable).parent / "kubectl")
MAILFLEET = [sys.executable, "-m", "mailfleet_cli"]


def kubectl(kubeconfig: Path, cache: Path, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, KUBECACHEDIR=str(cache)))
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_sandbox_up_brings_the_samples_to_ready_on_the_real_control_plane(
        tmp_path: Path) -> None:
    if not control_plane.binaries_built():
        pytest.skip("the real control plane is not built: run `make kube`")
    root = tmp_path / "sandbox"
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*MAILFLEET, "sandbox", "up", "--control-plane", "kubernetes",
                           "--samples", "--root", str(root)], stdout=log,
                          stderr=subprocess.STDOUT)
    try:
        state_file = root / "state.json"
        deadline = time.monotonic() + 180
        while not state_file.exists():
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "sandbox up wrote no state.json"
            time.sleep(0.5)
        state = json.loads(state_file.read_text())
        assert state["control_plane"] == "kubernetes"
        kubeconfig, cache = Path(state["kubeconfig"]), tmp_path / "kubecache"
        version = json.loads(kubectl(kubeconfig, cache, "version", "-o", "json"))
        assert version["serverVersion"]["gitVersion"] == control_plane.kubernetes_version()
        # `--samples` applies them after state.json is written: wait for them to exist first.
        deadline = time.monotonic() + 120
        while len(kubectl(kubeconfig, cache, "get", "sp,ipw,da", "-n", "mail", "-o",
                          "name").split()) < 3:
            assert time.monotonic() < deadline, "the samples were not applied"
            time.sleep(0.5)
        kubectl(kubeconfig, cache, "wait", "--for=condition=Ready", "--timeout=240s", "-n",
                "mail", "sendingpools,ipwarmups,domainauths", "--all", timeout=260)
    finally:
        down = subprocess.run([*MAILFLEET, "sandbox", "down", "--root", str(root),
                               "--timeout", "60"], capture_output=True, text=True, timeout=90)
        if up.poll() is None:
            up.kill()
        up.wait(30)
        log.close()
    assert down.returncode == 0, down.stdout + down.stderr + (
        tmp_path / "up.log").read_text()[-3000:]
    assert not (root / "state.json").exists()
