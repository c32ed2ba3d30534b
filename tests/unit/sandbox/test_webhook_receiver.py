"""The sandbox's webhook receiver, over real loopback sockets: it takes a batch signed with the
webhook's key within the replay window, and answers 401 to a bad signature, a stale or future
timestamp and an unknown webhook, recording nothing of them; it can go down (connections
refused) and come back on the same port; it serves HTTPS with a sandbox CA certificate."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from mailfleet_sandbox import webhook_receiver
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.webhook_receiver import WebhookReceiver

KEY = b"k" * 32
NOW = 1_800_000_000.0


def event(event_id: str, type_: str = "delivered", message: str = "m1") -> dict[str, Any]:
    return {"schema": "mailfleet.io/event/v1", "id": event_id, "type": type_,
            "message_id": message, "recipient": "a@example.test", "tags": {}}


def batch(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver({"crm": KEY}, host="127.0.0.1", clock=lambda: NOW) as r:
        yield r


async def post(receiver: WebhookReceiver, body: bytes, *, key: bytes = KEY,
               timestamp: float = NOW, webhook: str = "crm", signature: str | None = None,
               ssl_context: ssl.SSLContext | None = None) -> int:
    stamp = str(int(timestamp))
    headers = {"Content-Type": "application/json", "Mailfleet-Timestamp": stamp,
               "Mailfleet-Webhook": webhook,
               "Mailfleet-Signature": signature or webhook_receiver.sign(key, stamp, body)}
    async with aiohttp.ClientSession() as session, session.post(
            receiver.url, data=body, headers=headers, ssl=ssl_context or False) as response:
        return response.status


async def test_a_signed_batch_in_the_window_is_taken_and_recorded_by_type(
    receiver: WebhookReceiver,
) -> None:
    body = batch(event("e1"), event("e2", "opened"), event("e3", "bounced", "m2"))
    assert await post(receiver, body) == 200
    assert receiver.by_type() == {"delivered": 1, "opened": 1, "bounced": 1}
    assert [e["id"] for e in receiver.of_message("m1")] == ["e1", "e2"]
    # Redelivered after a lost answer (at least once): counted once per event.
    assert await post(receiver, body, timestamp=NOW - 200) == 200
    assert receiver.by_type() == {"delivered": 1, "opened": 1, "bounced": 1}
    assert receiver.duplicates == 3 and receiver.batches == 2


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"key": b"x" * 32}, "bad-signature"),
        ({"signature": "v1=" + "0" * 64}, "bad-signature"),
        ({"signature": "sha1=abc"}, "bad-signature"),
        ({"timestamp": NOW - 301}, "stale-timestamp"),
        ({"timestamp": NOW + 301}, "stale-timestamp"),
        ({"webhook": "other"}, "unknown-webhook"),
    ],
    ids=["signed with another key", "a forged signature", "another signature scheme",
         "a timestamp past the 5-minute window (a replay)", "a timestamp from the future",
         "a webhook it has no key for"],
)
async def test_a_batch_that_fails_the_check_gets_401_and_is_not_recorded(
    receiver: WebhookReceiver, changes: dict[str, Any], reason: str
) -> None:
    assert await post(receiver, batch(event("e1")), **changes) == 401
    assert receiver.events == [] and receiver.batches == 0
    assert [r.reason for r in receiver.refused] == [reason]


async def test_a_body_altered_after_signing_is_refused(receiver: WebhookReceiver) -> None:
    signed = batch(event("e1"))
    signature = webhook_receiver.sign(KEY, str(int(NOW)), signed)
    assert await post(receiver, batch(event("e1", "clicked")), signature=signature) == 401


async def test_the_timestamp_is_part_of_what_is_signed(receiver: WebhookReceiver) -> None:
    """A captured batch replayed with a fresh timestamp does not verify."""
    body = batch(event("e1"))
    old = webhook_receiver.sign(KEY, str(int(NOW - 3600)), body)
    assert await post(receiver, body, signature=old) == 401


def test_any_v1_entry_may_match_during_a_key_rotation() -> None:
    body = b'{"events": []}'
    good = webhook_receiver.sign(KEY, "1", body)
    stale = webhook_receiver.sign(b"old" * 11, "1", body)
    assert webhook_receiver.signature_valid(KEY, "1", body, f"{stale}, {good}")
    assert not webhook_receiver.signature_valid(KEY, "1", body, stale)


async def test_a_signed_batch_that_is_not_json_events_gets_400(receiver: WebhookReceiver) -> None:
    assert await post(receiver, b'{"events": "nope"}') == 400
    assert receiver.events == []


async def test_down_refuses_connections_and_up_takes_batches_again_on_the_same_port(
    receiver: WebhookReceiver,
) -> None:
    port = receiver.port
    assert await post(receiver, batch(event("e1"))) == 200
    await receiver.down()
    assert not receiver.is_up
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(receiver, batch(event("e2")))
    await receiver.up()
    assert receiver.port == port
    assert await post(receiver, batch(event("e2"))) == 200
    assert [e["id"] for e in receiver.events] == ["e1", "e2"]


async def test_it_serves_https_with_a_certificate_for_its_address(tmp_path: Any) -> None:
    ca = SandboxCA()
    issued = ca.issue(["hooks.example.test"], addresses=["127.0.0.1"])
    client = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.pem")))
    async with WebhookReceiver({"crm": KEY}, host="127.0.0.1", clock=time.time,
                               ssl_context=issued.server_context(),
                               record_file=tmp_path / "events.jsonl") as receiver:
        assert receiver.url.startswith("https://127.0.0.1:")
        assert await post(receiver, batch(event("e1")), timestamp=time.time(),
                          ssl_context=client) == 200
    recorded = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(r["webhook"], r["id"]) for r in recorded] == [("crm", "e1")]


def test_the_receiver_and_the_senders_helper_agree_on_the_format() -> None:
    """The two sides are written apart (a shared bug would verify itself); once both exist
    they must agree: the contract's `verify(key, timestamp, body, signature, now)`."""
    signing = pytest.importorskip("mailfleet_sender.webhook_signing")
    body, stamp = batch(event("e1")), "1800000000"
    header = webhook_receiver.sign(KEY, stamp, body)
    assert signing.verify(KEY, stamp, body, header, now=NOW)
    assert not signing.verify(KEY, stamp, body + b" ", header, now=NOW)
    assert not signing.verify(KEY, stamp, body, header, now=NOW + 301)
