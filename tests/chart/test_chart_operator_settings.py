"""Every operator setting can be set from values.yaml, reaches the operator as the variable
its settings read, and the sandbox-only time settings stay off unless asked for."""

from __future__ import annotations

from typing import Any

import yaml
from chart import chart_support as cs

# Settings the chart sets from other values, or that have no meaning in a pod.
NOT_UNDER_OPERATOR = {
    "namespaces": "watchNamespaces",
    "all_namespaces": "watchNamespaces (empty: cluster-wide)",
    "standalone": "ha.enabled",
    "peering_name": "ha.peeringName",
    "priority": "ha: the pod's ordinal",
    "sender_image": "senderImage",
    "kubeconfig": "in-cluster: the service account",
    "http_host": "a pod listens on all its addresses",
    "operator_namespace": "the pod's own namespace ($POD_NAMESPACE)",
    "operator_pod_labels": "the chart's operator selector labels",
}

EVERY_SETTING: dict[str, Any] = {
    "logLevel": "DEBUG", "logFormat": "text", "httpPort": 10000,
    "dnsNameservers": ["10.0.0.10:53", "10.0.0.11"], "dnsTimeout": 1.5, "stepDelay": 0.5,
    "dnsAuthoritativePort": 5353,
    "stallChecks": 5, "errorDelay": 7, "senderNameservers": ["10.0.0.12"],
    "senderSmtpPort": 2525, "senderTlsCaFile": "/etc/mailfleet/ca.pem",
    "senderMtaStsPort": 8443, "senderDaneResolver": "10.0.0.53:5353", "leaseDuration": 20,
    "leaseRenewInterval": 4,
    "leaseClockSkew": 2.5, "podAdminTimeout": 3, "statsInterval": 15, "drainTimeout": 1000000,
    "autoscaleStabilization": 120, "warmupDaySeconds": 60, "timeScale": 10,
    "warmupQuotaChunk": 25, "leaderElection": False, "leaderElectionNamespace": "ops",
    "leaderLeaseName": "leader", "leaderLeaseDuration": 30, "leaderRenewDeadline": 20,
    "leaderRetryPeriod": 5, "refusedEgressNetworks": ["127.0.0.0/8", "fe80::/10"],
    "webhookLoopbackHttp": True,
}


def _settings_field(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def _operator_env(values: dict[str, Any]) -> dict[str, Any]:
    objs = cs.objects(values)
    workload = (cs.find(objs, "Deployment") + cs.find(objs, "StatefulSet"))[0]
    env: dict[str, Any] = cs.env_of(workload["spec"]["template"]["spec"]["containers"][0])
    return env


def test_every_operator_setting_is_a_documented_value_or_set_another_way() -> None:
    from mailfleet_operator import settings

    values = yaml.safe_load((cs.CHART / "values.yaml").read_text())["operator"]
    exposed = {_settings_field(k) for k in values if k != "extraEnv"}
    assert exposed <= set(settings.Settings.model_fields)
    assert set(settings.Settings.model_fields) - exposed == set(NOT_UNDER_OPERATOR)
    assert set(EVERY_SETTING) == set(values) - {"extraEnv"}


def test_values_reach_the_operator_as_the_settings_they_name() -> None:
    from mailfleet_operator import settings

    env = _operator_env({"operator": EVERY_SETTING})
    static = {k: v for k, v in env.items() if isinstance(v, str) and k != "POD_ID"}
    parsed = settings.Settings.from_env(static)
    for key, value in EVERY_SETTING.items():
        got = getattr(parsed, _settings_field(key))
        assert got == (tuple(value) if isinstance(value, list) else value), key


def test_the_operator_pods_labels_reach_the_pools_network_policies() -> None:
    """The chart names its own pods' selector labels, so a pool's NetworkPolicy lets exactly
    this operator in to the senders' admin port."""
    from mailfleet_operator import settings

    env = _operator_env({})
    parsed = settings.Settings.from_env(
        {k: v for k, v in env.items() if isinstance(v, str) and k != "POD_ID"})
    labels = dict(item.split("=", 1) for item in parsed.operator_pod_labels)
    assert labels["app.kubernetes.io/component"] == "operator"
    assert {"app.kubernetes.io/name", "app.kubernetes.io/instance"} <= set(labels)


def test_production_defaults_never_scale_time_and_extra_env_wins() -> None:
    env = _operator_env({})
    assert "MAILFLEET_OPERATOR_WARMUP_DAY_SECONDS" not in env
    assert "MAILFLEET_OPERATOR_TIME_SCALE" not in env
    assert "MAILFLEET_OPERATOR_SENDER_SMTP_PORT" not in env
    assert "MAILFLEET_OPERATOR_DNS_NAMESERVERS" not in env  # empty list: not passed
    assert env["MAILFLEET_OPERATOR_LEASE_CLOCK_SKEW"] == "0.5"

    extra = [{"name": "MAILFLEET_OPERATOR_ERROR_DELAY", "value": "5"}]
    objs = cs.objects({"operator": {"extraEnv": extra}})
    container = cs.one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names.count("MAILFLEET_OPERATOR_ERROR_DELAY") == 1
    assert cs.env_of(container)["MAILFLEET_OPERATOR_ERROR_DELAY"] == "5"
