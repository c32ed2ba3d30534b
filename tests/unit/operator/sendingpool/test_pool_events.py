"""A SendingPool's events, tracking and KPIs as the operator renders and reports them (pure):
where webhook and tracking Secrets are mounted, a webhook whose Secret is missing left out
(EventsReady=False) while the rest flows, plain http refused unless allowed, and the pods'
24-hour figures summed into status.kpis."""

from __future__ import annotations

from typing import Any

import pytest
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import (
    assigning,
    children,
    event_config,
    kpi_summary,
    pool_secrets,
    sender_config,
)
from mailfleet_operator.reconcile import pool_status
from mailfleet_operator.reconcile.pool_state import PoolMemory

POOL = "news"


def spec(**extra: Any) -> sp.SendingPoolSpec:
    return sp.SendingPoolSpec.model_validate(
        {
            "events": {
                "webhooks": [
                    {
                        "name": "crm",
                        "url": "https://crm.example.com/hooks/mail",
                        "types": ["delivered", "bounced"],
                        "signingKeySecretRef": {"name": "crm-hook"},
                        "caSecretRef": {"name": "private-ca", "key": "bundle.pem"},
                        "retryFor": "2h",
                    },
                    {
                        "name": "bi",
                        "url": "https://bi.example.com/in",
                        "signingKeySecretRef": {"name": "bi-hook", "key": "hmac"},
                    },
                ],
                "tagMetricsAllow": ["campaign"],
            },
            **extra,
        }
    )


ALL_THERE = {
    "crm-hook": frozenset({"key"}),
    "private-ca": frozenset({"bundle.pem"}),
    "bi-hook": frozenset({"hmac"}),
}


def test_each_webhook_is_rendered_with_its_key_and_ca_files_under_its_own_directory() -> None:
    rendered = event_config.render_events(spec(), POOL, ALL_THERE)
    assert rendered.problems == ()
    assert rendered.events == {
        "stdout": True,
        "webhooks": [
            {
                "name": "crm",
                "url": "https://crm.example.com/hooks/mail",
                "types": ["delivered", "bounced"],
                "signingKeyFile": "/etc/mailfleet/events/crm/key",
                "caFile": "/etc/mailfleet/events/crm/ca.crt",
                "retryFor": "2h",
            },
            {
                "name": "bi",
                "url": "https://bi.example.com/in",
                "types": [],  # every type
                "signingKeyFile": "/etc/mailfleet/events/bi/key",
                "retryFor": "24h",
            },
        ],
        "tagMetricsAllow": ["campaign"],
    }


def test_the_signing_key_and_the_ca_come_from_their_own_secrets_into_one_read_only_directory(
) -> None:
    rendered = event_config.render_events(spec(), POOL, ALL_THERE)
    pool = children.PoolObjects(name=POOL, namespace="ns", uid="u", replicas=1,
                                files_mounts=rendered.mounts)
    sts = children.build_statefulset(spec(), pool)
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["events-crm"]["projected"]["sources"] == [
        {"secret": {"name": "crm-hook", "items": [{"key": "key", "path": "key"}],
                    "optional": True}},
        {"secret": {"name": "private-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}],
                    "optional": True}},
    ]
    assert volumes["events-bi"]["projected"]["sources"] == [
        {"secret": {"name": "bi-hook", "items": [{"key": "hmac", "path": "key"}],
                    "optional": True}},
    ]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["events-crm"] == {"name": "events-crm", "mountPath": "/etc/mailfleet/events/crm",
                                    "readOnly": True}
    assert mounts["events-bi"]["readOnly"] is True


def test_a_webhook_whose_secret_is_missing_is_left_out_and_the_others_stay() -> None:
    secrets = {**ALL_THERE, "crm-hook": None}
    rendered = event_config.render_events(spec(), POOL, secrets)
    assert [w["name"] for w in rendered.events["webhooks"]] == ["bi"]
    assert rendered.events["stdout"] is True
    assert [(p.webhook, p.reason) for p in rendered.problems] == [("crm", "SecretMissing")]
    assert "crm-hook" in rendered.problems[0].message


