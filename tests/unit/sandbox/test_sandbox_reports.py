"""DSN and ARF samples built by the sandbox parse like the real thing with the standard library
(what the sender's inbound report parser will be tested against); the demo report's issue-20
figures (webhook events and what is missing, recorded against simulated engagement, the KPI
table per campaign)."""

from __future__ import annotations

import email
import email.message
import json
from typing import Any

import pytest
from mailfleet_sandbox import report, reports

ORIGINAL = (
    b"Return-Path: <bounce+123@example.test>\r\n"
    b"From: News <news@mail.example.test>\r\n"
    b"To: alice@gmail.test\r\n"
    b"Subject: Spring offers\r\n"
    b"Message-ID: <abc@example.test>\r\n"
    b"\r\n"
    b"Body line\r\n"
)


def parts_of(raw: bytes) -> tuple[email.message.Message, list[Any]]:
    """The report and its parts (Any: the email package types payloads loosely)."""
    message = email.message_from_bytes(raw)
    payload: Any = message.get_payload()
    assert isinstance(payload, list)
    return message, payload


def test_dsn_for_an_unknown_user_is_a_failed_delivery_status_report() -> None:
    raw = reports.build_dsn(ORIGINAL, "ghost@gmail.test", remote_mta="gmail-smtp-in.l.google.test")
    message, parts = parts_of(raw)
    assert message["To"] == "bounce+123@example.test"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    per_message, per_recipient = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.sandbox.test"
    assert per_recipient["Final-Recipient"] == "rfc822; ghost@gmail.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 user unknown"
    assert "Message-ID: <abc@example.test>" in parts[2].get_payload()
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(("status", "action"), [("4.2.2", "delayed"), ("2.0.0", "delivered")])
def test_dsn_action_follows_the_status_class(status: str, action: str) -> None:
    _, parts = parts_of(reports.build_dsn(ORIGINAL, "a@gmail.test", status=status))
    assert parts[1].get_payload()[1]["Action"] == action


def test_arf_report_carries_the_feedback_fields_and_the_full_original_when_asked() -> None:
    raw = reports.build_arf(
        ORIGINAL,
        source_ip="127.0.0.7",
        mail_from="bounce+123@example.test",
        rcpt_to="alice@gmail.test",
        headers_only=False,
    )
    message, parts = parts_of(raw)
    assert message.get_param("report-type") == "feedback-report"
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/feedback-report",
        "message/rfc822",
    ]
    feedback = email.message_from_string(parts[1].get_payload()[0].as_string())
    assert feedback["Feedback-Type"] == "abuse"
    assert feedback["Version"] == "1"
    assert feedback["Original-Mail-From"] == "<bounce+123@example.test>"
    assert feedback["Original-Rcpt-To"] == "<alice@gmail.test>"
    assert feedback["Source-IP"] == "127.0.0.7"
    assert feedback["Reported-Domain"] == "mail.example.test"
    assert feedback["Arrival-Date"]
    embedded = parts[2].get_payload()[0]
    assert embedded["Subject"] == "Spring offers"
    assert embedded.get_payload() == "Body line\r\n"


def test_header_value_unfolds_continuation_lines() -> None:
    folded = b"Subject: a long\r\n subject line\r\nFrom: x@example.test\r\n\r\nbody"
    assert reports.header_value(folded, "subject") == "a long subject line"
    assert reports.header_value(folded, "To") is None


# --------------------------------------------------------------------------- demo report: issue 20

Key = report.EventKey


def event(kind: str, message: str, recipient: str | None = "a@gmail.test", *,
          event_id: str | None = None, machine: bool | None = None) -> dict[str, Any]:
    return {"schema": "mailfleet.io/event/v1", "id": event_id or f"{kind}-{message}-{recipient}",
            "type": kind, "message_id": message, "recipient": recipient, "machine": machine,
            "tags": {"campaign": "spring"}}


