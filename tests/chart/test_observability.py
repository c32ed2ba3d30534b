"""Alerts, scrape configs and the Grafana dashboard: expressions parse, the metrics they read
exist in the operator's and the sender's code, every alert has a runbook, and the dashboard
is exactly what Grafana's schema types (grafana-foundation-sdk) can represent."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import promql_parser
import pytest
from chart import chart_support as cs
from grafana_foundation_sdk.cog import encoder
from grafana_foundation_sdk.models import dashboard as grafana

_CHILDREN = ("lhs", "rhs", "expr", "args", "param", "vector_selector")


def metric_names(expr: str) -> set[str]:
    """Metric names the expression selects, from promql-parser's syntax tree."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list | tuple):
            for item in node:
                walk(item)
            return
        if type(node).__name__ == "VectorSelector" and node.name:
            names.add(node.name)
        for attribute in _CHILDREN:
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)

    walk(promql_parser.parse(expr))
    return names

# Metrics the alerts and dashboard read that no code exports yet, with who would add them.
# The test below fails as soon as one appears, so this list cannot go stale silently.
PENDING_METRICS: dict[str, str] = {
}


def _names(registry: Any) -> set[str]:
    return set(registry._names_to_collectors)  # every exposed name, incl. _total/_bucket


def known_metrics() -> set[str]:
    from mailfleet_operator import metrics as operator_metrics
    from mailfleet_sender import metrics as sender_metrics

    names = _names(operator_metrics.REGISTRY) | _names(sender_metrics.Metrics().registry)
    names |= set(sender_metrics.KPI_METRICS)  # built at scrape time from the KPI book
    # Gauges the sender builds at scrape time: metrics.gauge("<name>", ...).
    sender_src = cs.ROOT / "sender-image" / "mailfleet_sender"
    for path in sender_src.glob("*.py"):
        text = path.read_text()
        for name in re.findall(r'\bgauge\(\s*"([a-z_]+)"', text):
            names.add(f"{sender_metrics.PREFIX}_{name}")
        # Counters a component registers on the pod's registry itself (transport security,
        # TLS-RPT): Counter(f"{metrics.PREFIX}_<name>", ...).
        for name in re.findall(r'Counter\(\s*f"\{metrics\.PREFIX\}_([a-z_]+)"', text):
            full = f"{sender_metrics.PREFIX}_{name}"
            names.update({full, f"{full}_total"})
    return names


def alert_rules() -> list[dict[str, Any]]:
    rule = cs.one(cs.objects(cs.ALL_MONITORING), "PrometheusRule")
    rules: list[dict[str, Any]] = rule["spec"]["groups"][0]["rules"]
    return rules