@pytest.mark.parametrize(
    ("secrets", "reason", "named"),
    [
        ({**ALL_THERE, "bi-hook": frozenset({"key"})}, "SecretKeyMissing", "hmac"),
        ({**ALL_THERE, "private-ca": None}, "SecretMissing", "private-ca"),
        ({**ALL_THERE, "private-ca": frozenset({"ca.crt"})}, "SecretKeyMissing", "bundle.pem"),
    ],
    ids=["a signing key Secret without the named key",
         "a missing CA Secret (the webhook could not be verified)",
         "a CA Secret without the named key"],
)
def test_a_webhook_is_left_out_when_any_of_its_secrets_cannot_serve(
    secrets: dict[str, frozenset[str] | None], reason: str, named: str
) -> None:
    rendered = event_config.render_events(spec(), POOL, secrets)
    assert len(rendered.events["webhooks"]) == 1
    assert [p.reason for p in rendered.problems] == [reason]
    assert named in rendered.problems[0].message


def test_the_pod_template_does_not_change_when_a_secret_appears_or_goes() -> None:
    """Optional mounts: creating the Secret later fills the files in, without rolling pods."""
    missing = event_config.render_events(spec(), POOL, {})
    present = event_config.render_events(spec(), POOL, ALL_THERE)
    assert missing.mounts == present.mounts
    assert missing.events["webhooks"] == []


def test_events_ready_names_the_webhooks_left_out_and_says_mail_keeps_flowing() -> None:
    rendered = sender_config.render_config(
        sender_config.RenderInput(
            name=POOL, namespace="ns", spec=spec(), active_pods=1, domain_auths={},
            event_secrets={**ALL_THERE, "crm-hook": None},
        )
    )
    verdict = pool_status.events_verdict(spec(), rendered)
    assert (verdict.type, verdict.status, verdict.reason) == ("EventsReady", False, "SecretMissing")
    assert "webhook crm" in verdict.message and "keep flowing" in verdict.message
    # Mail is not held for it: the DomainAuth problems alone decide Ready.
    assert rendered.problems == ()
    fine = sender_config.render_config(
        sender_config.RenderInput(
            name=POOL, namespace="ns", spec=spec(), active_pods=1, domain_auths={},
            event_secrets=ALL_THERE,
        )
    )
    assert pool_status.events_verdict(spec(), fine).status is True
    none = sp.SendingPoolSpec()
    assert pool_status.events_verdict(none, fine).reason == "NoWebhooks"


def test_tracking_mounts_the_generated_key_and_the_hosts_certificate_together() -> None:
    tracked = spec(
        tracking={"host": "track.example.com", "tlsSecretRef": {"name": "track-tls"}},
        classes=[{"name": "transactional", "priority": 100},
                 {"name": "marketing", "bulk": True, "tracking": {"opens": True, "clicks": True}}],
    )
    rendered = event_config.render_events(
        tracked, POOL, {**ALL_THERE, "track-tls": frozenset({"tls.crt", "tls.key"})}
    )
    assert rendered.tracking == {
        "host": "track.example.com",
        "keyFile": "/etc/mailfleet/tracking/key",
        "tlsCertFile": "/etc/mailfleet/tracking/tls.crt",
        "tlsKeyFile": "/etc/mailfleet/tracking/tls.key",
    }
    assert rendered.class_tracking == {
        "transactional": {"opens": False, "clicks": False},  # never unless asked
        "marketing": {"opens": True, "clicks": True},
    }
    mount = next(m for m in rendered.mounts if m.volume == "tracking")
    assert mount.path == "/etc/mailfleet/tracking"
    assert mount.files == (
        children.SecretFile("news-tracking-key", "key", "key"),
        children.SecretFile("track-tls", "tls.crt", "tls.crt"),
        children.SecretFile("track-tls", "tls.key", "tls.key"),
    )
    assert mount.optional == ("track-tls",)  # the generated key is made before the pods


def test_a_missing_tracking_certificate_is_reported_and_tracking_still_works() -> None:
    """Links already sent must keep redirecting: the key stays, only TLS is left out."""
    tracked = spec(tracking={"host": "track.example.com", "tlsSecretRef": {"name": "gone"}})
    rendered = event_config.render_events(tracked, POOL, ALL_THERE)
    assert rendered.tracking == {"host": "track.example.com",
                                 "keyFile": "/etc/mailfleet/tracking/key"}
    assert [(p.webhook, p.reason) for p in rendered.problems] == [("tracking", "SecretMissing")]