@pytest.mark.parametrize(
    ("implied", "received", "missing"),
    [
        pytest.param([Key("delivered", "m1", "a")], [Key("delivered", "m1", "a")], [],
                     id="every implied event was received: nothing is missing"),
        pytest.param([Key("delivered", "m1", "a"), Key("opened", "m1", "a")],
                     [Key("delivered", "m1", "a")], [Key("opened", "m1", "a")],
                     id="an open the webhook never got is missing"),
        pytest.param([Key("delivered", None, "a"), Key("delivered", None, "a")],
                     [Key("delivered", None, "a")], [Key("delivered", None, "a")],
                     id="two copies to one recipient need two events, not one"),
        pytest.param([Key("delivered", "m1", "a"), Key("delivered", "m2", "a")],
                     [Key("delivered", "m1", "a")] * 3, [Key("delivered", "m2", "a")],
                     id="repeats of one event do not stand in for another message's event"),
        pytest.param([], [Key("opened", "m1", "a"), Key("bounced", "m9", "z")], [],
                     id="received events nobody implied are not missing anything"),
        pytest.param([Key("opened", "m2", None), Key("clicked", "m1", "b")], [],
                     [Key("clicked", "m1", "b"), Key("opened", "m2", None)],
                     id="with nothing received every implied event is missing, in a stable order"),
    ],
)
def test_webhook_missing_is_the_multiset_difference(
    implied: list[report.EventKey], received: list[report.EventKey],
    missing: list[report.EventKey],
) -> None:
    assert report.webhook_missing(implied, received) == missing


def test_event_keys_and_implied_keys_meet_on_message_and_lowercase_recipient() -> None:
    received = event("delivered", "pod-0.17", "Alice@Gmail.test")
    assert report.event_key(received) == Key("delivered", "pod-0.17", "alice@gmail.test")
    assert report.event_key(received, with_message=False) == Key(
        "delivered", None, "alice@gmail.test")
    assert report.implied_event_keys(delivered=[("pod-0.17", "ALICE@gmail.test")],
                                     opened=[("pod-0.17", None)]) == [
        Key("delivered", "pod-0.17", "alice@gmail.test"), Key("opened", "pod-0.17", None)]


def test_events_summary_counts_each_event_once_and_tells_machine_opens_apart() -> None:
    events = [
        event("delivered", "m1"), event("delivered", "m2", "b@gmail.test"),
        event("delivered", "m1"),  # the same event id again: a retried batch
        event("opened", "m1", machine=False), event("opened", "m2", "b@gmail.test", machine=True),
        event("clicked", "m1", machine=False), event("bounced", "m3", "c@gmail.test"),
    ]
    implied = report.implied_event_keys(
        delivered=[("m1", "a@gmail.test"), ("m2", "b@gmail.test")],
        bounced=[("m3", "c@gmail.test")],
        opened=[("m1", "a@gmail.test"), ("m2", "b@gmail.test")], clicked=[("m1", "a@gmail.test")])
    simulated = {"opens": 1, "machine_opens": 1, "clicks": 1, "failed": 0}
    summary = report.events_summary(events, implied, simulated)
    assert summary == {
        "webhook_events": {"bounced": 1, "clicked": 1, "delivered": 2, "opened": 2},
        "webhook_missing": 0, "webhook_missing_list": [],
        "opens_recorded": 1, "opens_simulated": 1, "clicks_recorded": 1, "clicks_simulated": 1,
        "machine_opens": 1, "machine_opens_simulated": 1, "engagement_failed": 0,
    }
    without_click = [e for e in events if e["type"] != "clicked"]
    summary = report.events_summary(without_click, implied, simulated)
    assert summary["webhook_missing"] == 1
    assert summary["webhook_missing_list"] == [
        {"type": "clicked", "message": "m1", "recipient": "a@gmail.test"}]
    assert summary["clicks_recorded"] == 0
    json.dumps(summary)  # summary.json material


def figures(**counts: Any) -> dict[str, Any]:
    base = dict.fromkeys(report.KPI_COUNTS, 0)
    base.update(deliver_p50_s=None, deliver_p95_s=None)
    base.update(counts)
    return base


def test_kpi_figures_of_several_pods_add_counts_and_recompute_rates() -> None:
    pod_a = figures(sent=10, delivered=8, hard_bounced=1, soft_bounced=1, complained=1,
                    opened_human=4, opened_machine=2, clicked_human=2,
                    deliver_p50_s=0.5, deliver_p95_s=2.0)
    pod_b = figures(sent=10, delivered=10, unsubscribed=1, opened_human=2, clicked_human=1,
                    deliver_p50_s=0.7, deliver_p95_s=1.0)
    merged = report.merge_kpi_figures([pod_a, pod_b])
    assert merged["sent"] == 20 and merged["delivered"] == 18
    assert merged["delivery_rate"] == pytest.approx(0.9)
    assert merged["hard_bounce_rate"] == pytest.approx(1 / 20)
    assert merged["complaint_rate"] == pytest.approx(1 / 18)
    assert merged["unsubscribe_rate"] == pytest.approx(1 / 18)
    assert merged["open_rate"] == pytest.approx(6 / 18), "human opens only"
    assert merged["click_rate"] == pytest.approx(3 / 18)
    assert (merged["deliver_p50_s"], merged["deliver_p95_s"]) == (0.7, 2.0)
    empty = report.merge_kpi_figures([figures()])
    assert empty["delivery_rate"] is None and empty["open_rate"] is None
    assert empty["deliver_p95_s"] is None


