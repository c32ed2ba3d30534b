"""Invalid specs are refused twice: by the models (operator) and by the generated schema (API
server), each time with the path of the bad field and a message saying what is expected."""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
import yaml
from mailfleet_operator.api import common, crds, kinds
from unit.api import openapi_rules

SAMPLES = pathlib.Path(__file__).resolve().parents[3] / "samples"


def _sample(kind: str) -> dict[str, Any]:
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc["kind"] == kind:
                return copy.deepcopy(doc)
    raise LookupError(kind)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting a dotted path ("spec.egress.ips.0.address") in an object."""

    def mutate(obj: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = obj
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


# (kind, mutation, path the models report, words of their message, words of the schema error)
CASES = [
    pytest.param(
        "SendingPool",
        _set("spec.replicas", -1),
        "spec.replicas",
        "greater than or equal to 0",
        "less than the minimum of 0",
        id="negative replicas are refused",
    ),
    pytest.param(
        "DomainAuth",
        _set("spec.dkim.algorithm", "rsa-1024"),
        "spec.dkim.algorithm",
        "'rsa-2048', 'rsa-3072', 'ed25519' or 'dual'",
        "is not one of",
        id="an unknown DKIM algorithm is refused with the list of known ones",
    ),
    pytest.param(
        "SendingPool",
        _set("spec.egress.ips.1.address", "203.0.113.300"),
        "spec.egress.ips[1].address",
        "invalid IP address '203.0.113.300': expected an IPv4 address",
        "does not match",
        id="a malformed IP address is refused",
    ),
    pytest.param(
        "IPWarmup",
        _set("spec.addresses", ["203.0.113.10", "not-an-ip"]),
        "spec.addresses[1]",
        "invalid IP address 'not-an-ip'",
        "does not match",
        id="a malformed IP in a warm-up's address list is refused",
    ),
    pytest.param(
        "DomainAuth",
        _set("spec.domain", "example..com"),
        "spec.domain",
        "invalid domain name 'example..com': expected a fully qualified domain name",
        "does not match",
        id="a malformed domain is refused",
    ),
    pytest.param(
        "SendingPool",
        _set("spec.egress.ips.0.heloName", "mta1_example.com"),
        "spec.egress.ips[0].heloName",
        "invalid domain name",
        "does not match",
        id="a HELO name that is not a domain is refused",
    ),
    pytest.param(
        "SendingPool",
        _set("spec.throttling.rate", "100 per second"),
        "spec.throttling.rate",
        "invalid rate '100 per second': expected a rate '<count>/<period>'",
        "does not match",
        id="a malformed rate is refused with the expected format",
    ),
    pytest.param(
        "SendingPool",
        _set("spec.retry.maxAge", "3 days"),
        "spec.retry.maxAge",
        "invalid duration '3 days': expected a duration",
        "does not match",
        id="a malformed duration is refused with the expected format",
    ),
    pytest.param(
        "SendingPool",
        _set("spec.egress.ips.0.helo", "mta1.example.com"),
        "spec.egress.ips[0].helo",
        "unknown field",
        "unknown field",
        id="an unknown (misspelt) field is refused with its path",
    ),
    pytest.param(
        "DomainAuth",
        _set("spec.dmarc.rua", ["dmarc@example.com"]),
        "spec.dmarc.rua[0]",
        "expected a DMARC report URI like mailto:",
        "does not match",
        id="a DMARC report address without mailto: is refused",
    ),
    pytest.param(
        "DomainAuth",
        _set("spec.dmarc.pct", 150),
        "spec.dmarc.pct",
        "less than or equal to 100",
        "greater than the maximum of 100",
        id="a DMARC percentage above 100 is refused",
    ),
    pytest.param(
        "DomainAuth",
        _set("spec.bimi", {"logoURL": "http://example.com/logo.svg"}),
        "spec.bimi.logoURL",
        "expected an absolute https:// URL",
        "does not match",
        id="a BIMI logo over plain http is refused",
    ),
    pytest.param(
        "DomainAuth",
        _set("spec.dkim.selectorPrefix", "MF_1"),
        "spec.dkim.selectorPrefix",
        "should match pattern",
        "does not match",
        id="a selector prefix that is not a DNS label is refused",
    ),
    pytest.param(
        "IPWarmup",
        _set("spec.safety.onViolation", "Ignore"),
        "spec.safety.onViolation",
        "'Hold', 'Rollback' or 'Pause'",
        "is not one of",
        id="an unknown violation action is refused",
    ),
    pytest.param(
        "SendingPool",
        _set("spec.resources.limits", {"memory": "lots"}),
        "spec.resources.limits.memory",
        "expected a Kubernetes quantity",
        "does not match",
        id="a malformed resource quantity is refused",
    ),
]


@pytest.mark.parametrize(("kind", "mutate", "path", "model_words", "schema_words"), CASES)
def test_models_refuse_with_path_and_message(
    kind: str, mutate: Any, path: str, model_words: str, schema_words: str
) -> None:
    obj = _sample(kind)
    mutate(obj)
    with pytest.raises(pydantic.ValidationError) as exc:
        kinds.BY_KIND[kind].model.model_validate(obj)
    lines = common.describe_errors(exc.value)
    assert any(line.startswith(f"{path}: ") and model_words in line for line in lines), lines


@pytest.mark.parametrize(("kind", "mutate", "path", "model_words", "schema_words"), CASES)
def test_generated_schema_refuses_the_same_input(
    kind: str, mutate: Any, path: str, model_words: str, schema_words: str
) -> None:
    obj = _sample(kind)
    mutate(obj)
    errors = openapi_rules.validate_object(crds.openapi_schema(kind), obj)
    schema_path = path.replace("[", ".").replace("]", "")
    assert any(line.startswith(f"{schema_path}: ") and schema_words in line for line in errors), (
        errors
    )


@pytest.mark.parametrize(
    ("kind", "mutate", "path", "words"),
    [
        pytest.param(
            "SendingPool",
            _set("spec.egress.mode", "relay"),
            "spec.egress",
            "egress.mode is relay but egress.relay is missing",
            id="relay mode without a relay is refused",
        ),
        pytest.param(
            "SendingPool",
            _set("spec.egress.ips.2.classes", ["newsletters"]),
            "spec",
            "names a class the pool does not have",
            id="an IP restricted to a class the pool does not have is refused",
        ),
        pytest.param(
            "SendingPool",
            _set("spec.reputation.warnAt", {"bounceRate": 0.2, "complaintRate": 0.001}),
            "spec.reputation",
            "warnAt.bounceRate must not exceed pauseAt.bounceRate",
            id="warning above the pause threshold is refused",
        ),
        pytest.param(
            "SendingPool",
            _set("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
            "spec.autoscaling",
            "minReplicas must not exceed maxReplicas",
            id="autoscaling with min above max is refused",
        ),
        pytest.param(
            "SendingPool",
            _set(
                "spec.egress.ips.1",
                {"address": "203.0.113.10", "heloName": "mta2.example.com"},
            ),
            "spec.egress.ips",
            "duplicate IP address '203.0.113.10'",
            id="the same IP twice is refused",
        ),
        pytest.param(
            "IPWarmup",
            _set("spec.timezone", "Mars/Olympus_Mons"),
            "spec.timezone",
            "unknown time zone: expected an IANA name",
            id="an unknown time zone is refused",
        ),
        pytest.param(
            "IPWarmup",
            _set("spec.target", 100),
            "spec",
            "the schedule starts above the target",
            id="a schedule starting above its target is refused",
        ),
    ],
)
def test_models_refuse_cross_field_mistakes(kind: str, mutate: Any, path: str, words: str) -> None:
    obj = _sample(kind)
    mutate(obj)
    with pytest.raises(pydantic.ValidationError) as exc:
        kinds.BY_KIND[kind].model.model_validate(obj)
    lines = common.describe_errors(exc.value)
    assert any(line.startswith(f"{path}: ") and words in line for line in lines), lines


def test_schema_refuses_the_same_ip_twice_as_a_list_map() -> None:
    obj = _sample("SendingPool")
    obj["spec"]["egress"]["ips"][1]["address"] = "203.0.113.10"
    errors = openapi_rules.validate_object(crds.openapi_schema("SendingPool"), obj)
    assert any("spec.egress.ips" in e and "duplicate" in e for e in errors), errors


def test_all_problems_are_reported_at_once() -> None:
    obj = _sample("SendingPool")
    obj["spec"]["replicas"] = -1
    obj["spec"]["throttling"]["rate"] = "fast"
    with pytest.raises(pydantic.ValidationError) as exc:
        kinds.BY_KIND["SendingPool"].model.model_validate(obj)
    paths = {line.split(":")[0] for line in common.describe_errors(exc.value)}
    assert {"spec.replicas", "spec.throttling.rate"} <= paths
