"""API conformance: documented kube-apiserver behaviour, checked against the sandbox
emulator (default) or a real cluster (KUBECONFIG set). Each test names what it checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from integration.kube.conftest import Raw, configmap, wait_for, widget


def cm_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def w_path(prefix: str, ns: str, name: str = "") -> str:
    return f"{prefix}/namespaces/{ns}/widgets" + (f"/{name}" if name else "")


def test_create_sets_server_metadata_and_rejects_duplicates(raw: Raw, ns: str) -> None:
    """Create answers 201 with uid, creationTimestamp and resourceVersion set by the server;
    creating the same name again is 409 AlreadyExists (API concepts: create)."""
    reply = raw("POST", cm_path(ns), configmap("create-a", a="1"))
    assert reply.status == 201
    meta = reply.body["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"]
    again = raw("POST", cm_path(ns), configmap("create-a", a="2"))
    assert (again.status, again.body["reason"]) == (409, "AlreadyExists")
    assert raw("GET", cm_path(ns, "create-a")).body["data"] == {"a": "1"}


def test_generate_name_and_missing_name(raw: Raw, ns: str) -> None:
    """metadata.generateName makes a unique name from the prefix; a body with neither name
    nor generateName is 422 Invalid naming metadata.name."""
    body = configmap("")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "gen-"
    made = raw("POST", cm_path(ns), body)
    assert made.status == 201 and made.body["metadata"]["name"].startswith("gen-")
    assert len(made.body["metadata"]["name"]) > len("gen-")
    del body["metadata"]["generateName"]
    bad = raw("POST", cm_path(ns), body)
    assert (bad.status, bad.body["reason"]) == (422, "Invalid")
    assert bad.body["details"]["causes"][0]["field"] == "metadata.name"


def test_update_with_stale_resource_version_conflicts(raw: Raw, ns: str) -> None:
    """An update carrying an outdated metadata.resourceVersion is 409 Conflict (optimistic
    concurrency); resourceVersion changes on every write."""
    made = raw("POST", cm_path(ns), configmap("occ", v="1")).body
    fresh = dict(made, data={"v": "2"})
    ok = raw("PUT", cm_path(ns, "occ"), fresh)
    assert ok.status == 200
    assert ok.body["metadata"]["resourceVersion"] != made["metadata"]["resourceVersion"]
    stale = raw("PUT", cm_path(ns, "occ"), dict(made, data={"v": "3"}))
    assert (stale.status, stale.body["reason"]) == (409, "Conflict")
    assert raw("GET", cm_path(ns, "occ")).body["data"] == {"v": "2"}


def test_namespace_must_exist(raw: Raw) -> None:
    """Creating in a namespace that does not exist is 404 NotFound for the namespace."""
    reply = raw("POST", cm_path("no-such-namespace-xyz"), configmap("x"))
    assert reply.status == 404
    assert reply.body["details"]["kind"] == "namespaces"


def test_label_selectors(raw: Raw, ns: str) -> None:
    """labelSelector supports =, ==, !=, in, notin, exists and !key; != and notin also match
    objects without the label (labels user guide)."""
    for name, labels in [("ls-a", {"tier": "web", "env": "prod"}),
                         ("ls-b", {"tier": "db", "env": "dev"}), ("ls-c", {"tier": "web"})]:
        assert raw("POST", cm_path(ns), configmap(name, labels)).status == 201

    def names(selector: str) -> list[str]:
        reply = raw("GET", cm_path(ns) + "?labelSelector=" + selector)
        assert reply.status == 200, reply.body
        return sorted(i["metadata"]["name"] for i in reply.body["items"]
                      if i["metadata"]["name"].startswith("ls-"))

    assert names("tier=web") == ["ls-a", "ls-c"]
    assert names("tier==db") == ["ls-b"]
    assert names("env!=prod") == ["ls-b", "ls-c"]
    assert names("env in (prod,dev)") == ["ls-a", "ls-b"]
    assert names("env notin (prod)") == ["ls-b", "ls-c"]
    assert names("env") == ["ls-a", "ls-b"]
    assert names("!env") == ["ls-c"]
    assert names("tier=web,env") == ["ls-a"]


def test_field_selector_and_unsupported_field(raw: Raw, ns: str) -> None:
    """fieldSelector metadata.name works on every kind; a field the kind does not support is
    400 BadRequest."""
    raw("POST", cm_path(ns), configmap("fs-one"))
    reply = raw("GET", cm_path(ns) + "?fieldSelector=metadata.name%3Dfs-one")
    assert [i["metadata"]["name"] for i in reply.body["items"]] == ["fs-one"]
    bad = raw("GET", cm_path(ns) + "?fieldSelector=spec.nothing%3Dx")
    assert (bad.status, bad.body["reason"]) == (400, "BadRequest")


def test_limit_and_continue(raw: Raw, ns: str) -> None:
    """limit returns a page and a continue token; following the tokens yields every item once
    (API concepts: retrieving large results in chunks)."""
    for i in range(5):
        raw("POST", cm_path(ns), configmap(f"page-{i}", {"paged": "yes"}))
    seen: list[str] = []
    url = cm_path(ns) + "?labelSelector=paged%3Dyes&limit=2"
    cont = ""
    while True:
        reply = raw("GET", url + (f"&continue={cont}" if cont else ""))
        assert reply.status == 200
        assert len(reply.body["items"]) <= 2
        seen += [i["metadata"]["name"] for i in reply.body["items"]]
        cont = reply.body["metadata"].get("continue", "")
        if not cont:
            break
    assert sorted(seen) == [f"page-{i}" for i in range(5)]


def _watch_lines(raw: Raw, path: str) -> list[dict[str, Any]]:
    reply = raw("GET", path)
    assert reply.status == 200, reply.body
    text = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_watch_from_resource_version_sees_later_changes(raw: Raw, ns: str) -> None:
    """A watch from a list's resourceVersion replays every change after it, in order, with
    ADDED, MODIFIED and DELETED events (API concepts: efficient detection of changes)."""
    listed = raw("GET", cm_path(ns))
    rv = listed.body["metadata"]["resourceVersion"]
    raw("POST", cm_path(ns), configmap("watched", v="1"))
    raw("PATCH", cm_path(ns, "watched"), {"data": {"v": "2"}},
        content_type="application/merge-patch+json")
    raw("DELETE", cm_path(ns, "watched"))
    events = _watch_lines(raw, cm_path(ns) + f"?watch=true&resourceVersion={rv}"
                          "&timeoutSeconds=1&fieldSelector=metadata.name%3Dwatched")
    assert [e["type"] for e in events if e["type"] != "BOOKMARK"] == \
        ["ADDED", "MODIFIED", "DELETED"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs)


def test_watch_from_too_old_version_is_expired(raw: Raw, ns: str, target: str) -> None:
    """A watch from a resourceVersion older than the kept history ends with an ERROR event
    carrying Status 410 Expired; the client must relist."""
    if target == "emulator":
        pytest.skip("covered by the emulator-only test with a small history")
    if target == "kubernetes":
        pytest.skip("a young kube-apiserver still serves rv=1: its watch cache replays the "
                    "state as ADDED events until its window rolls over (seen on v1.37.2); "
                    "a long-lived cluster (KUBECONFIG) has compacted it")
    events = _watch_lines(raw, cm_path(ns) + "?watch=true&resourceVersion=1&timeoutSeconds=1")
    assert events and events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_json_merge_and_json_patch(raw: Raw, ns: str) -> None:
    """merge-patch+json merges maps and deletes with null; json-patch+json applies RFC 6902
    operations; a failing `test` operation changes nothing (422)."""
    raw("POST", cm_path(ns), configmap("patched", a="1", b="2"))
    merged = raw("PATCH", cm_path(ns, "patched"), {"data": {"a": None, "c": "3"}},
                 content_type="application/merge-patch+json")
    assert merged.body["data"] == {"b": "2", "c": "3"}
    ops = [{"op": "add", "path": "/data/d", "value": "4"}, {"op": "remove", "path": "/data/b"}]
    patched = raw("PATCH", cm_path(ns, "patched"), ops,
                  content_type="application/json-patch+json")
    assert patched.body["data"] == {"c": "3", "d": "4"}
    failing = [{"op": "test", "path": "/data/c", "value": "nope"},
               {"op": "remove", "path": "/data/c"}]
    bad = raw("PATCH", cm_path(ns, "patched"), failing,
              content_type="application/json-patch+json")
    assert bad.status == 422
    assert raw("GET", cm_path(ns, "patched")).body["data"] == {"c": "3", "d": "4"}


def test_strategic_merge_patch_merges_containers_by_name(raw: Raw, ns: str) -> None:
    """Strategic merge patch merges lists with a merge key (containers by name, env by name)
    for built-in kinds; `$patch: delete` removes one element."""
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "smp"},
           "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "smp"}},
                    "template": {"metadata": {"labels": {"app": "smp"}}, "spec": {
                        "containers": [
                            {"name": "a", "image": "busybox:1", "env": [
                                {"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                            {"name": "b", "image": "busybox:1"}]}}}}
    path = f"/apis/apps/v1/namespaces/{ns}/deployments"
    assert raw("POST", path, dep).status == 201
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "busybox:2", "env": [{"name": "Y", "$patch": "delete"},
                                                    {"name": "Z", "value": "3"}]}]}}}}
    reply = raw("PATCH", f"{path}/smp", patch,
                content_type="application/strategic-merge-patch+json")
    assert reply.status == 200, reply.body
    containers = reply.body["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "b"]
    assert containers[0]["image"] == "busybox:2"
    # apimachinery's order: the patch's items first (Z), then the untouched live items
    assert [e["name"] for e in containers[0]["env"]] == ["Z", "X"]
    assert reply.body["metadata"]["generation"] == 2


def test_custom_resources_reject_strategic_merge(raw: Raw, ns: str, widgets: str) -> None:
    """Custom resources do not support strategic merge patch: 415 UnsupportedMediaType."""
    raw("POST", w_path(widgets, ns), widget("smp-w"))
    reply = raw("PATCH", w_path(widgets, ns, "smp-w"), {"spec": {"size": "large"}},
                content_type="application/strategic-merge-patch+json")
    assert (reply.status, reply.body["reason"]) == (415, "UnsupportedMediaType")


def test_schema_validation_names_each_bad_field(raw: Raw, ns: str, widgets: str) -> None:
    """An object violating the CRD schema is 422 Invalid, and details.causes names every bad
    field by its path (enum, pattern, maxLength, maximum, maxItems, type)."""
    bad = widget("bad-w", size="huge", name="ABC", ports=[1, 2, 3, 70000], replicas="two")
    reply = raw("POST", w_path(widgets, ns), bad)
    assert (reply.status, reply.body["reason"]) == (422, "Invalid")
    fields = {c["field"] for c in reply.body["details"]["causes"]}
    assert {"spec.size", "spec.name", "spec.ports", "spec.replicas"} <= fields
    assert any(f.startswith("spec.ports[3]") or f == "spec.ports" for f in fields)
    missing = widget("missing-w")
    del missing["spec"]["size"]
    reply = raw("POST", w_path(widgets, ns), missing)
    assert reply.status == 422
    assert reply.body["details"]["causes"][0]["field"] == "spec.size"


def test_defaulting_pruning_and_field_validation(raw: Raw, ns: str, widgets: str) -> None:
    """Schema defaults are applied (also inside defaulted objects); unknown fields are pruned
    and reported as a Warning header; fieldValidation=Strict rejects them with 400; fields
    under x-kubernetes-preserve-unknown-fields and int-or-string values are kept."""
    body = widget("def-w", port="http", extra={"free": {"form": 1}})
    body["spec"]["unknownField"] = 1
    reply = raw("POST", w_path(widgets, ns) + "?fieldValidation=Warn", body)
    assert reply.status == 201
    spec = reply.body["spec"]
    assert spec["replicas"] == 1 and spec["nested"] == {"mode": "auto"}
    assert "unknownField" not in spec and spec["extra"] == {"free": {"form": 1}}
    assert spec["port"] == "http"
    assert "unknownField" in reply.headers.get("warning", "")
    body["metadata"]["name"] = "strict-w"
    strict = raw("POST", w_path(widgets, ns) + "?fieldValidation=Strict", body)
    assert (strict.status, strict.body["reason"]) == (400, "BadRequest")
    assert "unknownField" in strict.body["message"]


def test_status_subresource_and_generation(raw: Raw, ns: str, widgets: str) -> None:
    """With a status subresource the main endpoint ignores status and /status ignores the rest;
    metadata.generation moves on spec changes only."""
    made = raw("POST", w_path(widgets, ns), widget("st-w")).body
    assert made["metadata"]["generation"] == 1
    labelled = raw("PATCH", w_path(widgets, ns, "st-w"), {"metadata": {"labels": {"x": "y"}},
                                                           "status": {"replicas": 5}},
                   content_type="application/merge-patch+json").body
    assert labelled["metadata"]["generation"] == 1 and "status" not in labelled
    st = raw("PATCH", w_path(widgets, ns, "st-w") + "/status",
             {"spec": {"size": "large"}, "status": {"replicas": 5}},
             content_type="application/merge-patch+json").body
    assert st["status"] == {"replicas": 5} and st["spec"]["size"] == "small"
    assert st["metadata"]["generation"] == 1
    spec_change = raw("PATCH", w_path(widgets, ns, "st-w"), {"spec": {"size": "large"}},
                      content_type="application/merge-patch+json").body
    assert spec_change["metadata"]["generation"] == 2


def test_scale_subresource(raw: Raw, ns: str, widgets: str) -> None:
    """/scale reads and writes replicas as an autoscaling/v1 Scale at the CRD's paths."""
    raw("POST", w_path(widgets, ns), widget("sc-w", replicas=2))
    scale = raw("GET", w_path(widgets, ns, "sc-w") + "/scale").body
    assert (scale["kind"], scale["apiVersion"], scale["spec"]["replicas"]) == \
        ("Scale", "autoscaling/v1", 2)
    scale["spec"]["replicas"] = 4
    assert raw("PUT", w_path(widgets, ns, "sc-w") + "/scale", scale).status == 200
    assert raw("GET", w_path(widgets, ns, "sc-w")).body["spec"]["replicas"] == 4


