"""Generated files stay current: the chart's CRD templates, RBAC rules, Artifact Hub
annotations, dashboard and Argo CD patch (`make chart`), and deploy/mailfleet.yaml
(`make manifests`)."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from chart import chart_support as cs


def _relative(path: pathlib.Path) -> str:
    return str(path.relative_to(cs.ROOT))


@pytest.mark.parametrize(
    "path", sorted(cs.generate().expected_files(), key=str), ids=_relative
)
def test_generated_chart_file_is_current(path: pathlib.Path) -> None:
    expected = cs.generate().expected_files()[path]
    assert path.exists() and path.read_text(encoding="utf-8") == expected, (
        f"{_relative(path)} is stale: run `make chart`"
    )


def test_every_crd_in_crds_has_a_chart_template_and_no_other() -> None:
    sources = {yaml.safe_load(p.read_text())["spec"]["names"]["plural"]
               for p in (cs.ROOT / "crds").glob("*.yaml")}
    templates = {p.stem for p in (cs.CHART / "templates" / "crds").glob("*.yaml")}
    assert templates == sources


def test_plain_manifests_are_current() -> None:
    manifests = cs.generate().manifests()
    assert cs.generate().MANIFESTS.read_text(encoding="utf-8") == manifests, (
        "deploy/mailfleet.yaml is stale: run `make manifests`"
    )


def test_plain_manifests_create_the_namespace_and_crds_before_the_operator() -> None:
    kinds = [d["kind"] for d in yaml.safe_load_all(cs.generate().MANIFESTS.read_text()) if d]
    assert kinds[0] == "Namespace"
    assert kinds.index("Deployment") > max(
        i for i, k in enumerate(kinds) if k == "CustomResourceDefinition")
    assert kinds.count("CustomResourceDefinition") == 3
