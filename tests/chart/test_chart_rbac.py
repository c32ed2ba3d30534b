"""The chart's RBAC grants exactly what the operator's code uses.

Two ends are checked:
1. The chart grants exactly the operator's declared table (mailfleet_operator.kube.resources),
   per scope and HA mode. The operator's client refuses any call the table does not declare,
   so nothing the code does at run time can need more.
2. The table declares no more than the code uses: the uses are derived statically from the
   operator's source — every `client.<method>(resources.X, ...)` call (a resource passed
   through one helper parameter is followed to the helper's callers), the verbs each client
   method checks (read from kube/client.py), and what kopf itself does for the handlers the
   operator registers (watch-list and patch of served kinds, list/watch of indexed kinds,
   events, namespace and CRD scanning, the peering kinds in HA mode).
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from typing import Any

import pytest
from chart import chart_support as cs
from mailfleet_operator.kube import resources

OPERATOR = cs.ROOT / "operator" / "mailfleet_operator"
CLIENT_METHODS = ("get", "list", "create", "patch", "patch_status", "delete", "apply",
                  "apply_child", "post_event")
Use = tuple[str, str, str]  # (api group, resource[/subresource], verb)


def _attr_chain(node: ast.AST) -> list[str]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]


def client_method_verbs() -> dict[str, set[tuple[str | None, str, str | None]]]:
    """method -> {(fixed resource name or None for the `resource` argument, verb, sub)}."""
    tree = ast.parse((OPERATOR / "kube" / "client.py").read_text())
    client = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Client")
    direct: dict[str, set[tuple[str | None, str, str | None]]] = defaultdict(set)
    calls: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
    for method in client.body:
        if not isinstance(method, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        for node in ast.walk(method):
            if not isinstance(node, ast.Call):
                continue
            chain = _attr_chain(node.func)
            if chain == ["_check"]:
                verb = node.args[1]
                sub = node.args[2]
                assert isinstance(verb, ast.Constant) and isinstance(sub, ast.Constant)
                direct[method.name].add((None, str(verb.value), sub.value))
            elif len(chain) == 2 and chain[0] == "self" and chain[1] in CLIENT_METHODS:
                first = node.args[0] if node.args else None
                fixed = _attr_chain(first)[-1] if isinstance(first, ast.Attribute) else None
                calls[method.name].add((chain[1], fixed))
    resolved: dict[str, set[tuple[str | None, str, str | None]]] = {}

    def resolve(name: str) -> set[tuple[str | None, str, str | None]]:
        if name not in resolved:
            found = set(direct[name])
            for callee, fixed in calls[name]:
                for resource, verb, sub in resolve(callee):
                    found.add((fixed or resource, verb, sub))
            resolved[name] = found
        return resolved[name]

    return {name: resolve(name) for name in CLIENT_METHODS}


def _resource_of(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Attribute) and _attr_chain(node)[:1] == ["resources"]:
        return node.attr
    return None


def code_uses() -> set[Use]:
    """(group, plural[/sub], verb) of every client call in the operator package."""
    verbs = client_method_verbs()
    by_name = {r_name: getattr(resources, r_name) for r_name in dir(resources)
               if isinstance(getattr(resources, r_name), resources.Resource)}
    uses: set[Use] = set()
    # function name -> {param name -> {(method)}} for resources passed through a parameter.
    forwarded: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    params: dict[str, list[str]] = {}
    modules = [p for p in OPERATOR.rglob("*.py") if p.parts[-2:] != ("kube", "client.py")]
    trees = {p: ast.parse(p.read_text()) for p in modules}
    unresolved = []

    def add(resource_name: str, method: str) -> None:
        for fixed, verb, sub in verbs[method]:
            resource = by_name[fixed or resource_name]
            plural = f"{resource.plural}/{sub}" if sub else resource.plural
            uses.add((resource.group, plural, verb))

    for path, tree in trees.items():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params[func.name] = [a.arg for a in func.args.args + func.args.kwonlyargs]
            # Locals chosen among resources (e.g. a kind -> resource dict): all candidates.
            local: dict[str, set[str]] = defaultdict(set)
            for node in ast.walk(func):
                if isinstance(node, ast.Assign):
                    found = {n for n in map(_resource_of, ast.walk(node.value)) if n}
                    for target in node.targets:
                        if isinstance(target, ast.Name) and found:
                            local[target.id] |= found
            for node in ast.walk(func):
                if not isinstance(node, ast.Call):
                    continue
                chain = _attr_chain(node.func)
                if len(chain) < 2 or chain[-2] != "client" or chain[-1] not in CLIENT_METHODS:
                    continue
                method = chain[-1]
                if method == "post_event":
                    add("EVENTS", method)
                    continue
                first = node.args[0] if node.args else None
                name = _resource_of(first)
                if name is not None:
                    add(name, method)
                elif isinstance(first, ast.Name) and first.id in local:
                    for candidate in local[first.id]:
                        add(candidate, method)
                elif isinstance(first, ast.Name) and first.id in params[func.name]:
                    forwarded[func.name][first.id].add(method)
                else:
                    unresolved.append(f"{path.name}:{node.lineno}")
    # Follow resources passed to helpers through a parameter (one level).
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            chain = _attr_chain(node.func)
            if not chain or chain[-1] not in forwarded:
                continue
            helper = chain[-1]
            for param, methods in forwarded[helper].items():
                index = params[helper].index(param)
                argument = next((k.value for k in node.keywords if k.arg == param), None)
                if argument is None and index < len(node.args):
                    argument = node.args[index]
                name = _resource_of(argument)
                if name is None:
                    unresolved.append(f"{path.name}:{node.lineno} ({helper})")
                    continue
                for method in methods:
                    add(name, method)
    assert not unresolved, f"client calls whose resource is not statically known: {unresolved}"
    return uses


def kopf_uses(*, ha: bool, cluster_wide: bool) -> set[Use]:
    """What kopf does on the operator's behalf for the handlers it registers."""
    uses: set[Use] = set()
    for path in (OPERATOR / "handlers").glob("*.py"):
        tree = ast.parse(path.read_text())
        module = importlib.import_module(f"mailfleet_operator.handlers.{path.stem}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                if not isinstance(decorator, ast.Call):
                    continue
                chain = _attr_chain(decorator.func)
                lifecycle = chain[1:3] in (["on", "startup"], ["on", "cleanup"],
                                           ["on", "login"], ["on", "probe"])
                if chain[:1] != ["kopf"] or lifecycle:
                    continue
                target = decorator.args[0] if decorator.args else None
                if isinstance(target, ast.Starred):
                    group, _version, plural = getattr(module, _attr_chain(target.value)[-1])
                    # served kinds: kopf watch-lists them and patches progress/finalizers
                    uses |= {(group, plural, "list"), (group, plural, "watch"),
                             (group, plural, "patch")}
                elif len(decorator.args) == 3 and all(
                    isinstance(a, ast.Constant) for a in decorator.args
                ):
                    # an API-group kind by (group, version, plural): list + watch
                    group, plural = str(decorator.args[0].value), str(decorator.args[2].value)  # type: ignore[attr-defined]
                    uses |= {(group, plural, "list"), (group, plural, "watch")}
                elif isinstance(target, ast.Constant):
                    # core kinds named by plural (indexes, watchers): list + watch only
                    uses |= {("", str(target.value), "list"), ("", str(target.value), "watch")}
    uses |= {("", "events", "create"),  # kopf posts an event per handler outcome
             ("", "namespaces", "list"), ("", "namespaces", "watch"),  # namespace scanning
             ("apiextensions.k8s.io", "customresourcedefinitions", "list"),  # resource scanning
             ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
    if ha:
        plural = "clusterkopfpeerings" if cluster_wide else "kopfpeerings"
        uses |= {("kopf.dev", plural, v) for v in ("list", "watch", "patch")}
    return uses


def granted(values: dict[str, Any]) -> set[Use]:
    objs = cs.objects(values)
    rules = [r for kind in ("ClusterRole", "Role") for o in cs.find(objs, kind)
             for r in o["rules"]]
    return {(g, res, verb) for r in rules for g in r["apiGroups"] for res in r["resources"]
            for verb in r["verbs"]}


def declared(*, ha: bool, cluster_wide: bool) -> set[Use]:
    peering = {"clusterkopfpeerings" if cluster_wide else "kopfpeerings"} if ha else set()
    return {
        (rule.api_groups[0], rule.resources[0], verb)
        for rule in resources.rbac_rules()
        for verb in rule.verbs
        if rule.api_groups[0] != "kopf.dev" or rule.resources[0] in peering
    }


MODES = {
    "cluster-wide": ({}, False, True),
    "cluster-wide-ha": ({"ha": {"enabled": True}}, True, True),
    "namespaced": ({"watchNamespaces": ["mail"]}, False, False),
    "namespaced-ha": ({"watchNamespaces": ["mail"], "ha": {"enabled": True}}, True, False),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_chart_grants_exactly_the_declared_table(mode: str) -> None:
    values, ha, cluster_wide = MODES[mode]
    assert granted(values) == declared(ha=ha, cluster_wide=cluster_wide)


def test_no_rbac_objects_when_rbac_create_is_off() -> None:
    objs = cs.objects({"rbac": {"create": False}})
    assert not [o for o in objs if o["apiVersion"].startswith("rbac.authorization.k8s.io")]


def test_every_client_call_is_granted() -> None:
    uses = code_uses()
    assert len(uses) > 10
    for values, ha, cluster_wide in MODES.values():
        assert uses - granted(values) == set(), "the operator calls what the chart denies"
        del ha, cluster_wide


@pytest.mark.parametrize("mode", list(MODES))
def test_kopf_needs_are_granted(mode: str) -> None:
    values, ha, cluster_wide = MODES[mode]
    missing = kopf_uses(ha=ha, cluster_wide=cluster_wide) - granted(values)
    assert missing == set()


DECLARED_AHEAD: set[Use] = set()
"""Verbs declared for a reconciler being written (none now). Remove an entry once the code
uses it: `test_declared_ahead_is_not_yet_used` says which."""


def test_the_table_declares_nothing_the_code_does_not_use() -> None:
    """Least privilege: every declared verb is used by a client call or by kopf."""
    used = code_uses() | kopf_uses(ha=True, cluster_wide=True) | kopf_uses(
        ha=True, cluster_wide=False)
    unused = declared(ha=True, cluster_wide=True) | declared(ha=True, cluster_wide=False)
    unused -= used | DECLARED_AHEAD
    assert unused == set(), (
        "declared in mailfleet_operator/kube/resources.py but never used: "
        + ", ".join(f"{verb} {group or 'core'}/{res}" for group, res, verb in sorted(unused))
    )


def test_declared_ahead_is_not_yet_used() -> None:
    """The allowance above only covers what no code uses yet, so it cannot outlive the wiring:
    once a verb is used, its entry must go (and the least-privilege check covers it)."""
    used = code_uses() | kopf_uses(ha=True, cluster_wide=True) | kopf_uses(
        ha=True, cluster_wide=False)
    assert DECLARED_AHEAD & used == set(), "now used: remove from DECLARED_AHEAD"
    assert DECLARED_AHEAD <= declared(ha=False, cluster_wide=True)


def test_derivation_sees_known_calls() -> None:
    """Guard against the scan silently finding nothing: calls we know exist are found."""
    uses = code_uses()
    assert ("", "secrets", "create") in uses  # DKIM private keys
    assert ("mailfleet.io", "sendingpools/status", "patch") in uses
    assert ("", "events", "create") in uses
    assert ("apps", "statefulsets", "get") in uses  # through the child-apply helper

