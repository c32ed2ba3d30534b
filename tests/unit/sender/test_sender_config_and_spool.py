"""The config contract and the spool's durability rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mailfleet_sender import config, spool


def test_defaults_round_trip_through_camel_case_yaml() -> None:
    cfg = config.parse_config(
        "pool: p\nsubmission: {smtpPort: 2525, maxRecipients: 5}\n"
        "throttles: {rate: 100/s, providers: [{name: gmail, mxPatterns: ['*.google.com'],"
        " messagesPerSecond: 5}]}\n"
    )
    assert cfg.submission.smtp_port == 2525 and cfg.default_class == "transactional"
    assert cfg.throttles.provider_for(["alt1.gmail-smtp-in.l.google.com"]) is not None
    assert config.parse_config(config.dump_config(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("submission: {smtpPrt: 25}", "submission.smtpPrt"),
        ("retry: {maxAge: soon}", "retry.maxAge"),
        ("throttles: {rate: fast}", "throttles.rate"),
        ("delivery: {mode: relay}", "relay is missing"),
        ("classes: [{name: a}, {name: a}]", "unique"),
        ("key: [unclosed", "not valid YAML"),
        ("- a list", "mapping"),
    ],
    ids=["unknown key names its path", "bad duration", "bad rate", "relay mode needs a relay",
         "duplicate class", "YAML syntax error", "not a mapping"],
)
def test_invalid_configs_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError, match=fragment.replace(".", r"\.")):
        config.parse_config(text)


def _message(n: int, recipients: tuple[str, ...]) -> spool.NewMessage:
    return spool.NewMessage(sender="s@x.test", recipients=recipients, data=b"m%d" % n,
                            from_domain="x.test", message_id=f"<{n}>", class_name="c",
                            tier=None, created=1.0)


async def test_spool_keeps_pending_deliveries_until_final_and_survives_reopen(
    tmp_path: Path,
) -> None:
    store = spool.Spool.open(tmp_path)
    store.start()
    first = await store.submit(_message(1, ("a@x.test", "b@y.test")))
    await store.submit_many([_message(n, ("c@x.test",)) for n in range(2, 50)])
    assert {d.domain for d in first} == {"x.test", "y.test"}
    store.update([spool.Update(first[0].id, first[0].message, "delivered", 1, 0, "250 ok")],
                 [spool.Count(day=7, address="10.0.0.1", kind="sent")])
    store.update([spool.Update(first[1].id, first[1].message, "queued", 1, 99.0, "451 later")])
    await store.flush()
    assert await store.read_data(first[0].message) == b"m1"
    store.close()

    reopened = spool.Spool.open(tmp_path)
    pending = reopened.load_pending()
    assert len(pending) == 49
    retried = next(d for d in pending if d.id == first[1].id)
    assert (retried.attempts, retried.next_attempt, retried.last_response) == (1, 99.0,
                                                                              "451 later")
    assert reopened.load_counters(7) == {("10.0.0.1", "sent"): 1}
    reopened.start()
    reopened.update([spool.Update(first[1].id, first[1].message, "bounced", 2, 0, "550")])
    await reopened.flush()
    assert await reopened.read_data(first[1].message) is None  # body gone with last recipient
    reopened.close()


async def test_a_failed_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    store = spool.Spool.open(tmp_path)
    store.start()
    bad = spool.NewMessage(sender="s@x.test", recipients=("a@x.test", None),  # type: ignore[arg-type]
                           data=b"x", from_domain="x.test", message_id="<m>", class_name="c",
                           tier=None, created=1.0)
    with pytest.raises(spool.SpoolError):
        await store.submit(bad)
    # The writer survived: the next write commits. The bound only turns a wedged writer into a
    # failure instead of a hang; a durable (fsync'd) commit on a busy disk may take seconds.
    good = await asyncio.wait_for(store.submit(_message(2, ("ok@x.test",))), 30)
    assert len(good) == 1
    store.close()
    assert [d.recipient for d in spool.Spool.open(tmp_path).load_pending()] == ["ok@x.test"]
