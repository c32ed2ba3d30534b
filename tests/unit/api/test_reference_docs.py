"""docs/api-reference.md is what the models say, and documents every spec field."""

from __future__ import annotations

import pathlib

import mailfleet_cli
import pytest
from mailfleet_operator.api import crds, kinds, reference

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "api-reference.md"


def test_committed_api_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == reference.render_markdown(), (
        "docs/api-reference.md is stale: run `make docs` and commit the result"
    )


def test_reference_lists_every_top_level_spec_field_with_its_description() -> None:
    text = reference.render_markdown()
    for info in kinds.KINDS:
        spec = crds.openapi_schema(info.kind)["properties"]["spec"]
        for name, node in spec["properties"].items():
            assert f"`spec.{name}`" in text
            assert node["description"] in text


def test_reference_names_formats_instead_of_regexes() -> None:
    text = reference.render_markdown()
    assert "`spec.throttling.rate` | string |" in text
    assert "rate (`100/s`" in text
    assert "matches `^" not in text


def test_mailfleet_docs_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert mailfleet_cli.main(["docs"]) == 0
    assert capsys.readouterr().out == DOC.read_text(encoding="utf-8")


def test_mailfleet_crds_is_wired_into_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert mailfleet_cli.main(["crds"]) == 0
    assert capsys.readouterr().out == crds.render_all()
