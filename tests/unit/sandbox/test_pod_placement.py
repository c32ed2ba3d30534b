"""The node agent's pure kubelet and scheduler rules: where a pod goes and with what
environment. A wrong answer here makes every sandbox scene lie about Kubernetes."""

from __future__ import annotations

from typing import Any

import pytest
from mailfleet_sandbox.container_env import (
    ContainerConfigError,
    build_env,
    expand_vars,
    image_argv,
)
from mailfleet_sandbox.pod_scheduling import NodeView, choose_node, tolerates

UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}


def _node(name: str, pods: int = 0, *, ready: bool = True, labels: dict[str, str] | None = None,
          taints: list[dict[str, str]] | None = None) -> NodeView:
    return NodeView(name=name, labels=labels or {}, taints=taints or [], ready=ready, pods=pods)


def test_pods_spread_to_the_ready_node_with_fewest_pods() -> None:
    nodes = [_node("a", 3), _node("b", 1), _node("c", 0, ready=False)]
    assert choose_node({}, nodes) == ("b", "")


def test_a_node_selector_and_an_untolerated_taint_rule_nodes_out_with_the_scheduler_text() -> None:
    nodes = [_node("a", labels={"zone": "x"}),
             _node("b", labels={"zone": "y"}, taints=[UNREACHABLE])]
    assert choose_node({"nodeSelector": {"zone": "z"}}, nodes) == (
        None, "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")
    node, why = choose_node({"nodeSelector": {"zone": "y"}}, nodes)
    assert node is None
    assert "untolerated taint {node.kubernetes.io/unreachable}" in why
    tolerating = {"nodeSelector": {"zone": "y"},
                  "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]}
    assert choose_node(tolerating, nodes) == ("b", "")


def test_a_toleration_for_another_effect_does_not_tolerate() -> None:
    assert not tolerates([{"key": UNREACHABLE["key"], "operator": "Exists",
                           "effect": "NoSchedule"}], UNREACHABLE)
    assert tolerates([{"operator": "Exists"}], UNREACHABLE)


def test_env_from_then_env_wins_and_expands_earlier_variables() -> None:
    objects: dict[tuple[str, str], dict[str, Any]] = {
        ("ConfigMap", "cfg"): {"data": {"MODE": "cm", "HOST": "h"}},
    }
    container = {"envFrom": [{"configMapRef": {"name": "cfg"}}],
                 "env": [{"name": "MODE", "value": "env"},
                         {"name": "URL", "value": "http://$(HOST):1/$$(HOST)/$(NOPE)"}]}
    env = build_env(container, {"metadata": {"namespace": "ns"}},
                    lambda kind, name: objects.get((kind, name)))
    assert env == {"MODE": "env", "HOST": "h", "URL": "http://h:1/$(HOST)/$(NOPE)"}


def test_a_missing_secret_key_is_a_container_config_error_unless_optional() -> None:
    pod = {"metadata": {"namespace": "ns"}}
    wanted = {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match='secret "s" not found'):
        build_env(wanted, pod, lambda kind, name: None)
    optional = {"env": [{"name": "K", "valueFrom": {
        "secretKeyRef": {"name": "s", "key": "k", "optional": True}}}]}
    assert build_env(optional, pod, lambda kind, name: None) == {}


def test_the_longest_image_prefix_names_the_entrypoint_and_unknown_images_have_none() -> None:
    table = {"repo/app": ["a"], "repo/app:v2": ["b"]}
    assert image_argv("repo/app:v2", table) == ["b"]
    assert image_argv("repo/app:v1", table) == ["a"]
    assert image_argv("elsewhere/thing", table) is None
    assert expand_vars("$(A)-$(B)", {"A": "1"}) == "1-$(B)"
