"""API conformance, part two: request handling a client relies on and the emulator once got
wrong (issue 13). Same fixtures and rules as test_kube_conformance.py: documented
kube-apiserver behaviour only, in the scratch namespace, emulator by default and a real
cluster when KUBECONFIG is set."""

from __future__ import annotations

import json
from typing import Any

import pytest
from integration.kube.conftest import Raw, configmap, wait_for, widget


def cm_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def w_path(prefix: str, ns: str, name: str = "") -> str:
    return f"{prefix}/namespaces/{ns}/widgets" + (f"/{name}" if name else "")


def test_create_without_api_version_and_kind_takes_them_from_the_url(raw: Raw,
                                                                     ns: str) -> None:
    """A built-in object POSTed without apiVersion and kind (what the kubernetes client's
    typed models may send) is decoded as the URL's type and created."""
    reply = raw("POST", cm_path(ns), {"metadata": {"name": "typeless"}, "data": {"a": "1"}})
    assert reply.status == 201, reply.body
    assert (reply.body["apiVersion"], reply.body["kind"]) == ("v1", "ConfigMap")
    assert raw("GET", cm_path(ns, "typeless")).body["data"] == {"a": "1"}


def test_create_with_a_resource_version_is_refused(raw: Raw, ns: str) -> None:
    """metadata.resourceVersion must not be set on create: the storage layer refuses it
    ("resourceVersion should not be set on objects to be created", a 500 without a reason)
    and nothing is created."""
    body = configmap("with-rv", a="1")
    body["metadata"]["resourceVersion"] = "12345"
    reply = raw("POST", cm_path(ns), body)
    assert reply.status == 500, reply.body
    assert "resourceVersion should not be set" in reply.body["message"]
    assert raw("GET", cm_path(ns, "with-rv")).status == 404


