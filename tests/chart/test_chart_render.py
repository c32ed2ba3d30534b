"""The chart rendered by Helm's own library for several value sets: lint, Kubernetes schemas,
our CRD schemas, pod security, and the behaviour each value promises."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from chart import chart_support as cs
from unit.api import openapi_rules

VALUE_SET_IDS = list(cs.VALUE_SETS)


@pytest.mark.parametrize("name", VALUE_SET_IDS)
def test_helm_lint_is_clean_in_strict_mode(name: str) -> None:
    for kube_version in ("v1.28.0", "v1.37.0"):
        report = helm_python.lint(str(cs.CHART), cs.VALUE_SETS[name], strict=True,
                                  kube_version=kube_version)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not problems, report


@pytest.mark.parametrize("name", VALUE_SET_IDS)
def test_every_builtin_object_is_valid_for_every_supported_kubernetes(name: str) -> None:
    objs = cs.objects(cs.VALUE_SETS[name])
    checked = 0
    for version in cs.KUBE_VERSIONS:
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.utils.SchemaNotFoundError:
                assert obj["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "kopf.dev"), (
                    f"no schema for {obj['apiVersion']} {obj['kind']}"
                )
                continue
            except kubernetes_validate.ValidationError as error:
                raise AssertionError(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: "
                    f"{error.message} at {list(error.path)}"
                ) from error
            checked += 1
    assert checked >= len(cs.KUBE_VERSIONS) * 4  # at least workload, RBAC, Service


def test_chart_crds_are_the_generated_crds_with_keep_annotation() -> None:
    rendered = {o["metadata"]["name"]: o for o in cs.find(cs.objects(), "CustomResourceDefinition")}
    for path in sorted((cs.ROOT / "crds").glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        crd = rendered.pop(source["metadata"]["name"])
        assert crd["spec"] == source["spec"], f"{path.name}: chart copy differs from crds/"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert openapi_rules.structural_violations(crd) == []
    assert rendered == {}, "the chart has CRDs that crds/ does not"


def test_crds_can_be_left_out_or_left_without_keep() -> None:
    assert cs.find(cs.objects({"crds": {"enabled": False}}), "CustomResourceDefinition") == []
    crds = cs.find(cs.objects({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert len(crds) == 3
    assert all("annotations" not in c["metadata"] for c in crds)


def test_artifacthub_examples_are_valid_objects_of_our_crds() -> None:
    chart = yaml.safe_load((cs.CHART / "Chart.yaml").read_text())
    annotations = chart["annotations"]
    schemas = {
        o["spec"]["names"]["kind"]: o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for o in cs.find(cs.objects(), "CustomResourceDefinition")
    }
    examples = yaml.safe_load(annotations["artifacthub.io/crdsExamples"])
    assert {e["kind"] for e in examples} == set(schemas)
    for example in examples:
        assert openapi_rules.validate_object(schemas[example["kind"]], example) == []
    listed = yaml.safe_load(annotations["artifacthub.io/crds"])
    assert {c["kind"] for c in listed} == set(schemas)
    assert annotations["artifacthub.io/operator"] == "true"
    assert annotations["artifacthub.io/operatorCapabilities"] in (
        "Basic Install", "Seamless Upgrades", "Full Lifecycle", "Deep Insights", "Auto Pilot")
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    assert {i["name"] for i in images} == {"operator", "sender"}
    assert all(i["image"].endswith(":" + str(chart["appVersion"])) for i in images)


def test_kopf_peering_objects_are_valid_against_the_peering_crds() -> None:
    peering_crds = cs.generate().subchart_crds({"ha": {"enabled": True}})
    schemas = {c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
               for c in peering_crds}
    assert set(schemas) == {"KopfPeering", "ClusterKopfPeering"}
    assert cs.generate().subchart_crds({}) == [], "peering CRDs only come with HA"
    for values in (cs.VALUE_SETS["ha"], cs.VALUE_SETS["namespaced-ha"]):
        peerings = [o for o in cs.objects(values) if o["apiVersion"] == "kopf.dev/v1"]
        assert peerings
        for obj in peerings:
            # The API server always knows apiVersion, kind and metadata; kopf's schema
            # does not list them.
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            assert openapi_rules.validate_object(schemas[obj["kind"]], body) == []
            assert obj["metadata"]["name"] == "mailfleet"


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("name", VALUE_SET_IDS)
def test_operator_pod_meets_the_restricted_pod_security_standard(name: str) -> None:
    objs = cs.objects(cs.VALUE_SETS[name])
    workloads = cs.find(objs, "Deployment") + cs.find(objs, "StatefulSet")
    assert len(workloads) == 1
    pod = _pod_spec(workloads[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc.get("capabilities", {}).get("add")
        assert sc["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_default_is_two_replicas_electing_a_leader_recreated_without_peering() -> None:
    objs = cs.objects()
    deployment = cs.one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = cs.env_of(_pod_spec(deployment)["containers"][0])
    assert env["MAILFLEET_OPERATOR_STANDALONE"] == "true"
    assert env["MAILFLEET_OPERATOR_ALL_NAMESPACES"] == "true"
    assert env["MAILFLEET_OPERATOR_LEADER_ELECTION"] == "true"
    # The election's identity and the leader Lease's namespace, from the downward API.
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert cs.find(objs, "StatefulSet") == cs.find(objs, "PodDisruptionBudget") == []
    assert not [o for o in objs if o["apiVersion"].startswith("kopf.dev")]


def test_ha_gives_each_replica_a_distinct_peering_priority_and_one_peering_object() -> None:
    objs = cs.objects(cs.VALUE_SETS["ha"])
    assert cs.find(objs, "Deployment") == []
    sts = cs.one(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == cs.one(objs, "Service", "mailfleet-operator-peers")[
        "metadata"]["name"]
    env = cs.env_of(_pod_spec(sts)["containers"][0])
    assert env["MAILFLEET_OPERATOR_STANDALONE"] == "false"
    # kopf pauses every replica that sees a peer of equal priority: priorities must differ,
    # and the pod ordinal (unique in a StatefulSet) is what each replica gets.
    assert env["MAILFLEET_OPERATOR_PRIORITY"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    peering = cs.one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == env["MAILFLEET_OPERATOR_PEERING_NAME"]
    assert cs.one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    anti = _pod_spec(sts)["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]


def test_ha_priority_env_parses_as_the_operator_setting() -> None:
    """The downward-API value is the ordinal as text; the operator's settings must take it."""
    from mailfleet_operator import settings

    parsed = settings.Settings.from_env({"MAILFLEET_OPERATOR_PRIORITY": "2",
                                         "MAILFLEET_OPERATOR_STANDALONE": "false",
                                         "MAILFLEET_OPERATOR_PEERING_NAME": "mailfleet"})
    assert (parsed.priority, parsed.standalone, parsed.peering_name) == (2, False, "mailfleet")


