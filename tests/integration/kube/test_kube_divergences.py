"""Where the emulator knowingly differs from kube-apiserver: each row of the "Known
divergences" table in docs/sandbox.md has its test here. Every test asserts what the real
server does and must pass there; against the emulator it is a strict xfail, so the day the
emulator learns the behaviour the suite says so and the row goes."""

from __future__ import annotations

import secrets
import time

import pytest
import urllib3
from integration.kube.conftest import Raw

DIVERGENCE = "known emulator divergence (docs/sandbox.md, Known divergences)"


@pytest.fixture(autouse=True)
def _expected_to_fail_on_the_emulator(request: pytest.FixtureRequest, target: str) -> None:
    if target == "emulator":
        request.applymarker(pytest.mark.xfail(strict=True, reason=DIVERGENCE))


def _wait_for_default_account(raw: Raw, ns: str) -> None:
    deadline = time.monotonic() + 30
    while raw("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default").status != 200:
        assert time.monotonic() < deadline, "no default ServiceAccount"
        time.sleep(0.2)


def test_requests_are_authenticated_and_authorized_by_rbac(raw: Raw, ns: str) -> None:
    """A ServiceAccount's bound token authenticates as that account, and RBAC refuses what no
    role grants it: 403 Forbidden."""
    assert raw("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}
    ).status == 201
    issued = raw("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/nobody/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600}})
    assert issued.status == 201, issued.body
    token = issued.body["status"]["token"]
    configuration = raw.api_client.configuration
    anonymous_tls = urllib3.PoolManager(ca_certs=configuration.ssl_ca_cert,
                                        cert_reqs="CERT_REQUIRED" if configuration.verify_ssl
                                        else "CERT_NONE")
    reply = anonymous_tls.request("GET", configuration.host + "/api/v1/namespaces/kube-system/"
                                  "secrets", headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 403


def test_pod_security_admission_refuses_a_privileged_pod(raw: Raw) -> None:
    """A namespace labelled `pod-security.kubernetes.io/enforce=restricted` refuses a pod that
    breaks the restricted profile: 403 Forbidden naming PodSecurity."""
    name = f"restricted-{secrets.token_hex(3)}"
    assert raw("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": name, "labels": {
                                                  "pod-security.kubernetes.io/enforce":
                                                      "restricted"}}}).status == 201
    try:
        _wait_for_default_account(raw, name)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
               "spec": {"containers": [{"name": "c", "image": "busybox",
                                        "securityContext": {"privileged": True}}]}}
        reply = raw("POST", f"/api/v1/namespaces/{name}/pods", pod)
        assert reply.status == 403, reply.body
        assert "PodSecurity" in reply.body["message"]
    finally:
        raw("DELETE", f"/api/v1/namespaces/{name}")


def test_admission_defaults_a_pods_token_volume_and_tolerations(raw: Raw, ns: str) -> None:
    """The ServiceAccount and DefaultTolerationSeconds admission plugins complete a pod: a
    projected `kube-api-access-*` volume with the bound token, and NoExecute tolerations for
    not-ready and unreachable nodes."""
    _wait_for_default_account(raw, ns)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "defaulted"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    reply = raw("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert reply.status == 201, reply.body
    spec = reply.body["spec"]
    projected = [v for v in spec.get("volumes") or [] if v["name"].startswith("kube-api-access")]
    assert projected and any("serviceAccountToken" in source
                             for source in projected[0]["projected"]["sources"])
    keys = {t.get("key") for t in spec.get("tolerations") or [] if t.get("effect") == "NoExecute"}
    assert {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"} <= keys


def test_openapi_v2_is_served(raw: Raw) -> None:
    """`/openapi/v2` (what older clients and some tools still read) answers 200."""
    reply = raw("GET", "/openapi/v2")
    assert reply.status == 200
