"""The OpenAPI document is the contract of the sender's HTTP API: it lists every route the
sender registers (and nothing else), the copy in docs/ is the shipped one, and the schemas of the
`wire` models are the ones the models generate now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import yaml
from jsonschema.validators import Draft202012Validator
from mailfleet_sender import http_api, openapi, suppression

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "sender-openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _document() -> dict[str, Any]:
    document = yaml.safe_load(openapi.text())
    assert isinstance(document, dict)
    return document


def _registered_routes() -> set[tuple[str, str]]:
    api = http_api.Api(cast(Any, None))
    routes = [*api.submission_routes(), *api.admin_routes(), *api.public_routes(),
              *suppression.suppression_routes(cast(Any, None), lambda request: True)]
    found = set()
    for route in routes:
        assert isinstance(route, http_api.web.RouteDef)
        found.add((route.method.lower(), route.path))
    return found


def test_the_docs_copy_is_the_shipped_document() -> None:
    assert DOCS.read_text(encoding="utf-8") == openapi.text(), (
        "docs/sender-openapi.yaml differs from the package's openapi.yaml: "
        "run `python -m mailfleet_sender.openapi --write`"
    )


def test_the_served_json_is_the_yaml_document() -> None:
    assert json.loads(openapi.document_json()) == _document()


def test_every_registered_route_is_documented_and_nothing_else() -> None:
    documented = {
        (method, path)
        for path, item in _document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert documented == _registered_routes()


def test_the_wire_schemas_are_the_models_schemas() -> None:
    document = _document()
    assert openapi.with_wire_schemas(json.loads(json.dumps(document))) == document, (
        "a wire model changed: run `python -m mailfleet_sender.openapi --write`"
    )


def test_every_schema_is_valid_json_schema_and_every_ref_resolves() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1.")
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: Any = document
        for step in ref.removeprefix("#/").split("/"):
            node = node[step]
        assert isinstance(node, dict), ref


def test_every_operation_names_its_listener_and_its_credential() -> None:
    document = _document()
    schemes = set(document["components"]["securitySchemes"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            assert len(operation["tags"]) == 1, (method, path)
            assert operation["tags"][0] in {"submission", "admin", "public"}, (method, path)
            assert "security" in operation, (method, path)
            for requirement in operation["security"]:
                assert set(requirement) <= schemes, (method, path)
            if operation["security"]:
                assert "401" in operation["responses"], (method, path)