DOWNWARD_API = ("POD_ID", "POD_NAME", "POD_NAMESPACE")
"""Variables the pod gets from the downward API, not operator settings."""

def test_every_operator_env_variable_is_a_known_setting() -> None:
    from mailfleet_operator import settings

    for name in VALUE_SET_IDS:
        objs = cs.objects(cs.VALUE_SETS[name])
        workload = (cs.find(objs, "Deployment") + cs.find(objs, "StatefulSet"))[0]
        env = cs.env_of(_pod_spec(workload)["containers"][0])
        for key in env:
            if key in DOWNWARD_API:
                continue
            field = key.removeprefix(settings.ENV_PREFIX).lower()
            assert field in settings.Settings.model_fields, f"{key} is not an operator setting"
        static = {k: v for k, v in env.items() if isinstance(v, str) and k not in DOWNWARD_API}
        settings.Settings.from_env(static)  # the values parse


def test_namespaced_mode_grants_write_access_only_in_watched_namespaces() -> None:
    objs = cs.objects(cs.VALUE_SETS["namespaced"])
    roles = cs.find(objs, "Role")
    served = [r for r in roles if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in served) == ["mail", "mail-staging"]
    bindings = cs.find(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == [
        "mail", "mail-staging", "mailfleet-system"]
    # Leader election: Leases only, in the operator's own namespace.
    leader = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    assert [r["metadata"]["namespace"] for r in leader] == ["mailfleet-system"]
    assert {g for r in leader[0]["rules"] for g in r["apiGroups"]} == {"coordination.k8s.io"}
    assert {p for r in leader[0]["rules"] for p in r["resources"]} == {"leases"}
    # Leases (the egress-IP Leases) wherever pools are served.
    assert all(any("leases" in rule["resources"] for rule in r["rules"]) for r in served)
    cluster_role = cs.one(objs, "ClusterRole")
    # Writes cluster-wide only on the per-IP CNI egress objects, which are cluster-scoped.
    cni_egress = {("cilium.io", "ciliumegressgatewaypolicies"), ("crd.antrea.io", "egresses"),
                  ("k8s.ovn.org", "egressips")}
    for rule in cluster_role["rules"]:
        if (rule["apiGroups"][0], rule["resources"][0]) in cni_egress:
            continue
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    env = cs.env_of(_pod_spec(cs.one(objs, "Deployment"))["containers"][0])
    assert env["MAILFLEET_OPERATOR_NAMESPACES"] == "mail,mail-staging"
    assert "MAILFLEET_OPERATOR_ALL_NAMESPACES" not in env


def test_namespaced_ha_meets_in_a_namespaced_peering() -> None:
    objs = cs.objects(cs.VALUE_SETS["namespaced-ha"])
    peering = cs.one(objs, "KopfPeering")
    assert peering["metadata"]["namespace"] == "mail"
    assert cs.find(objs, "ClusterKopfPeering") == []
    role = next(r for r in cs.find(objs, "Role") if r["metadata"]["namespace"] == "mail")
    assert any("kopfpeerings" in r["resources"] for r in role["rules"])


def test_image_digest_and_registry_and_existing_service_account() -> None:
    objs = cs.objects(cs.VALUE_SETS["pinned-images-no-crds"])
    deployment = cs.one(objs, "Deployment")
    pod = _pod_spec(deployment)
    assert pod["containers"][0]["image"] == "registry.example.com/mf/operator@sha256:" + "a" * 64
    env = cs.env_of(pod["containers"][0])
    assert env["MAILFLEET_OPERATOR_SENDER_IMAGE"] == "registry.example.com/mf/sender:0.1.0-rc1"
    assert env["MAILFLEET_OPERATOR_ERROR_DELAY"] == "5"
    assert pod["serviceAccountName"] == "existing"
    assert cs.find(objs, "ServiceAccount") == []
    binding = cs.one(objs, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "existing"


def test_monitoring_objects_are_opt_in() -> None:
    kinds = {o["kind"] for o in cs.objects()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    objs = cs.objects(cs.ALL_MONITORING)
    monitor = cs.one(objs, "ServiceMonitor")
    service = cs.one(objs, "Service", "mailfleet-operator-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    pod_monitor = cs.one(objs, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["podTargetLabels"] == ["mailfleet.io/pool"]
    dashboard = cs.one(objs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Mail"}


def test_pod_monitor_selects_the_pods_the_operator_creates() -> None:
    from mailfleet_operator.logic import children

    selector = cs.one(cs.objects(cs.ALL_MONITORING), "PodMonitor")["spec"]["selector"]
    pod_labels = children.labels("marketing")
    assert selector["matchLabels"].items() <= pod_labels.items()
    assert "mailfleet.io/pool" in pod_labels


BAD_VALUES = [
    ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    ({"ha": {"enabled": True, "replicas": 1}}, "/ha/replicas"),
    ({"watchNamespaces": ["Mail_Prod"]}, "/watchNamespaces/0"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"prometheusRule": {"thresholds": {"bounceRateWarning": 5}}},
     "/prometheusRule/thresholds/bounceRateWarning"),
    ({"prometheusRule": {"disabled": ["NoSuchAlert"]}}, "/prometheusRule/disabled/0"),
    ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "/metrics/serviceMonitor/interval"),
    ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_refuses_bad_values_naming_the_field(values: dict[str, Any], where: str) -> None:
    with helm_python.Chart.load(str(cs.CHART)) as chart:
        with pytest.raises(helm_python.HelmValuesError) as caught:
            chart.render(values, name="mailfleet", namespace="mailfleet-system")
    assert where in str(caught.value)


def test_schema_accepts_every_tested_value_set() -> None:
    with helm_python.Chart.load(str(cs.CHART)) as chart:
        for values in cs.VALUE_SETS.values():
            chart.validate_schema(values)


def _keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and value:
            keys |= _keys(value, prefix + key + ".")
    return keys


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        keys.add(prefix + key)
        if sub.get("additionalProperties") is False:
            keys |= _schema_keys(sub, prefix + key + ".")
    return keys


def test_values_yaml_is_documented_field_by_field_and_typed_in_the_schema() -> None:
    text = (cs.CHART / "values.yaml").read_text()
    lines = text.splitlines()
    documented_blocks: list[int] = []  # indents of keys whose `# --` comment covers children
    for number, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-"):
            continue
        indent = len(line) - len(stripped)
        documented_blocks = [i for i in documented_blocks if i < indent]
        if documented_blocks:
            continue  # a default value inside a field documented as a whole
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), f"values.yaml:{number + 1} {stripped!r} has no comment"
        comment_start = number - 1
        while comment_start > 0 and lines[comment_start - 1].strip().startswith("#"):
            comment_start -= 1
        if lines[comment_start].strip().startswith("# --"):
            documented_blocks.append(indent)
    values = yaml.safe_load(text)
    schema = helm_python.Chart.load(str(cs.CHART)).schema
    assert schema is not None
    schema_keys = _schema_keys(schema)
    missing = {k for k in _keys(values) if k.count(".") < 3} - schema_keys
    # Children of free-form objects (resources, securityContext, labels) are not in the schema.
    free_form = {"resources.", "podSecurityContext.", "securityContext.",
                 "grafanaDashboard.labels."}
    missing = {k for k in missing if not any(k.startswith(p) for p in free_form)}
    assert missing == set()
