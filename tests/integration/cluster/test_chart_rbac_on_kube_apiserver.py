"""The chart's RBAC, installed on the real kube-apiserver, answers `kubectl auth can-i` for the
operator's ServiceAccount exactly as the operator's resource table says: yes for every verb it
declares, in the namespaces it serves; no for the rest (other namespaces, verbs it never uses,
cluster objects it has no business with)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mailfleet_operator.kube import resources
from mailfleet_sandbox import external_dns, operator_install
from mailfleet_sandbox.kube.errors import ApiError
from sandbox_fixtures.control_plane import ThreadedControlPlane

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
OPERATOR_NS = "rbac-operator"
WATCHED_NS = "rbac-mail"
OTHER_NS = "rbac-other"
SA = f"system:serviceaccount:{OPERATOR_NS}:mailfleet-operator"


def cni_egress_crd(res: resources.Resource) -> dict[str, object]:
    """A stand-in CRD for a CNI's per-IP egress kind (Cilium, Antrea, OVN-Kubernetes), so that
    kubectl resolves the name: the schema does not matter to RBAC."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{res.plural}.{res.group}"},
        "spec": {
            "group": res.group,
            "scope": "Namespaced" if res.namespaced else "Cluster",
            "names": {"kind": res.kind, "listKind": f"{res.kind}List", "plural": res.plural,
                      "singular": res.kind.lower()},
            "versions": [{"name": res.version, "served": True, "storage": True, "schema": {
                "openAPIV3Schema": {"type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


CNI_EGRESS = (resources.CILIUM_EGRESS_GATEWAY_POLICIES, resources.ANTREA_EGRESSES,
              resources.OVN_EGRESS_IPS)


@pytest.fixture(scope="module")
def installed(real_control_plane: ThreadedControlPlane) -> ThreadedControlPlane:
    api = real_control_plane.api
    assert api is not None
    for ns in (OPERATOR_NS, WATCHED_NS, OTHER_NS):
        try:
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        except ApiError as exc:
            assert exc.code == 409, exc
    crds = [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]
    cni = [cni_egress_crd(res) for res in CNI_EGRESS]
    for crd in [*crds, external_dns.dnsendpoint_crd(), *cni]:  # kubectl resolves by discovery
        try:
            api.create(crd)
        except ApiError as exc:
            assert exc.code == 409, exc
    values = operator_install.sandbox_values(
        watch_namespace=WATCHED_NS, operator_image="ghcr.io/mailfleet/operator:0.1.0",
        sender_image="ghcr.io/mailfleet/sender:0.1.0", settings={}, node="node-c")
    for obj in operator_install.render(values, namespace=OPERATOR_NS):
        if obj["kind"] in ("Deployment", "Service"):
            continue  # RBAC only: nothing runs here
        api.create(obj)
    return real_control_plane


def can_i(plane: ThreadedControlPlane, verb: str, resource: str, namespace: str | None) -> bool:
    args = [KUBECTL, "--kubeconfig", str(plane.kubeconfig), "auth", "can-i", verb, resource,
            "--as", SA]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"{' '.join(args)}: {done.stdout} {done.stderr}"
    return answer == "yes"


def _target(res: resources.Resource, sub: str = "") -> str:
    name = res.plural + (f"/{sub}" if sub else "")
    return f"{name}.{res.group}" if res.group else name


SINGLE = [res for res in resources.ALL if res.group != "kopf.dev"]
"""What a single-replica install uses: the kopf peering kinds are granted only in HA mode."""
DECLARED = [(res, verb, "") for res in SINGLE for verb in sorted(res.verbs)] + [
    (res, "patch", sub) for res in SINGLE for sub in sorted(res.subresources)]


@pytest.mark.parametrize(("res", "verb", "sub"), DECLARED,
                         ids=[f"{verb} {_target(res, sub)}" for res, verb, sub in DECLARED])
def test_every_declared_verb_is_granted_where_the_operator_serves(
        installed: ThreadedControlPlane, res: resources.Resource, verb: str, sub: str) -> None:
    namespace = WATCHED_NS if res.namespaced else None
    assert can_i(installed, verb, _target(res, sub), namespace)


UNDECLARED = [(res, verb) for res in resources.ALL
              for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
              if verb not in res.verbs or res not in SINGLE]


@pytest.mark.parametrize(("res", "verb"), UNDECLARED,
                         ids=[f"{verb} {_target(res)}" for res, verb in UNDECLARED])
def test_no_verb_beyond_the_declared_table(installed: ThreadedControlPlane,
                                           res: resources.Resource, verb: str) -> None:
    namespace = WATCHED_NS if res.namespaced else None
    assert not can_i(installed, verb, _target(res), namespace)


@pytest.mark.parametrize(("verb", "resource", "namespace"), [
    ("get", "secrets", OTHER_NS),
    ("create", "statefulsets.apps", OTHER_NS),
    ("get", "secrets", "kube-system"),
    ("create", "pods/exec", WATCHED_NS),
    ("delete", "nodes", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "serviceaccounts/token", WATCHED_NS),
])
def test_nothing_outside_its_namespaces_or_its_job(installed: ThreadedControlPlane, verb: str,
                                                   resource: str, namespace: str | None) -> None:
    assert not can_i(installed, verb, resource, namespace)