def test_finalizers_hold_deletion(raw: Raw, ns: str) -> None:
    """Deleting an object with finalizers only sets deletionTimestamp; it disappears when the
    last finalizer is removed; new finalizers cannot be added meanwhile."""
    body = configmap("fin")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    raw("POST", cm_path(ns), body)
    deleted = raw("DELETE", cm_path(ns, "fin"))
    assert deleted.status in (200, 202)
    held = raw("GET", cm_path(ns, "fin")).body
    assert held["metadata"]["deletionTimestamp"]
    more = raw("PATCH", cm_path(ns, "fin"),
               {"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}},
               content_type="application/merge-patch+json")
    assert more.status == 422
    raw("PATCH", cm_path(ns, "fin"), {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json")
    assert raw("GET", cm_path(ns, "fin")).status == 404


@pytest.mark.parametrize("policy", ["Background", "Foreground", "Orphan"])
def test_owner_references_garbage_collection(raw: Raw, ns: str, policy: str) -> None:
    """Dependents (ownerReferences) are deleted with their owner under Background and
    Foreground propagation and kept, without the reference, under Orphan."""
    owner = raw("POST", cm_path(ns), configmap(f"owner-{policy.lower()}")).body
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    dep = configmap(f"dep-{policy.lower()}")
    dep["metadata"]["ownerReferences"] = [ref]
    raw("POST", cm_path(ns), dep)
    raw("DELETE", cm_path(ns, owner["metadata"]["name"]),
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy})
    wait_for(lambda: raw("GET", cm_path(ns, owner["metadata"]["name"])).status == 404)
    if policy == "Orphan":
        kept = wait_for(lambda: (lambda r: r.body if r.status == 200 and not r.body[
            "metadata"].get("ownerReferences") else None)(raw("GET", cm_path(ns, dep[
                "metadata"]["name"]))))
        assert kept["metadata"]["name"] == dep["metadata"]["name"]
    else:
        wait_for(lambda: raw("GET", cm_path(ns, dep["metadata"]["name"])).status == 404)


def test_dry_run_changes_nothing(raw: Raw, ns: str) -> None:
    """dryRun=All runs validation and returns the would-be object but persists nothing."""
    reply = raw("POST", cm_path(ns) + "?dryRun=All", configmap("dry"))
    assert reply.status == 201
    assert raw("GET", cm_path(ns, "dry")).status == 404
    bad = raw("POST", cm_path(ns) + "?dryRun=Maybe", configmap("dry"))
    assert bad.status == 422  # CreateOptions validation: unsupported dryRun value


@pytest.mark.parametrize(("case", "method", "suffix", "body", "ctype", "code", "reason"), [
    ("malformed JSON", "POST", "", b"{not json", "application/json", 400, "BadRequest"),
    ("wrong kind for the URL", "POST", "",
     json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}).encode(),
     "application/json", 400, "BadRequest"),
    ("unknown patch type", "PATCH", "/bad-input", b'{"data":{"a":"b"}}', "text/plain", 415,
     "UnsupportedMediaType"),
    ("malformed merge patch", "PATCH", "/bad-input", b"{nope", "application/merge-patch+json",
     400, "BadRequest"),
    ("selector that does not parse", "GET", "?labelSelector=a%20in%20(b", None,
     "application/json", 400, "BadRequest"),
])
def test_bad_input_is_answered_with_status(raw: Raw, ns: str, case: str, method: str,
                                           suffix: str, body: bytes | None, ctype: str,
                                           code: int, reason: str) -> None:
    """Bad requests get a Status with the real server's code and reason, never a 500, and
    the target object is unchanged."""
    if raw("GET", cm_path(ns, "bad-input")).status == 404:
        raw("POST", cm_path(ns), configmap("bad-input", keep="me"))
    before = raw("GET", cm_path(ns, "bad-input")).body
    reply = raw(method, cm_path(ns) + suffix, raw=body, content_type=ctype)
    assert reply.status == code, (case, reply.body)
    assert reply.body["kind"] == "Status" and reply.body["reason"] == reason
    after = raw("GET", cm_path(ns, "bad-input")).body
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_table_output_uses_printer_columns(raw: Raw, ns: str, widgets: str) -> None:
    """Accept: as=Table returns meta.k8s.io/v1 Table rows with the CRD's
    additionalPrinterColumns evaluated by JSONPath (including filters)."""
    raw("POST", w_path(widgets, ns), widget("tbl-w", replicas=3))
    raw("PATCH", w_path(widgets, ns, "tbl-w") + "/status",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        content_type="application/merge-patch+json")
    reply = raw("GET", w_path(widgets, ns) + "?fieldSelector=metadata.name%3Dtbl-w",
                accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert reply.body["kind"] == "Table"
    names = [c["name"] for c in reply.body["columnDefinitions"]]
    assert names[:4] == ["Name", "Size", "Replicas", "Ready"]
    assert reply.body["rows"][0]["cells"][:4] == ["tbl-w", "small", 3, "True"]


def test_discovery_lists_custom_resources(raw: Raw, widgets: str) -> None:
    """/apis/{group}/{version} lists the CRD's resource with kind, verbs, shortNames and
    its status and scale subresources once the CRD is established."""
    reply = raw("GET", widgets).body
    by_name = {r["name"]: r for r in reply["resources"]}
    assert by_name["widgets"]["kind"] == "Widget"
    assert by_name["widgets"]["namespaced"] is True
    assert "cwd" in by_name["widgets"]["shortNames"]
    assert {"get", "list", "watch", "create", "patch"} <= set(by_name["widgets"]["verbs"])
    assert "widgets/status" in by_name and by_name["widgets/scale"]["kind"] == "Scale"
    groups = raw("GET", "/apis").body["groups"]
    assert any(g["name"] == "conformance.mailfleet.io" for g in groups)


def test_update_of_missing_object_is_not_found(raw: Raw, ns: str) -> None:
    """PUT and PATCH of an object that does not exist are 404 NotFound."""
    assert raw("PUT", cm_path(ns, "ghost"), configmap("ghost")).status == 404
    assert raw("PATCH", cm_path(ns, "ghost"), {"data": {}},
               content_type="application/merge-patch+json").status == 404


def pod_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/pods" + (f"/{name}" if name else "")


def unscheduled_pod(name: str, **spec: Any) -> dict[str, Any]:
    """A pod no real scheduler picks up (unknown schedulerName): the test binds it."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"schedulerName": "conformance-no-scheduler",
                     "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
                     **spec}}


def bind(raw: Raw, ns: str, name: str, node: str = "conformance-node") -> Any:
    return raw("POST", pod_path(ns, name) + "/binding", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}})


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")


def test_binding_assigns_a_pod_to_a_node_once(raw: Raw, ns: str) -> None:
    """POST pods/{name}/binding (what kube-scheduler does) sets spec.nodeName and turns the
    PodScheduled condition True; binding a bound pod again is 409 Conflict and spec.nodeName
    cannot be changed by a pod update (422); binding a missing pod is 404 (core v1 Binding)."""
    assert raw("POST", pod_path(ns), unscheduled_pod("bind-a")).status == 201
    reply = bind(raw, ns, "bind-a")
    assert reply.status == 201, reply.body
    pod = raw("GET", pod_path(ns, "bind-a")).body
    assert pod["spec"]["nodeName"] == "conformance-node"
    scheduled = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert [c["status"] for c in scheduled] == ["True"]
    again = bind(raw, ns, "bind-a", "other-node")
    assert (again.status, again.body["reason"]) == (409, "Conflict")
    moved = raw("PATCH", pod_path(ns, "bind-a"), {"spec": {"nodeName": "other-node"}},
                content_type="application/merge-patch+json")
    assert (moved.status, moved.body["reason"]) == (422, "Invalid")
    assert raw("GET", pod_path(ns, "bind-a")).body["spec"]["nodeName"] == "conformance-node"
    assert bind(raw, ns, "bind-ghost").status == 404
    raw("DELETE", pod_path(ns, "bind-a") + "?gracePeriodSeconds=0")


def test_graceful_pod_deletion(raw: Raw, ns: str) -> None:
    """Deleting a pod bound to a node sets metadata.deletionTimestamp (now + grace) and
    deletionGracePeriodSeconds (the request's gracePeriodSeconds, else
    spec.terminationGracePeriodSeconds) and keeps it; a later delete may only shorten the
    period; gracePeriodSeconds=0 (what the kubelet sends) removes it. Unscheduled and
    terminated (Succeeded/Failed) pods are removed at once (pod lifecycle: termination)."""
    raw("POST", pod_path(ns), unscheduled_pod("grace-unbound"))
    assert raw("DELETE", pod_path(ns, "grace-unbound")).status == 200
    assert raw("GET", pod_path(ns, "grace-unbound")).status == 404

    raw("POST", pod_path(ns), unscheduled_pod("grace-done"))
    bind(raw, ns, "grace-done")
    done = raw("PATCH", pod_path(ns, "grace-done") + "/status",
               {"status": {"phase": "Succeeded"}}, content_type="application/merge-patch+json")
    assert done.status == 200, done.body
    raw("DELETE", pod_path(ns, "grace-done"))
    assert raw("GET", pod_path(ns, "grace-done")).status == 404

    made = raw("POST", pod_path(ns), unscheduled_pod("grace-bound",
                                                     terminationGracePeriodSeconds=45)).body
    bind(raw, ns, "grace-bound")
    rv = raw("GET", pod_path(ns, "grace-bound")).body["metadata"]["resourceVersion"]
    first = raw("DELETE", pod_path(ns, "grace-bound"))
    assert first.status == 200
    meta = raw("GET", pod_path(ns, "grace-bound")).body["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 45
    assert _stamp(meta["deletionTimestamp"]) >= \
        _stamp(made["metadata"]["creationTimestamp"]) + timedelta(seconds=44)
    longer = raw("DELETE", pod_path(ns, "grace-bound"),
                 {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 60})
    assert longer.body["metadata"]["deletionGracePeriodSeconds"] == 45
    shorter = raw("DELETE", pod_path(ns, "grace-bound"),
                  {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 10})
    smeta = shorter.body["metadata"]
    assert smeta["deletionGracePeriodSeconds"] == 10
    assert _stamp(smeta["deletionTimestamp"]) == \
        _stamp(meta["deletionTimestamp"]) - timedelta(seconds=35)
    assert raw("DELETE", pod_path(ns, "grace-bound") + "?gracePeriodSeconds=0").status == 200
    assert raw("GET", pod_path(ns, "grace-bound")).status == 404
    events = _watch_lines(raw, pod_path(ns) + f"?watch=true&resourceVersion={rv}"
                          "&timeoutSeconds=1&fieldSelector=metadata.name%3Dgrace-bound")
    seen = [(e["type"], e["object"]["metadata"].get("deletionGracePeriodSeconds"))
            for e in events if e["type"] != "BOOKMARK"]
    assert seen[:2] == [("MODIFIED", 45), ("MODIFIED", 10)]
    assert seen[-1][0] == "DELETED"


def test_pod_finalizers_outlast_the_grace_period(raw: Raw, ns: str) -> None:
    """Finalizers apply on top of graceful deletion: a bound pod deleted with
    gracePeriodSeconds=0 stays (deletionGracePeriodSeconds 0) until its last finalizer is
    removed, then it is gone."""
    body = unscheduled_pod("grace-fin")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    raw("POST", pod_path(ns), body)
    bind(raw, ns, "grace-fin")
    raw("DELETE", pod_path(ns, "grace-fin"))
    assert raw("DELETE", pod_path(ns, "grace-fin") + "?gracePeriodSeconds=0").status == 200
    held = raw("GET", pod_path(ns, "grace-fin")).body["metadata"]
    assert held["deletionGracePeriodSeconds"] == 0 and held["deletionTimestamp"]
    raw("PATCH", pod_path(ns, "grace-fin"), {"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json")
    assert raw("GET", pod_path(ns, "grace-fin")).status == 404


CEL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "ranges.conformance.mailfleet.io"},
    "spec": {"group": "conformance.mailfleet.io", "scope": "Namespaced",
             "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                     "type": "object",
                     "x-kubernetes-validations": [{"rule": "self.low <= self.high",
                                                   "message": "low must not exceed high"}],
                     "properties": {"low": {"type": "integer"},
                                    "high": {"type": "integer"}}}}}}}]}}


def test_cel_validation_rules_refuse_what_they_forbid(raw: Raw, ns: str) -> None:
    """`x-kubernetes-validations` rules run at the door: 422 Invalid with the rule's message
    (the emulator evaluates them with cel-python, `mailfleet_sandbox.kube.cel_rules`)."""
    created = raw("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CEL_CRD)
    assert created.status in (201, 409), created.body
    path = f"/apis/conformance.mailfleet.io/v1/namespaces/{ns}/ranges"
    wait_for(lambda: raw("GET", path).status == 200, timeout=30)
    bad = {"apiVersion": "conformance.mailfleet.io/v1", "kind": "Range",
           "metadata": {"name": "upside-down"}, "spec": {"low": 5, "high": 1}}
    reply = raw("POST", path, bad)
    assert (reply.status, reply.body["reason"]) == (422, "Invalid"), reply.body
    assert "low must not exceed high" in reply.body["message"]