def test_the_machine_window_is_passed_on_only_when_the_pool_names_one() -> None:
    # The sandbox's readers open within seconds of delivery: a pool can turn the rule off.
    off = event_config.render_events(spec(tracking={"host": "t.example.com",
                                                    "machineWindow": "0s"}), "news")
    assert off.tracking is not None and off.tracking["machineWindow"] == "0s"
    default = event_config.render_events(spec(tracking={"host": "t.example.com"}), "news")
    assert default.tracking is not None and "machineWindow" not in default.tracking


def test_the_tracking_key_secret_is_owned_by_the_pool_and_named_after_it() -> None:
    pool = children.PoolObjects(name=POOL, namespace="ns", uid="u-9", replicas=1)
    secret = pool_secrets.build_tracking_secret(pool, data={"key": "c2VjcmV0"})
    assert secret["metadata"]["name"] == "news-tracking-key"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-9"
    assert secret["data"] == {"key": "c2VjcmV0"}


def test_the_secrets_to_check_are_each_named_once() -> None:
    shared = sp.SendingPoolSpec.model_validate({
        "events": {"webhooks": [
            {"name": "a", "url": "https://a.example", "signingKeySecretRef": {"name": "hooks"}},
            {"name": "b", "url": "https://b.example",
             "signingKeySecretRef": {"name": "hooks", "key": "b"}},
        ]},
        "tracking": {"host": "t.example.com", "tlsSecretRef": {"name": "t-tls"}},
    })
    assert event_config.secret_names(shared) == ["hooks", "t-tls"]


@pytest.mark.parametrize(
    ("url", "allowed", "refused"),
    [
        ("http://127.0.40.1:8443/hook", False, True),
        ("http://127.0.40.1:8443/hook", True, False),
        ("https://127.0.40.1:8443/hook", False, False),
        ("https://hooks.example.com/x", False, False),
    ],
    ids=["plain http to loopback in production", "plain http to loopback in the sandbox",
         "https to loopback", "https anywhere"],
)
def test_plain_http_webhooks_are_refused_unless_the_operator_allows_loopback_http(
    url: str, allowed: bool, refused: bool
) -> None:
    one = sp.SendingPoolSpec.model_validate({"events": {"webhooks": [
        {"name": "a", "url": url, "signingKeySecretRef": {"name": "k"}}]}})
    problems = event_config.refusals(one, allow_loopback_http=allowed)
    assert bool(problems) is refused
    if refused:
        assert problems[0].startswith("spec.events.webhooks[0].url: ")


@pytest.mark.skipif(not sender_config._accepts("events"),
                    reason="the sender's config model has no events section yet")
def test_the_sender_config_carries_the_events_tracking_and_class_sections() -> None:
    tracked = spec(tracking={"host": "track.example.com"},
                   classes=[{"name": "marketing", "tracking": {"clicks": True}}])
    rendered = sender_config.render_config(
        sender_config.RenderInput(name=POOL, namespace="ns", spec=tracked, active_pods=1,
                                  domain_auths={}, event_secrets=ALL_THERE)
    )
    data = rendered.config.model_dump(by_alias=True, exclude_none=True)
    assert [w["name"] for w in data["events"]["webhooks"]] == ["crm", "bi"]
    assert data["tracking"]["keyFile"] == "/etc/mailfleet/tracking/key"
    assert data["classes"][0]["tracking"] == {"opens": False, "clicks": True}


