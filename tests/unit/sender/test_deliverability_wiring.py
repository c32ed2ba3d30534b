"""The deliverability layer's pure parts as the core uses them: config, classification with
soft-to-hard escalation, report matching through our marks, hand-off targeting, the spool's
hand-off and dedup rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mailfleet_sandbox import reports as sandbox_reports
from mailfleet_sender import (
    bounces,
    clock,
    config,
    deliverability,
    feedback,
    handoff,
    hooks,
    metrics,
    reports,
    service,
    spool,
)

KEY = b"k" * 32
MARKS = feedback.Marks(trace_keys=(KEY,))
ORIGINAL = (b"From: news@example.test\r\nTo: jane@gmail.test\r\nSubject: hi\r\n"
            b"Message-ID: <m1@example.test>\r\n\r\nbody\r\n")


def _traced(recipient: str = "jane@gmail.test") -> bytes:
    trace = reports.encode_trace(
        reports.Trace("pod_0.7", recipient, "marketing", "192.0.2.10"), KEY
    )
    return f"{reports.TRACE_HEADER}: {trace}\r\n".encode() + ORIGINAL


def test_the_deliverability_section_is_camel_case_strict_and_defaulted() -> None:
    cfg = config.parse_config(
        "deliverability:\n  bounceDomain: bounces.example.com\n  feedbackPort: 2525\n"
        "  peers: {service: pool-pods.mail.svc}\n"
        "  linkKeyDir: /etc/mailfleet/secrets/links\n"
        "  peerTokenFile: /etc/mailfleet/secrets/peers/token\n"
        "  shaping: {providers: {gmail: {threshold: 5}}}\n"
    )
    d = cfg.deliverability
    assert (d.bounce_domain, d.feedback_port, d.peers.service) == (
        "bounces.example.com", 2525, "pool-pods.mail.svc")
    assert d.shaping.for_provider("gmail").threshold == 5
    assert d.shaping.for_provider("yahoo").threshold == 2  # built-in rules stay
    with pytest.raises(config.ConfigError, match=r"deliverability\.bounceDomian"):
        config.parse_config("deliverability: {bounceDomian: x}\n")
    with pytest.raises(config.ConfigError, match="service or urls"):
        config.parse_config("deliverability: {peers: {service: a, urls: [http://b]}}\n")


@pytest.mark.parametrize(
    ("listen", "pod_ip", "expected"),
    [
        (None, "10.1.2.3", "10.1.2.3"),
        (None, None, "0.0.0.0"),
        ("127.0.0.1", "10.1.2.3", "127.0.0.1"),
    ],
    ids=["listeners bind the pod IP when the downward API gives it",
         "without POD_IP they bind every address",
         "an explicit listenAddress wins"],
)
def test_listen_address_defaults_to_the_pod_ip(
    tmp_path: Path, listen: str | None, pod_ip: str | None, expected: str
) -> None:
    path = tmp_path / "sender.yaml"
    path.write_text(f"spoolDir: {tmp_path}\n"
                    + (f"submission: {{listenAddress: '{listen}'}}\n" if listen else ""))
    env = {"POD_NAME": "p-0", **({"POD_IP": pod_ip} if pod_ip else {})}
    assert service.Service(path, env=env).listen_address == expected


@pytest.fixture
def layer(tmp_path: Path) -> deliverability.Deliverability:
    cfg = config.parse_config(f"spoolDir: {tmp_path}\nbounces: {{softToHardAfter: 3}}\n")
    store = spool.Spool.open(tmp_path)
    store.start()
    keys = deliverability.load_keys(cfg, spool_dir=tmp_path)
    made = deliverability.Deliverability(
        cfg=cfg, keys=keys, node_id="pod-0", spool_=store, clock_=clock.Clock(),
        metric_set=metrics.Metrics(), suppression_path=tmp_path / "s.sqlite3",
    )
    yield made
    made.close()
    store.close()


def _outcome(reply: hooks.Reply, c: hooks.Classification, rcpt: str) -> hooks.Outcome:
    return hooks.Outcome(
        delivery_id=1, recipient=rcpt, domain="gmail.test", class_name="marketing",
        source_ip="192.0.2.1", provider="gmail", verdict=c.verdict, reply=reply,
        classification=c, attempts=1,
    )


def test_soft_bounces_in_a_row_become_hard_and_suppress(
    layer: deliverability.Deliverability,
) -> None:
    full = hooks.Reply(452, "Mailbox full", enhanced="4.2.2", provider="gmail")
    verdicts = []
    for _ in range(3):
        c = layer.classify(full, "Full@gmail.test")
        verdicts.append((c.verdict, c.category))
        layer.observe(_outcome(full, c, "Full@gmail.test"))
    assert verdicts == [
        (hooks.Verdict.DEFERRED, "soft_bounce"),
        (hooks.Verdict.DEFERRED, "soft_bounce"),
        (hooks.Verdict.BOUNCED, "hard_bounce"),
    ]
    assert layer.is_suppressed("full@gmail.test", "marketing")
    entry = layer.suppressions.get("full@gmail.test")
    assert entry is not None and entry.reason == "soft_to_hard"


def test_a_delivery_resets_the_soft_bounce_count(layer: deliverability.Deliverability) -> None:
    full = hooks.Reply(452, "Mailbox full", enhanced="4.2.2")
    for _ in range(2):
        layer.observe(_outcome(full, layer.classify(full, "a@gmail.test"), "a@gmail.test"))
    ok = hooks.Reply(250, "OK")
    layer.observe(_outcome(ok, hooks.Classification(hooks.Verdict.DELIVERED), "a@gmail.test"))
    assert layer.classify(full, "a@gmail.test").verdict is hooks.Verdict.DEFERRED


def test_a_throttling_reply_is_deferred_and_slows_the_provider(
    layer: deliverability.Deliverability,
) -> None:
    reply = hooks.Reply(421, "[TSS04] Messages from 192.0.2.1 temporarily deferred due to "
                        "unexpected volume", enhanced="4.7.0", provider="yahoo")
    for _ in range(2):
        c = layer.classify(reply, "x@yahoo.test")
        assert (c.verdict, c.category) == (hooks.Verdict.DEFERRED, "throttled")
        layer.observe(dataclass_replace(_outcome(reply, c, "x@yahoo.test"), provider="yahoo"))
    assert layer.pace("yahoo") < 1.0
    assert layer.pace("gmail") == 1.0


def dataclass_replace(outcome: hooks.Outcome, **changes: str) -> hooks.Outcome:
    import dataclasses

    return dataclasses.replace(outcome, **changes)  # type: ignore[arg-type]


def test_marks_on_a_marketing_copy(layer: deliverability.Deliverability) -> None:
    layer.cfg.deliverability.bounce_domain = "bounces.example.test"
    layer.cfg.deliverability.unsubscribe_base_url = "https://u.example.test"
    context = hooks.PrepareContext("Jane@gmail.test", "news@example.test", "marketing", True,
                                   "7", "192.0.2.1", 3)
    prepared = layer.prepare(ORIGINAL, context)
    assert prepared.startswith(b"List-Unsubscribe: <https://u.example.test/v1/unsubscribe/")
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in prepared
    transactional = hooks.PrepareContext("j@gmail.test", "n@example.test", "tx", False, "7")
    assert layer.prepare(ORIGINAL, transactional) is ORIGINAL
    stamped = layer.stamp(prepared, context)
    header = stamped.split(b"\r\n", 1)[0].decode().partition(": ")[2]
    trace = reports.decode_trace(header, layer.keys.verifying)
    assert (trace.message_id, trace.recipient, trace.klass, trace.source_ip) == (
        "pod_0.7", "Jane@gmail.test", "marketing", "192.0.2.1")
    verp = layer.return_path(context)
    assert verp is not None and verp.endswith("@bounces.example.test")
    assert reports.decode_verp(verp).matches("jane@gmail.test", layer.keys.links[0].secret)
    null_sender = hooks.PrepareContext("j@gmail.test", "", "marketing", True, "7")
    assert layer.return_path(null_sender) is None  # a bounce never bounces


def test_a_dsn_is_matched_by_its_trace_header() -> None:
    dsn = sandbox_reports.build_dsn(_traced(), "jane@gmail.test")
    reading = feedback.read_report(dsn, ["b-x@bounces.test"], MARKS)
    [event] = reading.events
    assert (event.kind, event.recipient, event.category, event.class_name, event.source_ip) == (
        feedback.Kind.BOUNCE, "jane@gmail.test", bounces.Category.HARD_BOUNCE, "marketing",
        "192.0.2.10")


def test_a_dsn_without_headers_is_matched_by_its_verp_address() -> None:
    verp = reports.encode_verp_return_path("bounces.test", "pod_0.7", "jane@gmail.test", key=KEY)
    dsn = sandbox_reports.build_dsn(ORIGINAL, "jane@gmail.test")
    [event] = feedback.read_report(dsn, [verp], MARKS).events
    assert event.recipient == "jane@gmail.test" and event.message_ref == "pod_0.7"
    other = reports.encode_verp_return_path("bounces.test", "pod_0.7", "bob@gmail.test", key=KEY)
    with pytest.raises(reports.ForgedMark, match="verp_mismatch"):
        feedback.read_report(dsn, [other], MARKS)


def test_a_delay_dsn_changes_nothing_and_reports_without_marks_are_refused() -> None:
    delayed = sandbox_reports.build_dsn(_traced(), "jane@gmail.test", status="4.2.2")
    assert feedback.read_report(delayed, [], MARKS).events == ()
    with pytest.raises(reports.ReportError, match="unknown_message"):
        feedback.read_report(sandbox_reports.build_dsn(ORIGINAL, "jane@gmail.test"), [], MARKS)


def test_arf_abuse_is_a_complaint_but_not_spam_is_not() -> None:
    arf = sandbox_reports.build_arf(_traced(), source_ip="192.0.2.10",
                                    mail_from="news@example.test", rcpt_to="redacted@gmail.test")
    [event] = feedback.read_report(arf, ["fbl@x.test"], MARKS).events
    assert (event.kind, event.recipient) == (feedback.Kind.COMPLAINT, "jane@gmail.test")
    not_spam = arf.replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    assert feedback.read_report(not_spam, [], MARKS).events == ()


def test_the_mailto_unsubscribe_subject_carries_the_token() -> None:
    token = "A" * 40
    assert feedback.unsubscribe_token(f"Subject: unsubscribe {token}\r\n\r\n".encode()) == token
    assert feedback.unsubscribe_token(b"Subject: hello\r\n\r\n") is None


def test_hand_off_targets_are_stable_per_message_and_spread() -> None:
    urls = [f"http://10.0.0.{i}:8080" for i in range(4)]
    first = {handoff.rank_targets(f"key-{n}", urls)[0] for n in range(200)}
    assert first == set(urls)
    assert handoff.rank_targets("key-1", urls) == handoff.rank_targets("key-1", urls[::-1])
    without = [u for u in urls if u != handoff.rank_targets("key-1", urls)[0]]
    assert handoff.rank_targets("key-1", without) == handoff.rank_targets("key-1", urls)[1:]


async def test_the_spool_marks_hands_off_and_dedups_by_key(tmp_path: Path) -> None:
    store = spool.Spool.open(tmp_path)
    store.start()
    try:
        new = spool.NewMessage("a@x.test", ("r1@y.test", "r2@y.test"), ORIGINAL, "x.test",
                               "<m1>", "marketing", "high", 1.0)
        await store.submit(new)
        assert await store.mark_handoff() == 2
        assert store.load_pending() == []  # never delivered here again
        [item] = store.load_handoff()
        assert [r for _, r in item.deliveries] == ["r1@y.test", "r2@y.test"]
        assert (item.class_name, item.tier, item.data) == ("marketing", "high", ORIGINAL)
        await store.finish_handoff(item)
        assert store.load_handoff() == [] and store.count_pending() == 0

        keyed = spool.NewMessage("a@x.test", ("r@y.test",), ORIGINAL, "x.test", "<m2>",
                                 "marketing", None, 2.0, handoff_key="pod-1:abc")
        first = await store.submit(keyed)
        again = await store.submit(keyed)
        assert isinstance(first, list) and isinstance(again, spool.Known)
        assert again.message == first[0].message and store.count_pending() == 1
    finally:
        await asyncio.to_thread(store.close)
