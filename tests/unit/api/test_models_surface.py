"""What other code relies on: camelCase in and out, snake_case in Python, strict specs,
tolerant statuses, defaults as documented."""

from __future__ import annotations

import datetime

import pydantic
import pytest
from mailfleet_operator import api
from mailfleet_operator.api import common, domainauth, ipwarmup, sendingpool


def test_import_surface() -> None:
    assert (api.GROUP, api.VERSION) == ("mailfleet.io", "v1alpha1")
    assert [k.kind for k in api.KINDS] == ["SendingPool", "IPWarmup", "DomainAuth"]
    assert api.BY_PLURAL["sendingpools"].short_names == ("sp",)
    assert api.SendingPoolSpec is sendingpool.SendingPoolSpec
    assert api.Condition is common.Condition


def test_specs_accept_camel_case_and_snake_case() -> None:
    by_alias = sendingpool.SendingPoolSpec.model_validate({"standbyReplicas": 2})
    by_name = sendingpool.SendingPoolSpec(standby_replicas=2)
    assert by_alias == by_name


def test_a_minimal_pool_gets_the_documented_defaults() -> None:
    spec = sendingpool.SendingPoolSpec()
    assert spec.replicas == 1 and spec.standby_replicas == 0
    assert [(c.name, c.priority) for c in spec.classes] == [
        ("transactional", 100),
        ("marketing", 10),
    ]
    assert spec.reputation.warn_at.bounce_rate == 0.05
    assert spec.reputation.pause_at.complaint_rate == 0.005
    assert spec.retry.schedule == ["5m", "10m", "30m", "1h", "2h", "4h"]
    assert spec.retry.max_age == "3d"
    assert spec.storage.size == "1Gi"
    assert spec.egress.mode == "direct"
    assert spec.warmup_overflow == "Defer"
    assert spec.submission.smtp.port == 587 and spec.submission.http.port == 8080


def test_a_minimal_domain_gets_the_documented_defaults() -> None:
    spec = domainauth.DomainAuthSpec(domain="example.com")
    assert spec.dkim.algorithm == "rsa-2048"
    assert spec.dkim.selector_prefix == "mf"
    assert (spec.dkim.rotate_every, spec.dkim.overlap) == ("90d", "1h")
    assert spec.spf.all == "~all"
    assert spec.publish.mode == "Manual"


def test_bimi_and_spf_keep_their_documented_spelling() -> None:
    spec = domainauth.DomainAuthSpec.model_validate(
        {
            "domain": "example.com",
            "spf": {"extraIPs": ["198.51.100.0/24"]},
            "bimi": {"logoURL": "https://example.com/logo.svg"},
        }
    )
    dumped = common.dump_spec(spec)
    assert dumped["spf"]["extraIPs"] == ["198.51.100.0/24"]
    assert dumped["bimi"] == {"logoURL": "https://example.com/logo.svg"}


def test_status_dumps_to_camel_case_json_without_unset_fields() -> None:
    now = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    status = sendingpool.SendingPoolStatus(
        observed_generation=3,
        conditions=[
            common.Condition(
                type="Ready", status="True", reason="AllReplicasReady", last_transition_time=now
            )
        ],
        ips=[sendingpool.IPStatus(address="203.0.113.10", pod="marketing-0", state="Active")],
        queue=[sendingpool.QueueStatus(class_name="marketing", depth=7)],
        active_ips=1,
    )
    dumped = api.dump_status(status)
    assert dumped["observedGeneration"] == 3
    assert dumped["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert dumped["ips"][0] == {
        "address": "203.0.113.10",
        "pod": "marketing-0",
        "state": "Active",
        "listedOn": [],
        "sentToday": 0,
    }
    assert dumped["queue"][0]["class"] == "marketing"
    assert dumped["activeIPs"] == 1
    assert "deliveries24h" in dumped
    assert "selector" not in dumped
    assert sendingpool.SendingPoolStatus.model_validate(dumped) == status


def test_status_written_by_a_newer_operator_still_reads() -> None:
    status = ipwarmup.IPWarmupStatus.model_validate({"phase": "WarmingUp", "futureField": 1})
    assert status.phase == "WarmingUp"


def test_specs_refuse_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        domainauth.DomainAuthSpec.model_validate({"domain": "example.com", "dkimm": {}})


def test_condition_reason_must_be_camel_case() -> None:
    now = datetime.datetime.now(tz=datetime.UTC)
    with pytest.raises(pydantic.ValidationError):
        common.Condition(type="Ready", status="True", reason="all ready", last_transition_time=now)
    with pytest.raises(pydantic.ValidationError):
        common.Condition(type="Ready", status="Maybe", reason="X", last_transition_time=now)
