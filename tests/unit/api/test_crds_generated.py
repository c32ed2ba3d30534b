"""The generated CRDs are what the models say, and are CRDs a real API server accepts."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from mailfleet_operator import crd_command
from mailfleet_operator.api import crds, kinds
from unit.api import openapi_rules

REPO = pathlib.Path(__file__).resolve().parents[3]
CRD_DIR = REPO / "crds"


def _crd(kind: str) -> dict[str, Any]:
    return crds.build_crd(kinds.BY_KIND[kind])


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = crd["spec"]["versions"][0]
    return version


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda i: i.kind)
def test_committed_crd_file_matches_what_the_models_generate(info: kinds.KindInfo) -> None:
    path = CRD_DIR / crds.file_name(info)
    assert path.exists(), f"{path} missing: run `make crds`"
    assert path.read_text(encoding="utf-8") == crds.render_files()[path.name], (
        f"{path} is stale: run `make crds` and commit the result"
    )


def test_crd_directory_holds_exactly_one_file_per_kind() -> None:
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(crds.render_files())


def test_crds_command_prints_all_three_as_one_multi_document_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert crd_command.run(_args(output_dir=None, check=False)) == 0
    documents = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["spec"]["names"]["kind"] for d in documents] == [i.kind for i in kinds.KINDS]


def test_crds_command_writes_one_file_per_kind_and_check_detects_drift(
    tmp_path: pathlib.Path,
) -> None:
    assert crd_command.run(_args(output_dir=tmp_path, check=False)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "domainauths.mailfleet.io.yaml",
        "ipwarmups.mailfleet.io.yaml",
        "sendingpools.mailfleet.io.yaml",
    ]
    assert crd_command.run(_args(output_dir=tmp_path, check=True)) == 0
    (tmp_path / "ipwarmups.mailfleet.io.yaml").write_text("stale\n", encoding="utf-8")
    assert crd_command.run(_args(output_dir=tmp_path, check=True)) == 1


def _args(**values: Any) -> Any:
    import argparse

    return argparse.Namespace(**values)


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda i: i.kind)
def test_generated_schema_is_structural(info: kinds.KindInfo) -> None:
    assert openapi_rules.structural_violations(crds.build_crd(info)) == []


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda i: i.kind)
def test_crd_is_a_valid_apiextensions_v1_object(info: kinds.KindInfo) -> None:
    crd = yaml.safe_load((CRD_DIR / crds.file_name(info)).read_text(encoding="utf-8"))
    kubernetes_validate.validate(crd, "1.30.0", strict=True)


def test_apiextensions_validation_catches_a_broken_crd() -> None:
    """Guard against the check above passing vacuously (e.g. an unknown kind schema)."""
    crd = _crd("IPWarmup")
    _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["const"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.30.0", strict=True)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        pytest.param(
            lambda s: s["properties"]["spec"]["properties"]["replicas"].pop("type"),
            "no type",
            id="a field without a type is not structural",
        ),
        pytest.param(
            lambda s: s["properties"]["spec"].__setitem__("$ref", "#/x"),
            "$ref is not allowed",
            id="a $ref is refused",
        ),
        pytest.param(
            lambda s: s["properties"]["spec"].__setitem__(
                "anyOf", [{"type": "object", "description": "x"}]
            ),
            "not allowed inside a logical junctor",
            id="types and descriptions inside anyOf are refused",
        ),
        pytest.param(
            lambda s: s["properties"]["spec"].__setitem__(
                "additionalProperties", {"type": "string"}
            ),
            "mutually exclusive",
            id="additionalProperties next to properties is refused",
        ),
        pytest.param(
            lambda s: s["properties"].__setitem__(
                "metadata",
                {"type": "object", "properties": {"labels": {"type": "object"}}},
            ),
            "only name and generateName",
            id="metadata may only restrict name and generateName",
        ),
        pytest.param(
            lambda s: s["properties"]["spec"]["properties"]["replicas"].__setitem__("default", -1),
            "default",
            id="a default that fails its own minimum is refused",
        ),
        pytest.param(
            lambda s: s["properties"]["spec"]["properties"]["storage"].__setitem__(
                "default", {"size": "1Gi", "sizee": "2Gi"}
            ),
            "would be pruned",
            id="a default with a field pruning would drop is refused",
        ),
        pytest.param(
            lambda s: s["properties"]["status"]["properties"]["conditions"]["items"][
                "required"
            ].remove("type"),
            "must be required or defaulted",
            id="a list-map key that is optional is refused",
        ),
    ],
)
def test_structural_checker_flags_each_rule(breakage: Any, expected: str) -> None:
    crd = copy.deepcopy(_crd("SendingPool"))
    breakage(_version(crd)["schema"]["openAPIV3Schema"])
    violations = openapi_rules.structural_violations(crd)
    assert any(expected in v for v in violations), violations


@pytest.mark.parametrize(
    ("kind", "short", "columns"),
    [
        ("SendingPool", "sp", ["Ready", "Active IPs", "Queue", "Replicas", "Age"]),
        ("IPWarmup", "ipw", ["Phase", "Day", "Quota", "Sent today", "Pool", "Age"]),
        ("DomainAuth", "da", ["Domain", "Active selector", "Ready", "Age"]),
    ],
)
def test_names_categories_and_printer_columns(kind: str, short: str, columns: list[str]) -> None:
    crd = _crd(kind)
    names = crd["spec"]["names"]
    assert names["shortNames"] == [short]
    assert names["categories"] == ["mailfleet"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["group"] == "mailfleet.io"
    version = _version(crd)
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == columns
    assert version["subresources"]["status"] == {}


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda i: i.kind)
def test_printer_columns_point_at_fields_of_the_schema(info: kinds.KindInfo) -> None:
    schema = crds.openapi_schema(info.kind)
    for column in info.printer_columns:
        path = column.json_path.split("[")[0].lstrip(".").split(".")
        if path[0] == "metadata":
            continue
        node = schema
        for part in path:
            node = node["properties"][part]
        expected = {"date": "string"}.get(column.type, column.type)
        if column.json_path.startswith(".status.conditions"):
            expected = "array"
        assert node["type"] == expected, column


def test_scale_subresource_lets_kubectl_scale_and_an_hpa_work() -> None:
    crd = _crd("SendingPool")
    scale = _version(crd)["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    schema = crds.openapi_schema("SendingPool")["properties"]
    assert schema["spec"]["properties"]["replicas"]["type"] == "integer"
    assert schema["status"]["properties"]["replicas"]["type"] == "integer"
    assert schema["status"]["properties"]["selector"]["type"] == "string"
    for kind in ("IPWarmup", "DomainAuth"):
        assert "scale" not in _version(_crd(kind))["subresources"]


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda i: i.kind)
def test_conditions_are_a_list_map_keyed_on_type(info: kinds.KindInfo) -> None:
    conditions = crds.openapi_schema(info.kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert "pattern" in item["properties"]["reason"]


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda i: i.kind)
def test_every_field_has_a_description_for_kubectl_explain(info: kinds.KindInfo) -> None:
    schema = crds.openapi_schema(info.kind)
    missing = [
        path
        for path, node in _fields(schema["properties"]["spec"], "spec")
        if not node.get("description")
    ] + [
        path
        for path, node in _fields(schema["properties"]["status"], "status")
        if not node.get("description")
    ]
    assert missing == []


def _fields(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    if node.get("type") == "array" and node.get("items", {}).get("type") == "object":
        node = node["items"]
        path = f"{path}[]"
    for name, child in node.get("properties", {}).items():
        out += _fields(child, f"{path}.{name}")
    return out


def test_preserve_unknown_fields_is_nowhere_in_the_schemas() -> None:
    """Every field is typed; resources and tolerations included."""
    for info in kinds.KINDS:
        assert "x-kubernetes-preserve-unknown-fields" not in crds.render_yaml(crds.build_crd(info))


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("SendingPool", {}),
        (
            "SendingPool",
            {
                "egress": {"ips": [{"address": "203.0.113.10", "heloName": "mta1.example.com"}]},
                "reputation": {"warnAt": {"bounceRate": 0.02, "complaintRate": 0.001}},
                "throttling": {"rate": "10/s"},
            },
        ),
        ("IPWarmup", {"poolRef": {"name": "p"}, "schedule": {"steps": [50, 100]}, "target": 100}),
        ("DomainAuth", {"domain": "example.com", "bimi": {"logoURL": "https://e.com/l.svg"}}),
    ],
    ids=["empty pool", "partial pool", "warm-up", "domain"],
)
def test_api_server_defaults_are_the_model_defaults(kind: str, spec: dict[str, Any]) -> None:
    """What `kubectl get -o yaml` shows after defaulting is what the operator acts on."""
    schema = crds.openapi_schema(kind)
    defaulted = openapi_rules.apply_defaults(schema["properties"]["spec"], spec)
    assert openapi_rules.validate_object(schema["properties"]["spec"], defaulted) == []
    spec_model = kinds.BY_KIND[kind].spec_model
    from_models = spec_model.model_validate(spec).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    assert defaulted == from_models
