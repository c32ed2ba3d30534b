"""Warm-up fails closed: what an IPWarmup imposes on its IPs when it no longer validates, and
what it persisted of their sends seeds the quota accounting after a restart."""

from __future__ import annotations

from typing import Any

from mailfleet_operator.logic import usage_book, warmup_holds

IP, OTHER = "192.0.2.50", "192.0.2.51"


def warmup(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "IPWarmup",
        "metadata": {"name": "w"},
        "spec": {
            "poolRef": {"name": "mail"},
            "addresses": [IP],
            "schedule": {"linear": {"start": 100, "increment": 100}},
            "target": 300,
            **(spec or {}),
        },
    }
    if status is not None:
        body["status"] = status
    return body


RUNNING = {
    "phase": "WarmingUp",
    "day": 2,
    "dailyQuota": 200,
    "ips": [{"address": IP, "dailyQuota": 200}],
}


def test_a_running_valid_warmup_limits_its_ips_to_todays_quota() -> None:
    assert warmup_holds.imposed_quotas(warmup(status=RUNNING)) == {IP: 200}


def test_an_invalid_running_warmup_keeps_the_last_quota() -> None:
    broken = warmup({"target": "lots"}, RUNNING)
    assert warmup_holds.imposed_quotas(broken) == {IP: 200}


def test_an_invalid_warmup_that_never_published_a_quota_holds_at_zero() -> None:
    assert warmup_holds.imposed_quotas(warmup({"target": -1})) == {IP: 0}
    assert warmup_holds.imposed_quotas(warmup({"target": -1}, {"day": "x"})) == {IP: 0}


def test_a_valid_warmup_not_started_and_a_completed_one_limit_nothing() -> None:
    assert warmup_holds.imposed_quotas(warmup(status={"phase": "Pending"})) == {}
    assert warmup_holds.imposed_quotas(warmup(status={**RUNNING, "phase": "Completed"})) == {}


def test_a_spec_the_controller_refused_before_the_start_holds_at_zero() -> None:
    refused = {"phase": "Pending", "conditions": [{"type": "Ready", "reason": "InvalidSpec"}]}
    assert warmup_holds.imposed_quotas(warmup(status=refused)) == {IP: 0}


def test_two_warmups_on_one_ip_the_smaller_quota_wins() -> None:
    assert warmup_holds.merge_quotas([{IP: 200}, {IP: 0, OTHER: 50}, {OTHER: None}]) == {
        IP: 0,
        OTHER: 50,
    }


def test_recorded_usage_seeds_the_book_without_counting_a_pod_twice() -> None:
    status = {
        **RUNNING,
        "ips": [
            {
                "address": IP,
                "dailyQuota": 1000,
                "usage": [
                    {"day": 7, "pod": "mail-0", "sent": 900},
                    {"day": 6, "pod": "mail-0", "sent": 50},
                    {"day": "bad", "pod": "mail-1", "sent": 1},
                ],
            }
        ],
    }
    recorded = warmup_holds.recorded_usage([warmup(status=status)])
    assert recorded == {IP: {7: {"mail-0": 900}, 6: {"mail-0": 50}}}

    book = usage_book.UsageBook()
    usage_book.seed_recorded(book, recorded)  # day unknown yet: the latest recorded one
    assert usage_book.sent_today(book) == {IP: 900}
    usage_book.seed_recorded(book, recorded)
    assert usage_book.sent_today(book) == {IP: 900}
    remaining, basis = usage_book.lease_quota(book, IP, "mail-1", 1000)
    assert (remaining, basis) == (100, 0)

    live = usage_book.UsageBook(usage_day=7, ip_sent={IP: {"mail-0": 950}})
    usage_book.seed_recorded(live, recorded)
    assert usage_book.sent_today(live) == {IP: 950}  # the fresher, higher figure stands


def _named(
    name: str, created: str, timezone: str | None, phase: str = "WarmingUp"
) -> dict[str, Any]:
    body = warmup({"timezone": timezone} if timezone else {}, {"phase": phase})
    body["metadata"] = {"name": name, "creationTimestamp": created}
    return body


def test_the_pool_counts_quota_days_in_the_oldest_unfinished_warmups_zone() -> None:
    done = _named("done", "2026-01-01T00:00:00Z", "Asia/Tokyo", phase="Completed")
    paris = _named("paris", "2026-02-01T00:00:00Z", "Europe/Paris")
    later = _named("later", "2026-03-01T00:00:00Z", "America/New_York")
    assert warmup_holds.pool_timezone([later, done, paris]) == "Europe/Paris"
    assert warmup_holds.pool_timezone([done]) == "UTC"
    assert warmup_holds.zone_conflict(later, [done, paris]) is paris
    assert warmup_holds.zone_conflict(paris, [done, later]) is None
    same = _named("same", "2026-04-01T00:00:00Z", "Europe/Paris")
    assert warmup_holds.zone_conflict(same, [paris, later]) is None


def test_the_rendered_sender_config_carries_the_zone_unless_days_are_scaled() -> None:
    from mailfleet_operator.api import sendingpool as sp
    from mailfleet_operator.logic import sender_config
    from mailfleet_sender import config as sc

    spec = sp.SendingPoolSpec.model_validate(
        {"replicas": 1, "egress": {"ips": [{"address": IP, "heloName": "m.example.com"}]}}
    )

    def rendered(**extra: Any) -> sc.SenderConfig:
        out = sender_config.render_config(
            sender_config.RenderInput(
                name="mail", namespace="ns", spec=spec, active_pods=1, domain_auths={}, **extra
            )
        )
        return sc.parse_config(out.text)

    assert rendered(timezone="Europe/Paris").clock.timezone == "Europe/Paris"
    assert rendered().clock.timezone == "UTC"
    scaled = rendered(timezone="Europe/Paris", day_length="100s")
    assert (scaled.clock.timezone, scaled.clock.day_length) == ("UTC", "100s")