def test_the_sections_are_merged_as_far_as_the_senders_model_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until the sender's model has the sections, none is rendered (a sender refuses a file
    with unknown fields); each lands as soon as the model has it."""
    tracked = spec(tracking={"host": "t.example.com", "tlsSecretRef": {"name": "t-tls"}},
                   classes=[{"name": "marketing", "tracking": {"opens": True}}])
    rendered = event_config.render_events(
        tracked, POOL, {**ALL_THERE, "t-tls": frozenset({"tls.crt", "tls.key"})})
    known = {("events",), ("tracking",), ("classes", "tracking")}
    monkeypatch.setattr(sender_config, "_accepts", lambda *path: path in known)
    data = sender_config._with_events({"classes": [{"name": "marketing"}]}, rendered)
    assert data["events"] == rendered.events
    assert data["tracking"] == {"host": "t.example.com", "keyFile": "/etc/mailfleet/tracking/key"}
    assert data["classes"] == [{"name": "marketing", "tracking": {"opens": True, "clicks": False}}]
    monkeypatch.setattr(sender_config, "_accepts", lambda *path: False)
    assert sender_config._with_events({"classes": [{"name": "marketing"}]}, rendered) == {
        "classes": [{"name": "marketing"}]}


def test_the_rendered_config_still_validates_and_the_mounts_travel_with_it() -> None:
    rendered = sender_config.render_config(
        sender_config.RenderInput(name=POOL, namespace="ns", spec=spec(), active_pods=1,
                                  domain_auths={}, event_secrets=ALL_THERE)
    )
    assert [m.volume for m in rendered.files_mounts] == ["events-crm", "events-bi"]


# --- status.kpis -----------------------------------------------------------------------------


def kpis(sent: int, delivered: int, hard: int = 0, complained: int = 0, opened: int = 0,
         clicked: int = 0, p95: float | None = None) -> dict[str, Any]:
    total = {"sent": sent, "delivered": delivered, "hard_bounced": hard, "soft_bounced": 0,
             "complained": complained, "unsubscribed": 0, "opened_human": opened,
             "opened_machine": 7, "clicked_human": clicked, "clicked_machine": 1,
             "delivery_rate": None, "deliver_p50_s": None, "deliver_p95_s": p95}
    return {"windows": {"1h": {"total": {}, "by": {}}, "24h": {"total": total, "by": {}}},
            "days": {}}


def test_counts_add_up_over_pods_and_rates_are_recomputed_not_averaged() -> None:
    summary = kpi_summary.summarize({
        "news-0": kpis(1000, 900, hard=90, complained=9, opened=450, clicked=90, p95=12.5),
        "news-1": kpis(10, 10, hard=0, complained=0, opened=10, clicked=5, p95=3.0),
    })
    assert summary is not None
    assert (summary.pods, summary.sent, summary.delivered) == (2, 1010, 910)
    assert summary.delivery_rate == round(910 / 1010, 4)  # averaging would say 0.95
    assert summary.hard_bounce_rate == round(90 / 910, 4)  # averaging would say 0.05
    assert summary.complaint_rate == round(9 / 910, 4)
    assert summary.open_rate == round(460 / 910, 4)  # human opens only
    assert summary.click_rate == round(95 / 910, 4)
    assert summary.deliver_p95_seconds == 12.5  # the largest pod p95 bounds the pool's


@pytest.mark.parametrize(
    ("per_pod", "pods"),
    [
        ({}, None),
        ({"news-0": {}}, None),
        ({"news-0": {"windows": {"1h": {"total": {"sent": 3}}}}}, None),
        ({"news-0": kpis(5, 5), "news-1": {"windows": {"24h": {"total": {"sent": -1}}}}}, 1),
        ({"news-0": kpis(5, 5), "news-1": {"windows": {"24h": {"total": {"sent": "9"}}}}}, 1),
    ],
    ids=["no pod answered", "a sender without KPIs", "no 24-hour window",
         "a pod with a negative count is left out", "a pod with a text count is left out"],
)
def test_only_well_formed_24h_figures_count(per_pod: dict[str, Any], pods: int | None) -> None:
    summary = kpi_summary.summarize(per_pod)
    assert (summary.pods if summary else None) == pods


def test_rates_are_absent_while_their_denominator_is_zero() -> None:
    summary = kpi_summary.summarize({"news-0": kpis(0, 0)})
    assert summary is not None
    assert summary.delivery_rate is None and summary.open_rate is None
    assert summary.deliver_p95_seconds is None


def _status(memory: PoolMemory, old: dict[str, Any] | None = None) -> dict[str, Any]:
    plan = assigning.AssignmentPlan(ips=(), pods=(), drain=(), health={}, failing_over=False,
                                    degraded_reasons=())
    return pool_status.build_status(sp.SendingPoolSpec(), POOL, plan, [], set(), memory, {}, 0,
                                    old_status=old)


def test_status_kpis_appear_with_the_pods_figures_and_go_when_no_pod_reports_them() -> None:
    memory = PoolMemory()
    memory.kpis = {"news-0": kpis(100, 98, hard=2, p95=4.0)}
    status = _status(memory)
    assert status["kpis"]["sent"] == 100 and status["kpis"]["deliveryRate"] == 0.98
    assert status["kpis"]["deliverP95Seconds"] == 4.0
    memory.kpis = {}
    assert "kpis" not in _status(memory)
    assert _status(memory, old=status)["kpis"] is None  # removed by the merge patch