def test_custom_resource_replace_needs_a_resource_version(raw: Raw, ns: str,
                                                          widgets: str) -> None:
    """A PUT of a custom resource without metadata.resourceVersion is 422 Invalid on
    metadata.resourceVersion (CRDs do not allow unconditional update); a ConfigMap may be
    replaced without one (AllowUnconditionalUpdate)."""
    made = raw("POST", w_path(widgets, ns), widget("rv-w")).body
    body = widget("rv-w", size="large")
    reply = raw("PUT", w_path(widgets, ns, "rv-w"), body)
    assert (reply.status, reply.body["reason"]) == (422, "Invalid"), reply.body
    assert reply.body["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    assert raw("GET", w_path(widgets, ns, "rv-w")).body["spec"]["size"] == "small"
    body["metadata"]["resourceVersion"] = made["metadata"]["resourceVersion"]
    assert raw("PUT", w_path(widgets, ns, "rv-w"), body).status == 200

    raw("POST", cm_path(ns), configmap("rv-cm", a="1"))
    replaced = raw("PUT", cm_path(ns, "rv-cm"), configmap("rv-cm", a="2"))
    assert replaced.status == 200, replaced.body
    assert raw("GET", cm_path(ns, "rv-cm")).body["data"] == {"a": "2"}


def test_replace_with_another_uid_is_a_conflict(raw: Raw, ns: str) -> None:
    """metadata.uid in a PUT body is a precondition: an object recreated under the same name
    (new uid) is not overwritten by a write meant for the old one (409 Conflict)."""
    first = raw("POST", cm_path(ns), configmap("uid-cm", v="old")).body
    raw("DELETE", cm_path(ns, "uid-cm"))
    wait_for(lambda: raw("GET", cm_path(ns, "uid-cm")).status == 404)
    second = raw("POST", cm_path(ns), configmap("uid-cm", v="new")).body
    stale = configmap("uid-cm", v="overwritten")
    stale["metadata"]["uid"] = first["metadata"]["uid"]
    reply = raw("PUT", cm_path(ns, "uid-cm"), stale)
    assert (reply.status, reply.body["reason"]) == (409, "Conflict"), reply.body
    assert "Precondition failed: UID" in reply.body["message"]
    kept = raw("GET", cm_path(ns, "uid-cm")).body
    assert kept["data"] == {"v": "new"}
    assert kept["metadata"]["uid"] == second["metadata"]["uid"]


def test_continue_token_can_be_used_again(raw: Raw, ns: str) -> None:
    """A continue token names a consistent snapshot (the list's resourceVersion and the next
    key), not a server-side cursor: using it twice returns the same page, and objects
    created after the first page do not appear in later pages (API concepts: retrieving
    large results in chunks)."""
    for i in range(5):
        raw("POST", cm_path(ns), configmap(f"again-{i}", {"again": "yes"}))
    url = cm_path(ns) + "?labelSelector=again%3Dyes&limit=2"
    first = raw("GET", url).body
    token = first["metadata"]["continue"]
    raw("POST", cm_path(ns), configmap("again-9", {"again": "yes"}))

    def page(cont: str) -> tuple[list[str], str, str]:
        reply = raw("GET", url + f"&continue={cont}")
        assert reply.status == 200, reply.body
        meta = reply.body["metadata"]
        return ([i["metadata"]["name"] for i in reply.body["items"]],
                meta.get("continue", ""), meta["resourceVersion"])

    once, again = page(token), page(token)
    assert once == again
    assert once[2] == first["metadata"]["resourceVersion"]
    names = [i["metadata"]["name"] for i in first["items"]] + once[0]
    cont = once[1]
    while cont:
        more, cont, _ = page(cont)
        names += more
    assert sorted(names) == [f"again-{i}" for i in range(5)]


def test_dependents_of_absent_owners_are_collected(raw: Raw, ns: str) -> None:
    """The garbage collector deletes a dependent whose owners are all absent, not only when
    an owner is deleted: an ownerReference whose uid matches no object, one whose uid
    belongs to an object of another kind, and one naming an object in another namespace
    (namespaced owners are looked up in the dependent's namespace). A dependent with a live
    owner stays (garbage collection: owners and dependents)."""
    owner = raw("POST", cm_path(ns), configmap("gc-owner")).body
    other_ns = f"{ns}-other"
    assert raw("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": other_ns}}).status == 201
    try:
        elsewhere = raw("POST", cm_path(other_ns), configmap("gc-elsewhere")).body
        secret = raw("POST", f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gc-secret"}}).body

        def ref(kind: str, name: str, uid: str) -> dict[str, str]:
            return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid}

        cases = {
            "gc-no-such-uid": ref("ConfigMap", "gc-owner", "6b0c4b6e-0000-4000-8000-00000000dead"),
            "gc-wrong-kind": ref("ConfigMap", "gc-secret", secret["metadata"]["uid"]),
            "gc-other-namespace": ref("ConfigMap", "gc-elsewhere",
                                      elsewhere["metadata"]["uid"]),
            "gc-live-owner": ref("ConfigMap", "gc-owner", owner["metadata"]["uid"]),
        }
        for name, owner_ref in cases.items():
            body = configmap(name)
            body["metadata"]["ownerReferences"] = [owner_ref]
            assert raw("POST", cm_path(ns), body).status == 201
        for name in ("gc-no-such-uid", "gc-wrong-kind", "gc-other-namespace"):
            wait_for(lambda name=name: raw("GET", cm_path(ns, name)).status == 404,
                     timeout=60, interval=0.2)
        assert raw("GET", cm_path(ns, "gc-live-owner")).status == 200
        assert raw("GET", cm_path(other_ns, "gc-elsewhere")).status == 200
    finally:
        raw("DELETE", f"/api/v1/namespaces/{other_ns}")


def _deployment(name: str, **extra_spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [{"name": "c", "image": "busybox:1"}]}}},
            **extra_spec}


