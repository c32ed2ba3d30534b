"""The contract of the sender's HTTP API: the OpenAPI 3.1 document shipped with the package
(`openapi.yaml`, the same file as `docs/sender-openapi.yaml`), served at `GET /openapi.json`.

One source: the paths and the non-`wire` schemas are written in the YAML; the schemas of the
`wire` models (and of the TLS-RPT report `POST /v1/tlsrpt` reads) are generated from those
models (`wire_schemas`) and written into the YAML by `python -m mailfleet_sender.openapi
--write` (tests fail when they differ), so a field added to a model cannot go missing from the
document.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from mailfleet_sender import tlsrpt_inbound, wire

REQUESTS: tuple[type[BaseModel], ...] = (
    wire.SubmitRequest, wire.Assignment, wire.DrainRequest, tlsrpt_inbound.TLSRPTReport,
)
RESPONSES: tuple[type[BaseModel], ...] = (
    wire.SubmitResponse, wire.ErrorResponse, wire.Stats, wire.AssignmentStatus,
    wire.DrainStatus, wire.TLSReportReceipt,
)
REF = "#/components/schemas/{model}"


def text() -> str:
    """The document as shipped (YAML)."""
    return importlib.resources.files(__package__).joinpath("openapi.yaml").read_text("utf-8")


@functools.cache
def document_json() -> bytes:
    """The document as JSON bytes (parsed once per process)."""
    return json.dumps(yaml.safe_load(text()), separators=(",", ":")).encode()


def wire_schemas() -> dict[str, Any]:
    """JSON Schemas (2020-12, as OpenAPI 3.1 uses) of the `wire` request and response models,
    by model name, `$ref`s pointing into `components.schemas`."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in REQUESTS),
        *((model, "serialization") for model in RESPONSES),
    ]
    _, schema = models_json_schema(pairs, by_alias=True, ref_template=REF)
    definitions: dict[str, Any] = schema["$defs"]
    return definitions


def with_wire_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with its `wire` schemas replaced by the generated ones."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(wire_schemas())
    return document


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the YAML reads like the prose it holds."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the `wire` schemas in the package's YAML and copy it to `docs/`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the YAML files")
    parser.add_argument("--docs", default="docs/sender-openapi.yaml")
    args = parser.parse_args(argv)
    out = dump(with_wire_schemas(yaml.safe_load(text())))
    if not args.write:
        print(out, end="")
        return 0
    shipped = Path(__file__).with_name("openapi.yaml")
    shipped.write_text(out, encoding="utf-8")
    Path(args.docs).write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
