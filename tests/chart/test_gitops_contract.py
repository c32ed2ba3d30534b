"""What Argo CD (or Flux) relies on from the operator: it never writes the spec of a user's
object (that would fight the Git copy: endless OutOfSync and self-heal loops), and its
children never carry a GitOps tool's tracking label or annotation (Argo CD would adopt or
prune them as its own)."""

from __future__ import annotations

import ast
from typing import Any

import yaml
from chart import chart_support as cs
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children

OPERATOR = cs.ROOT / "operator" / "mailfleet_operator"
USER_KINDS = {"DOMAIN_AUTHS", "SENDING_POOLS", "IP_WARMUPS"}
TRACKING = {"argocd.argoproj.io/instance", "argocd.argoproj.io/tracking-id",
            "kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name"}


def _literal_keys(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Dict):
        return {k.value for k in node.keys if isinstance(k, ast.Constant)}
    raise AssertionError(f"line {node.lineno}: patch body is not a literal, cannot check it")


def test_operator_patches_user_objects_only_in_metadata() -> None:
    """Status goes through the status subresource (patch_status); plain patches of the user's
    kinds may touch metadata (annotations) only, never spec."""
    checked = 0
    for path in OPERATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("patch", "create", "apply_child")):
                continue
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Attribute) and first.attr in USER_KINDS):
                continue
            assert node.func.attr == "patch", f"{path.name}:{node.lineno} creates a user kind"
            body = next(k.value for k in node.keywords if k.arg == "patch")
            assert _literal_keys(body) == {"metadata"}, f"{path.name}:{node.lineno}"
            checked += 1
    assert checked >= 1


def _pool() -> tuple[sp.SendingPoolSpec, Any]:
    sample = yaml.safe_load((cs.ROOT / "samples" / "02-sendingpool-marketing.yaml").read_text())
    spec = sp.SendingPoolSpec.model_validate(sample["spec"])
    pool = children.PoolObjects(name="marketing", namespace="mail", uid="u-1", replicas=4)
    return spec, pool


def test_children_carry_no_gitops_tracking_metadata() -> None:
    spec, pool = _pool()
    objs = [*children.build_children(spec, pool, config_yaml="{}"),
            children.build_admin_secret(pool, token="t")]
    for obj in objs:
        metas = [obj["metadata"]]
        if obj["kind"] == "StatefulSet":
            metas.append(obj["spec"]["template"]["metadata"])
        for meta in metas:
            keys = set(meta.get("labels") or {}) | set(meta.get("annotations") or {})
            assert not keys & TRACKING, (obj["kind"], keys & TRACKING)
        # Children are owned by the pool: Argo CD shows them under it, never as top-level.
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "SendingPool"


def test_gitops_doc_examples_are_valid_objects() -> None:
    """The mailfleet objects shown in docs/gitops.md are accepted by the CRD schemas."""
    from unit.api import openapi_rules

    text = (cs.ROOT / "docs" / "gitops.md").read_text()
    blocks = [b for b in text.split("```yaml\n")[1:]]
    schemas = {
        o["spec"]["names"]["kind"]: o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for o in cs.find(cs.objects(), "CustomResourceDefinition")
    }
    seen = set()
    for block in blocks:
        for obj in yaml.safe_load_all(block.split("```")[0]):
            if obj and obj.get("apiVersion") == "mailfleet.io/v1alpha1":
                assert openapi_rules.validate_object(schemas[obj["kind"]], obj) == [], obj
                seen.add(obj["kind"])
    assert seen == set(schemas)