def test_campaign_kpis_gather_one_tag_over_one_window_from_every_pod() -> None:
    def kpis(window: str, by: dict[str, Any]) -> dict[str, Any]:
        return {"windows": {window: {"total": figures(), "by": by}}, "days": {}}

    pods = [
        kpis("24h", {"tag:campaign": {"spring": figures(sent=3, delivered=3)},
                     "tag:segment": {"vip": figures(sent=99)}}),
        kpis("24h", {"tag:campaign": {"spring": figures(sent=2, delivered=1),
                                      "autumn": figures(sent=1)}}),
        kpis("1h", {"tag:campaign": {"spring": figures(sent=50)}}),
        {},  # a pod that reported no KPIs yet
    ]
    per_campaign = report.campaign_kpis(pods)
    assert list(per_campaign) == ["autumn", "spring"]
    assert per_campaign["spring"]["sent"] == 5 and per_campaign["spring"]["delivered"] == 4
    assert report.campaign_kpis(pods, window="1h")["spring"]["sent"] == 50
    assert report.campaign_kpis(pods, tag="segment")["vip"]["sent"] == 99


def test_kpi_table_has_one_row_per_campaign_with_rates_and_machine_opens_apart() -> None:
    per_campaign = {
        "spring": report.merge_kpi_figures([figures(sent=4, delivered=4, opened_human=2,
                                                    opened_machine=1, clicked_human=1,
                                                    deliver_p50_s=0.25, deliver_p95_s=1.5)]),
        "a|b": report.merge_kpi_figures([figures(sent=1)]),
        "_other": report.merge_kpi_figures([figures()]),
    }
    table = report.render_kpi_table(per_campaign)
    lines = table.splitlines()
    assert lines[0].startswith("| campaign | sent | delivered |")
    columns = {line.replace("\\|", "").count("|") for line in lines}
    assert len(columns) == 1, "every row has as many cells as the header"
    spring = next(line for line in lines if line.startswith("| spring "))
    assert "| 4 (100.0 %) |" in spring
    assert "| 2 / 1 | 50.0 % |" in spring
    assert "| 1 | 25.0 % |" in spring
    assert "0.2 s / 1.5 s" in spring
    assert any(line.startswith("| a\\|b |") for line in lines)
    assert any(line.startswith("| (other) |") for line in lines)
    assert report.render_kpi_table({}) == "No figures per campaign tag were reported.\n"


def test_summary_and_report_carry_the_events_scene_figures_and_the_campaign_table() -> None:
    from mailfleet_sandbox import event_scenes
    from mailfleet_sandbox.scenes import SceneResult

    scene = SceneResult("events", "Events")
    figures = {"webhook_events": {"delivered": 3, "opened": 2}, "webhook_missing": 0,
               "opens_recorded": 1, "opens_simulated": 1, "clicks_recorded": 1,
               "clicks_simulated": 1, "machine_opens": 1, "machine_opens_simulated": 1}
    per_campaign = report.campaign_kpis([{"windows": {"24h": {"by": {"tag:campaign": {
        "spring": {"sent": 3, "delivered": 3, "opened_human": 1, "opened_machine": 1}}}}}}])
    scene.details.update(events=figures, kpis_by_campaign=per_campaign,
                         outbox_at_outage_end={"pending": 9})
    summary = report.build_summary([scene], {}, total_s=1.0, day_seconds=12.0)
    assert {k: summary[k] for k in report.EVENT_KEYS} == figures
    assert summary["outbox_pending_at_outage_end"] == 9
    page = report.render_markdown(summary)
    assert "**events missing after the outage** | **0**" in page
    assert "| spring | 3 | 3 (100.0 %)" in page
    # Without the scene the fields are there, empty, and the section is left out.
    bare = report.build_summary([], {}, total_s=1.0, day_seconds=12.0)
    assert bare["webhook_missing"] is None and "Events and engagement" not in \
        report.render_markdown(bare)
    # The pool patch: tracking on for marketing only, machine window off, classes kept.
    pool = {"spec": {"classes": [{"name": "transactional"}, {"name": "marketing", "bulk": True}]}}
    patch = event_scenes.tracking_patch(pool)["spec"]
    assert patch["tracking"] == {"host": event_scenes.TRACK_HOST, "machineWindow": "0s"}
    assert patch["classes"] == [{"name": "transactional"}, {"name": "marketing", "bulk": True,
                                "tracking": {"opens": True, "clicks": True}}]
    assert "tracking" not in pool["spec"]["classes"][1]
