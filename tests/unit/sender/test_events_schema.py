"""Every event type the sender emits validates against docs/events.schema.json (what webhook
and log consumers code against), and the schema is strict: a field a type must carry, a field
it must not carry, or an unknown field is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mailfleet_sender import event_builders, events, hooks, spool, tags

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "docs" / "events.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
NOW = 1_780_000_000.25
BUILDER = event_builders.Builder(pool="newsletters", namespace="mail", pod_ip="10.1.2.3")
DELIVERY = spool.Delivery(
    id=7, message=42, recipient="ann@example.org", domain="example.org",
    class_name="marketing", tier=None, sender="news@example.test", from_domain="example.test",
    attempts=0, next_attempt=NOW, created=NOW - 3.5,
)


def _outcome(verdict: hooks.Verdict, reply: hooks.Reply | None,
             classification: hooks.Classification | None = None,
             delivery: spool.Delivery = DELIVERY) -> events.Event:
    return BUILDER.outcome(delivery, verdict, reply, classification, source="192.0.2.10",
                           provider="gmail", now=NOW)


def every_type() -> dict[str, events.Event]:
    """One event of each type, built the way the sender builds it."""
    deferred = spool.Delivery(**{**DELIVERY.__dict__, "attempts": 1})
    accepted = BUILDER.accepted(class_name="marketing", now=NOW)
    return {
        "accepted": events.Event(**{**accepted.__dict__, "message_id": "42",
                                    "recipient": "ann@example.org",
                                    "tags": {"campaign": "spring"}}),
        "delivered": _outcome(hooks.Verdict.DELIVERED,
                              hooks.Reply(250, "OK queued as 123", "data", "2.0.0")),
        "deferred": _outcome(hooks.Verdict.DEFERRED,
                             hooks.Reply(421, "try later", "rcpt", "4.7.0"),
                             hooks.Classification(hooks.Verdict.DEFERRED, "throttled", "421"),
                             delivery=deferred),
        "bounced": _outcome(hooks.Verdict.BOUNCED,
                            hooks.Reply(550, "no such user", "rcpt", "5.1.1"),
                            hooks.Classification(hooks.Verdict.BOUNCED, "hard_bounce",
                                                 "address does not exist")),
        "expired": BUILDER.outcome(DELIVERY, hooks.Verdict.EXPIRED,
                                   hooks.Reply(554, "message expired", "local", "4.4.7"), None,
                                   source="", provider="", now=NOW),
        "suppressed": BUILDER.outcome(DELIVERY, hooks.Verdict.SUPPRESSED,
                                      hooks.Reply(550, "recipient is suppressed", "local",
                                                  "5.7.1"), None,
                                      source="", provider="", now=NOW),
        "complained": BUILDER.complained(message_id="42", recipient="ann@example.org",
                                         class_name="marketing", ip="192.0.2.10", now=NOW),
        "unsubscribed": BUILDER.unsubscribed(recipient="ann@example.org",
                                             class_name="marketing", now=NOW),
        "opened": events.Event(type=events.EventType.OPENED, message_id="42",
                               recipient="ann@example.org", pool="newsletters", machine=True,
                               time=NOW),
        "clicked": events.Event(type=events.EventType.CLICKED, message_id="42", recipient=None,
                                pool="newsletters", url="https://example.org/offer?a=1",
                                machine=False, time=NOW),
    }


def _problems(body: dict[str, Any]) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(body)]


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False


def test_every_event_type_is_covered() -> None:
    assert set(every_type()) == {t.value for t in events.EventType}
    assert set(SCHEMA["properties"]["type"]["enum"]) == {t.value for t in events.EventType}


@pytest.mark.parametrize("kind", sorted(t.value for t in events.EventType))
def test_each_emitted_type_validates(kind: str) -> None:
    body = every_type()[kind].to_json()
    assert body["type"] == kind
    assert _problems(body) == []
    assert json.loads(events.dumps(body)) == body  # the stdout/webhook line round-trips


def test_a_reported_bounce_and_a_complaint_from_another_pod_validate() -> None:
    bounce = BUILDER.reported_bounce(message_id="9", recipient="bob@example.org",
                                     class_name=None, ip=None, hard=True, code="5.1.1",
                                     reason="user unknown", now=NOW)
    complaint = BUILDER.complained(message_id=None, recipient="bob@example.org",
                                   class_name=None, ip=None, now=NOW)
    for body in (bounce.to_json(), complaint.to_json()):
        assert _problems(body) == []
    assert bounce.to_json()["attempt"] is None and bounce.to_json()["reply"] is None


@pytest.mark.parametrize(("kind", "change", "why"), [
    ("bounced", {"bounce": None}, "a bounce says why"),
    ("delivered", {"bounce": {"kind": "hard", "code": "5.1.1", "reason": "x"}},
     "only a bounce has a bounce"),
    ("clicked", {"url": None}, "a click names its URL"),
    ("opened", {"url": "https://example.org/"}, "only a click has a URL"),
    ("opened", {"machine": None}, "an open says whether a machine fetched it"),
    ("delivered", {"machine": True}, "only opens and clicks are fetched by machines"),
    ("delivered", {"reply": None}, "a delivery quotes the remote reply"),
    ("accepted", {"reply": {"code": 250, "enhanced": None, "text": "ok"}},
     "nothing replied yet"),
    ("delivered", {"delay_s": None}, "a delivery says how long it took"),
    ("deferred", {"attempt": None}, "a deferral counts its attempt"),
    ("accepted", {"attempt": 1}, "no attempt yet"),
    ("delivered", {"message_id": None}, "a delivery names its message"),
    ("accepted", {"recipient": None}, "accepted is per recipient"),
    ("delivered", {"surprise": 1}, "no unknown fields"),
    ("delivered", {"schema": "mailfleet.io/event/v2"}, "the version is fixed"),
    ("delivered", {"time": "2026-12-05 10:11:12"}, "RFC 3339 UTC"),
    ("delivered", {"id": "not-an-id"}, "ULID or uuid4 hex"),
    ("bounced", {"bounce": {"kind": "hard", "code": "550", "reason": "x"}}, "RFC 3463 code"),
    ("accepted", {"tags": {"Campaign": "x"}}, "tag keys are lower case"),
    ("accepted", {"tags": {f"k{i}": "v" for i in range(11)}}, "at most 10 tags"),
    ("accepted", {"tags": {"campaign": "x" * 129}}, "values are at most 128 characters"),
])
def test_the_schema_refuses(kind: str, change: dict[str, Any], why: str) -> None:
    body = {**every_type()[kind].to_json(), **change}
    assert _problems(body), why


def test_a_tag_set_the_intake_accepts_the_schema_accepts() -> None:
    given = tags.parse_header(["campaign=spring-2026; segment=vip.gold; ab_test=B 2"])
    body = {**every_type()["accepted"].to_json(), "tags": given}
    assert _problems(body) == []


def test_bounce_kinds_follow_the_classifier() -> None:
    soft = _outcome(hooks.Verdict.BOUNCED, hooks.Reply(554, "spam detected", "data", None),
                    hooks.Classification(hooks.Verdict.BOUNCED, "blocked", "content policy"))
    bounce = soft.to_json()["bounce"]
    assert bounce == {"kind": "soft", "code": "5.0.0", "reason": "content policy"}
    assert every_type()["bounced"].to_json()["bounce"]["kind"] == "hard"


def test_an_unreadable_reply_still_makes_a_valid_event() -> None:
    odd = _outcome(hooks.Verdict.DEFERRED, hooks.Reply(-1, "x" * 5000, "connect", "4.4"),
                   None, delivery=spool.Delivery(**{**DELIVERY.__dict__, "attempts": 3}))
    body = odd.to_json()
    assert _problems(body) == []
    assert body["reply"]["code"] == 451 and body["reply"]["enhanced"] is None
    assert len(body["reply"]["text"]) == event_builders.REPLY_TEXT_MAX


def test_the_pods_own_address_is_reported_as_its_ip() -> None:
    local = BUILDER.outcome(DELIVERY, hooks.Verdict.DELIVERED, hooks.Reply(250, "ok"), None,
                            source=event_builders.LOCAL_SOURCE, provider="other", now=NOW)
    assert local.ip == "10.1.2.3"


def test_event_ids_are_ulids_sorted_by_time() -> None:
    first = events.new_event_id(NOW)
    later = events.new_event_id(NOW + 0.002)
    assert len(first) == 26 and first < later
    assert len({events.new_event_id(NOW) for _ in range(1000)}) == 1000