@pytest.mark.parametrize(("case", "resource", "body"), [
    ("a number for a ConfigMap data value", "configmaps",
     {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typed-cm"},
      "data": {"port": 8080}}),
    ("a number for a container env value", "pods",
     {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "typed-pod"},
      "spec": {"containers": [{"name": "c", "image": "busybox:1",
                               "env": [{"name": "PORT", "value": 8080}]}]}}),
    ("a string for a Deployment's replicas", "deployments",
     dict(_deployment("typed-deploy"), spec=dict(_deployment("typed-deploy")["spec"],
                                                 replicas="two"))),
    ("bad base64 in Secret data", "secrets",
     {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "typed-secret"},
      "data": {"key": "not base64!"}}),
    ("a list for a Service's selector map", "services",
     {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "typed-svc"},
      "spec": {"selector": ["app"], "ports": [{"port": 80}]}}),
])
def test_built_in_objects_are_decoded_with_their_types(raw: Raw, ns: str, case: str,
                                                       resource: str, body: Any) -> None:
    """Built-in kinds are decoded into their Go types: a value of the wrong JSON type (or
    bad base64 for a []byte field) is 400 BadRequest "cannot be handled as a <Kind>" and
    nothing is stored."""
    group = "/apis/apps/v1" if resource == "deployments" else "/api/v1"
    path = f"{group}/namespaces/{ns}/{resource}"
    reply = raw("POST", path, body)
    assert (reply.status, reply.body["reason"]) == (400, "BadRequest"), (case, reply.body)
    assert f"cannot be handled as a {body['kind']}" in reply.body["message"]
    assert raw("GET", f"{path}/{body['metadata']['name']}").status == 404


def test_quantities_take_numbers_and_strings(raw: Raw, ns: str) -> None:
    """resource.Quantity fields accept a JSON number as well as a string (quantity
    serialization), so `cpu: 1` in a container's resources is valid."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quantities"},
           "spec": {"schedulerName": "conformance-no-scheduler", "containers": [{
               "name": "c", "image": "registry.k8s.io/pause:3.10",
               "resources": {"limits": {"cpu": 1, "memory": "64Mi"}}}]}}
    reply = raw("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert reply.status == 201, reply.body
    raw("DELETE", f"/api/v1/namespaces/{ns}/pods/quantities?gracePeriodSeconds=0")


def test_unknown_built_in_fields_follow_field_validation(raw: Raw, ns: str) -> None:
    """A misspelled field of a built-in kind is dropped: with fieldValidation=Strict the
    request is 400 BadRequest `strict decoding error: unknown field "spec.replicass"`;
    with Warn it is created and a Warning header names the field (server-side field
    validation)."""
    path = f"/apis/apps/v1/namespaces/{ns}/deployments"
    body = _deployment("unknown-deploy")
    body["spec"]["replicass"] = 2
    strict = raw("POST", path + "?fieldValidation=Strict", body)
    assert (strict.status, strict.body["reason"]) == (400, "BadRequest"), strict.body
    assert 'unknown field "spec.replicass"' in strict.body["message"]
    assert raw("GET", f"{path}/unknown-deploy").status == 404
    warned = raw("POST", path + "?fieldValidation=Warn", body)
    assert warned.status == 201, warned.body
    assert "spec.replicass" in warned.headers.get("warning", "")
    assert "replicass" not in warned.body["spec"]
    nested = _deployment("unknown-nested")
    nested["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    reply = raw("POST", path + "?fieldValidation=Strict", nested)
    assert reply.status == 400
    assert "spec.template.spec.containers[0].imagePullPolicyy" in reply.body["message"]


def _cm(name: str, **data: str) -> dict[str, Any]:
    """An apply configuration: only the fields the manager means to own."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _apply(raw: Raw, path: str, body: dict[str, Any], manager: str,
           force: bool = False) -> Any:
    query = f"?fieldManager={manager}" + ("&force=true" if force else "")
    return raw("PATCH", path + query, body, content_type="application/apply-patch+yaml")


