"""The specs refused at the door (issue 15): each case mutates a sample and names the path and
message both pydantic and kube-apiserver (CEL `x-kubernetes-validations`) refuse it with.

Data only: tests/unit/api/test_door_rules.py runs the cases through the models,
tests/integration/kube/test_crd_admission.py through `kubectl apply` against kube-apiserver.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any

import yaml

SAMPLES = pathlib.Path(__file__).resolve().parents[3] / "samples"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str
    changes: dict[str, Any]  # dotted path ("spec.egress.ips.0.address") -> new value
    path: str  # where the error is reported, as "spec.egress.ips[0].address"
    message: str

    def object(self) -> dict[str, Any]:
        obj = sample(self.kind)
        for dotted, value in self.changes.items():
            set_path(obj, dotted, value)
        return obj


def sample(kind: str) -> dict[str, Any]:
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc["kind"] == kind:
                return copy.deepcopy(doc)
    raise LookupError(kind)


def set_path(obj: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = obj
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


AT_LEAST = "must be at least"
WEBHOOK_URL_MESSAGE = "must be an https:// URL (plain http:// only to a 127.0.0.0/8 address"


def webhook(**fields: Any) -> dict[str, Any]:
    """A spec.events.webhooks[] entry the door accepts, with `fields` changed."""
    return {"name": "crm", "url": "https://hooks.example.com/mailfleet",
            "signingKeySecretRef": {"name": "crm-webhook"}, **fields}

TWELVE_INCLUDES = [f"_spf{n}.example.net" for n in range(11)]

CASES = [
    Case("relay mode without a relay", "SendingPool", {"spec.egress.mode": "relay"},
         "spec.egress", "egress.mode is relay but egress.relay is missing: set relay.host"),
    Case("an IP restricted to a class the pool does not have", "SendingPool",
         {"spec.egress.ips.2.classes": ["newsletters"]}, "spec",
         "egress.ips[].classes names a class the pool does not have in classes"),
    Case("autoscaling with minReplicas above maxReplicas", "SendingPool",
         {"spec.autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "spec.autoscaling",
         "minReplicas must not exceed maxReplicas"),
    Case("a warning bounce rate above the pause rate", "SendingPool",
         {"spec.reputation": {"warnAt": {"bounceRate": 0.2, "complaintRate": 0.001}}},
         "spec.reputation", "warnAt.bounceRate must not exceed pauseAt.bounceRate"),
    Case("a warning complaint rate above the pause rate", "SendingPool",
         {"spec.reputation": {"warnAt": {"bounceRate": 0.05, "complaintRate": 0.01}}},
         "spec.reputation", "warnAt.complaintRate must not exceed pauseAt.complaintRate"),
    Case("an unknown time zone", "IPWarmup", {"spec.timezone": "Mars/Olympus_Mons"},
         "spec.timezone", "unknown time zone: expected an IANA name like UTC or Europe/Paris"),
    Case("a schedule starting above its target", "IPWarmup", {"spec.target": 100}, "spec",
         "the schedule starts above the target: day 1's quota must not exceed target"),
    Case("steps starting above the target", "IPWarmup",
         {"spec.schedule": {"steps": [5000, 10000]}, "spec.target": 1000}, "spec",
         "the schedule starts above the target: day 1's quota must not exceed target"),
    Case("two schedules at once", "IPWarmup", {"spec.schedule.steps": [500, 1000]},
         "spec.schedule",
         "set exactly one of schedule.linear, schedule.exponential or schedule.steps"),
    Case("decreasing steps", "IPWarmup", {"spec.schedule": {"steps": [500, 1000, 800]}},
         "spec.schedule", "schedule.steps must not decrease"),
    Case("a duplicate DMARC rua", "DomainAuth",
         {"spec.dmarc.rua": ["mailto:dmarc@example.com", "mailto:dmarc@example.com"]},
         "spec.dmarc.rua", "duplicate rua URI: each must appear once"),
    Case("0s for failover.unhealthyAfter", "SendingPool",
         {"spec.failover": {"unhealthyAfter": "0s"}}, "spec.failover.unhealthyAfter",
         f"{AT_LEAST} 1s"),
    Case("0s for healthChecks.dnsbl.interval", "SendingPool",
         {"spec.healthChecks.dnsbl.interval": "0s"}, "spec.healthChecks.dnsbl.interval",
         f"{AT_LEAST} 1s"),
    Case("0s for reputation.window", "SendingPool", {"spec.reputation": {"window": "0s"}},
         "spec.reputation.window", f"{AT_LEAST} 1m"),
    Case("0s for retry.maxAge", "SendingPool", {"spec.retry": {"maxAge": "0s"}},
         "spec.retry.maxAge", f"{AT_LEAST} 1m"),
    Case("0s for dkim.overlap", "DomainAuth", {"spec.dkim.overlap": "0s"},
         "spec.dkim.overlap", f"{AT_LEAST} 1h"),
    Case("0s for verification.interval", "DomainAuth", {"spec.verification.interval": "0s"},
         "spec.verification.interval", f"{AT_LEAST} 10s"),
    Case("a rotation every second", "DomainAuth", {"spec.dkim.rotateEvery": "1s"},
         "spec.dkim.rotateEvery", f"{AT_LEAST} 1d"),
    Case("a rotation just under a day, in mixed units", "DomainAuth",
         {"spec.dkim.rotateEvery": "23h59m59s999ms"}, "spec.dkim.rotateEvery",
         f"{AT_LEAST} 1d"),
    Case("a return path outside the domain", "DomainAuth",
         {"spec.returnPath": "bounces.example.org"}, "spec",
         "returnPath must be the domain or a name under it (e.g. bounces.example.com for "
         "example.com): its SPF record is written in the domain's zone, and DMARC aligns SPF "
         "on it"),
    Case("a return path that only ends like the domain", "DomainAuth",
         {"spec.returnPath": "notexample.com"}, "spec",
         "returnPath must be the domain or a name under it"),
    Case("more than 10 SPF includes", "DomainAuth",
         {"spec.spf": {"include": TWELVE_INCLUDES, "flatten": False}}, "spec.spf",
         "spf.include names more than 10 domains: RFC 7208 allows 10 DNS lookups per SPF "
         "check; drop includes or set spf.flatten"),
    Case("egress IP 0.0.0.0", "SendingPool", {"spec.egress.ips.0.address": "0.0.0.0"},
         "spec.egress.ips[0].address", "not an address mail can be sent from"),
    Case("egress IP ::", "SendingPool", {"spec.egress.ips.0.address": "::"},
         "spec.egress.ips[0].address", "not an address mail can be sent from"),
    Case("a multicast egress IP", "SendingPool", {"spec.egress.ips.0.address": "224.0.0.25"},
         "spec.egress.ips[0].address", "not an address mail can be sent from"),
    Case("an IPv6 multicast egress IP", "SendingPool",
         {"spec.egress.ips.0.address": "ff02::1"}, "spec.egress.ips[0].address",
         "not an address mail can be sent from"),
    Case("the broadcast address as egress IP", "SendingPool",
         {"spec.egress.ips.0.address": "255.255.255.255"}, "spec.egress.ips[0].address",
         "not an address mail can be sent from"),
    Case("a plain http webhook to a public host", "SendingPool",
         {"spec.events": {"webhooks": [webhook(url="http://hooks.example.com/in")]}},
         "spec.events.webhooks[0].url", WEBHOOK_URL_MESSAGE),
    Case("a webhook URL of another scheme", "SendingPool",
         {"spec.events": {"webhooks": [webhook(url="ftp://hooks.example.com/in")]}},
         "spec.events.webhooks[0].url", WEBHOOK_URL_MESSAGE),
    Case("a webhook URL with a space", "SendingPool",
         {"spec.events": {"webhooks": [webhook(url="https://hooks.example.com/a b")]}},
         "spec.events.webhooks[0].url", WEBHOOK_URL_MESSAGE),
    Case("plain http to a loopback look-alike", "SendingPool",
         {"spec.events": {"webhooks": [webhook(url="http://127.0.0.1.example.com/in")]}},
         "spec.events.webhooks[0].url", WEBHOOK_URL_MESSAGE),
    Case("webhook retries for 30s", "SendingPool",
         {"spec.events": {"webhooks": [webhook(retryFor="30s")]}},
         "spec.events.webhooks[0].retryFor", f"{AT_LEAST} 1m"),
    Case("click tracking on a class without a tracking host", "SendingPool",
         {"spec.classes.1.tracking": {"clicks": True}}, "spec",
         "classes[].tracking turns on opens or clicks but spec.tracking.host is missing"),
    Case("open tracking on a class without a tracking host", "SendingPool",
         {"spec.classes.0.tracking": {"opens": True}}, "spec",
         "classes[].tracking turns on opens or clicks but spec.tracking.host is missing"),
]

# Close to the edges, and every duration form: accepted by both.
ACCEPTED = [
    Case("a rotation of exactly one day in hours", "DomainAuth",
         {"spec.dkim.rotateEvery": "23h60m"}, "", ""),
    Case("a rotation of half a week", "DomainAuth", {"spec.dkim.rotateEvery": "0.5w"}, "", ""),
    Case("an overlap of 3600000ms", "DomainAuth", {"spec.dkim.overlap": "3600000ms"}, "", ""),
    Case("a return path equal to the domain, other case", "DomainAuth",
         {"spec.returnPath": "Example.COM"}, "", ""),
    Case("11 SPF includes when flattened", "DomainAuth",
         {"spec.spf": {"include": TWELVE_INCLUDES, "flatten": True}}, "", ""),
    Case("a loopback egress IP (the sandbox's)", "SendingPool",
         {"spec.egress.ips.0.address": "127.0.10.1"}, "", ""),
    Case("an IPv6 egress IP starting with ff but not multicast", "SendingPool",
         {"spec.egress.ips.0.address": "ff::10"}, "", ""),
    Case("a fixed-offset IANA zone", "IPWarmup", {"spec.timezone": "Etc/GMT-2"}, "", ""),
    Case("plain http to a loopback webhook (the sandbox's; the operator's setting decides)",
         "SendingPool",
         {"spec.events": {"webhooks": [webhook(url="http://127.0.40.1:8080/hook")]}}, "", ""),
    Case("an https webhook on an IP and port with a query", "SendingPool",
         {"spec.events": {"webhooks": [webhook(url="https://203.0.113.5:8443/in?k=v#x",
                                               types=["delivered", "clicked"],
                                               retryFor="1m")]}}, "", ""),
    Case("tracking on a class with a tracking host", "SendingPool",
         {"spec.classes.1.tracking": {"opens": True, "clicks": True},
          "spec.tracking": {"host": "track.example.com"}}, "", ""),
]

# Refused by the schema itself (an enum, a keyed list, a bound), not by a CEL rule: the API
# server answers with its own wording after the path ("Duplicate value", "Unsupported value").
SCHEMA_REFUSALS = [
    Case("two webhooks of one name", "SendingPool",
         {"spec.events": {"webhooks": [webhook(), webhook(url="https://b.example.com/")]}},
         "spec.events.webhooks[1]", "Duplicate value"),
    Case("an unknown event type", "SendingPool",
         {"spec.events": {"webhooks": [webhook(types=["delivered", "read"])]}},
         "spec.events.webhooks[0].types[1]", "Unsupported value"),
    Case("the same event type twice", "SendingPool",
         {"spec.events": {"webhooks": [webhook(types=["opened", "opened"])]}},
         "spec.events.webhooks[0].types[1]", "Duplicate value"),
    Case("six tag keys as metric labels", "SendingPool",
         {"spec.events": {"tagMetricsAllow": ["a", "b", "c", "d", "e", "f"]}},
         "spec.events.tagMetricsAllow", "Too many"),
]