def dashboard() -> dict[str, Any]:
    configmap = cs.one(cs.objects(cs.ALL_MONITORING), "ConfigMap")
    data: dict[str, Any] = json.loads(configmap["data"]["mailfleet.json"])
    return data


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard()["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana variables replaced the way Grafana would before sending the query."""
    return (expr.replace("$__rate_interval", "5m").replace("$__range", "6h")
            .replace("$namespace", ".*").replace("$pool", ".*").replace("$campaign", ".*"))


REQUIRED_ALERTS = {
    "MailfleetQueueOldestMessageOld", "MailfleetBounceRateHigh", "MailfleetBounceRateCritical",
    "MailfleetComplaintRateHigh", "MailfleetComplaintRateCritical", "MailfleetIPBlocklisted",
    "MailfleetDKIMKeyNotVerified", "MailfleetWarmupHeld", "MailfleetFailover",
    "MailfleetFailoverFlapping", "MailfleetOperatorReconcileErrors", "MailfleetOperatorDown",
}


def test_the_rule_has_every_alert_the_runbooks_promise() -> None:
    assert {r["alert"] for r in alert_rules()} == REQUIRED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_expression_parses_and_has_runbook_text(rule: dict[str, Any]) -> None:
    promql_parser.parse(rule["expr"])
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    assert rule["labels"]["team"] == "mail"  # alertLabels reach every alert
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = rule["alert"].lower()
    assert annotations["runbook_url"].endswith("/docs/observability.md#" + anchor)
    runbook = (cs.ROOT / "docs" / "observability.md").read_text()
    section = re.search(rf"^### {rule['alert']}\n(.*?)(?=^#|\Z)", runbook, re.M | re.S)
    assert section, f"docs/observability.md has no runbook section for {rule['alert']}"
    assert len(section.group(1).split()) > 30, "a runbook says what to check and what to do"


def test_thresholds_reach_the_expressions_and_disabled_alerts_go() -> None:
    values = {"prometheusRule": {"enabled": True, "disabled": ["MailfleetFailover"],
                                 "thresholds": {"bounceRateCritical": 0.2}}}
    rule = cs.one(cs.objects(values), "PrometheusRule")
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert "MailfleetFailover" not in rules
    assert ") > 0.2 and on" in rules["MailfleetBounceRateCritical"]["expr"]


def test_every_metric_read_by_alerts_and_dashboard_exists_or_is_known_pending() -> None:
    used = set()
    for expr in [r["expr"] for r in alert_rules()] + [_as_promql(e) for e in dashboard_exprs()]:
        used |= {n for n in metric_names(expr) if n != "up"}
    assert len(used) >= 15
    known = known_metrics()
    missing = used - known
    assert missing == set(PENDING_METRICS), (
        f"unknown metrics: {sorted(missing - set(PENDING_METRICS))}; "
        f"now exported, drop from PENDING_METRICS: {sorted(set(PENDING_METRICS) - missing)}"
    )


def test_dashboard_queries_parse() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        promql_parser.parse(_as_promql(expr))


def test_dashboard_is_exactly_representable_by_grafanas_schema_types() -> None:
    data = dashboard()
    model = grafana.Dashboard.from_json(data)
    assert json.loads(json.dumps(model, cls=encoder.JSONEncoder)) == data


def test_dashboard_layout_ids_and_required_views() -> None:
    data = dashboard()
    panels = data["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    titles = " | ".join(p["title"] for p in panels).lower()
    for view in ("by result", "by provider", "queue", "warm-up progress per ip", "failovers",
                 "dns verification", "campaigns", "open rate by campaign",
                 "time to deliver by campaign"):
        assert view in titles, view
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "namespace", "pool", "campaign"}


# The parts of the Prometheus Operator's monitoring.coreos.com/v1 schemas that the chart
# uses (field names and types from its API reference). No fields outside these are allowed.
_ENDPOINT = {
    "type": "object", "additionalProperties": False, "required": ["port"],
    "properties": {
        "port": {"type": "string"}, "path": {"type": "string"},
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                     "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "scrapeTimeout": {"type": "string"},
        "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {"any": {"type": "boolean"},
                   "matchNames": {"type": "array", "items": {"type": "string"}}},
}
_SELECTOR = {"type": "object", "required": ["matchLabels"],
             "properties": {"matchLabels": {"type": "object"}}}
MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {"namespaceSelector": _NAMESPACE_SELECTOR, "selector": _SELECTOR,
                           "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}},
        }},
    },
    "PodMonitor": {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {"namespaceSelector": _NAMESPACE_SELECTOR, "selector": _SELECTOR,
                           "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                           "podMetricsEndpoints": {"type": "array", "minItems": 1,
                                                   "items": _ENDPOINT}},
        }},
    },
    "PrometheusRule": {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {"name": {"type": "string"}, "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["alert", "expr"],
                    "properties": {
                        "alert": {"type": "string"}, "expr": {"type": "string"},
                        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"},
                        "labels": {"type": "object",
                                   "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object",
                                        "additionalProperties": {"type": "string"}},
                    }}}},
            }}},
        }},
    },
}


@pytest.mark.parametrize("kind", sorted(MONITORING_SCHEMAS))
def test_monitoring_objects_match_the_prometheus_operator_api(kind: str) -> None:
    for values in (cs.ALL_MONITORING, {**cs.ALL_MONITORING, "watchNamespaces": ["mail"]}):
        obj = cs.one(cs.objects(values), kind)
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        jsonschema.validate(obj, MONITORING_SCHEMAS[kind])