def _managers(obj: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(manager, operation) -> the fieldsV1 trie as JSON text, to look for fields."""
    return {(e["manager"], e["operation"]): json.dumps(e.get("fieldsV1") or {})
            for e in obj["metadata"].get("managedFields") or []}


def test_server_side_apply_conflicts_between_managers(raw: Raw, ns: str) -> None:
    """Server-side apply: a manager applying a different value for a field another manager
    applied is 409 Conflict with a FieldManagerConflict cause naming the field and the
    manager, and nothing changes; with force=true it wins and the other manager loses the
    field; applying the same value is shared ownership, not a conflict (server-side apply:
    conflicts)."""
    path = cm_path(ns, "ssa-conflict")
    first = _apply(raw, path, _cm("ssa-conflict", x="1", y="1"), "mgr-a")
    assert first.status == 201, first.body
    clash = _apply(raw, path, _cm("ssa-conflict", x="2"), "mgr-b")
    assert (clash.status, clash.body["reason"]) == (409, "Conflict"), clash.body
    causes = clash.body["details"]["causes"]
    assert [(c["reason"], c["field"]) for c in causes] == \
        [("FieldManagerConflict", ".data.x")]
    assert "mgr-a" in causes[0]["message"]
    assert raw("GET", path).body["data"] == {"x": "1", "y": "1"}

    shared = _apply(raw, path, _cm("ssa-conflict", y="1"), "mgr-b")
    assert shared.status == 200, shared.body

    forced = _apply(raw, path, _cm("ssa-conflict", x="2", y="1"), "mgr-b", force=True)
    assert forced.status == 200, forced.body
    assert forced.body["data"] == {"x": "2", "y": "1"}
    owners = _managers(forced.body)
    assert '"f:x"' in owners[("mgr-b", "Apply")]
    assert '"f:x"' not in owners[("mgr-a", "Apply")]
    assert '"f:y"' in owners[("mgr-a", "Apply")]


def test_updates_record_ownership_that_applies_respect(raw: Raw, ns: str) -> None:
    """A non-apply write (here a merge patch with fieldManager) records the fields it
    changed under operation Update, so a later apply of another value for such a field by
    another manager is 409 Conflict naming that manager."""
    path = cm_path(ns, "ssa-update")
    assert raw("POST", cm_path(ns) + "?fieldManager=creator",
               configmap("ssa-update", x="1")).status == 201
    patched = raw("PATCH", path + "?fieldManager=editor", {"data": {"x": "2", "z": "3"}},
                  content_type="application/merge-patch+json")
    assert patched.status == 200, patched.body
    owners = _managers(patched.body)
    assert '"f:x"' in owners[("editor", "Update")] and '"f:z"' in owners[("editor", "Update")]
    assert '"f:x"' not in owners.get(("creator", "Update"), "")
    clash = _apply(raw, path, _cm("ssa-update", z="9"), "applier")
    assert (clash.status, clash.body["reason"]) == (409, "Conflict"), clash.body
    causes = clash.body["details"]["causes"]
    assert [c["field"] for c in causes] == [".data.z"]
    assert "editor" in causes[0]["message"]
    assert raw("GET", path).body["data"] == {"x": "2", "z": "3"}


def test_a_crd_in_a_protected_group_needs_the_approval_annotation(raw: Raw) -> None:
    """Groups under k8s.io and kubernetes.io are reserved: a CRD there without the
    `api-approved.kubernetes.io` annotation is 422 Invalid naming that annotation (what
    external-dns's DNSEndpoint CRD carries for externaldns.k8s.io)."""
    crd: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.conformance.k8s.io"},
        "spec": {"group": "conformance.k8s.io", "scope": "Namespaced",
                 "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object"}}}]}}
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    reply = raw("POST", path, crd)
    assert (reply.status, reply.body["reason"]) == (422, "Invalid"), reply.body
    assert "api-approved.kubernetes.io" in reply.body["message"]
    crd["metadata"]["annotations"] = {
        "api-approved.kubernetes.io": "https://github.com/kubernetes/enhancements/pull/1111"}
    assert raw("POST", path, crd).status == 201
    raw("DELETE", f"{path}/things.conformance.k8s.io")
