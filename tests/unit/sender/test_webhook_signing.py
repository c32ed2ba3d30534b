"""Webhook signatures as a receiver checks them (`webhook_signing.verify`, the helper
docs/events.md tells receivers to use), the retry schedule, and the batch body."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import outbox, webhook_delivery, webhook_signing

KEY = b"k" * 32
BODY = b'{"events":[{"id":"01J0000000000000000000000A"}]}'
NOW = 1_780_000_000.0
STAMP = str(int(NOW))


def test_a_good_signature_verifies() -> None:
    header = webhook_signing.signature(KEY, STAMP, BODY)
    assert header.startswith("v1=")
    assert webhook_signing.verify(KEY, STAMP, BODY, header, now=NOW)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    """What a receiver in any language recomputes (docs/events.md)."""
    expected = hmac.new(KEY, f"{STAMP}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert webhook_signing.signature(KEY, STAMP, BODY) == f"v1={expected}"


@pytest.mark.parametrize(("case", "key", "stamp", "body", "now"), [
    ("another key", b"x" * 32, STAMP, BODY, NOW),
    ("an altered body", KEY, STAMP, BODY.replace(b"A", b"B"), NOW),
    ("an altered timestamp", KEY, str(int(NOW) + 1), BODY, NOW),
    ("a stale request (replayed 6 minutes later)", KEY, STAMP, BODY, NOW + 360),
    ("a request dated in the future", KEY, STAMP, BODY, NOW - 360),
])
def test_a_bad_signature_is_refused(case: str, key: bytes, stamp: str, body: bytes,
                                    now: float) -> None:
    header = webhook_signing.signature(KEY, STAMP, BODY)
    assert not webhook_signing.verify(key, stamp, body, header, now=now), case


def test_the_replay_window_is_five_minutes_by_default_and_settable() -> None:
    header = webhook_signing.signature(KEY, STAMP, BODY)
    assert webhook_signing.verify(KEY, STAMP, BODY, header, now=NOW + 299)
    assert not webhook_signing.verify(KEY, STAMP, BODY, header, now=NOW + 301)
    assert webhook_signing.verify(KEY, STAMP, BODY, header, now=NOW + 599, tolerance_s=600)


@pytest.mark.parametrize("header", [
    "", "v1=", "deadbeef", "v2=" + "0" * 64, "v1=zz", "v1=" + "0" * 64,
])
def test_malformed_or_unknown_signatures_are_refused(header: str) -> None:
    assert not webhook_signing.verify(KEY, STAMP, BODY, header, now=NOW)


@pytest.mark.parametrize("stamp", ["", "abc", "-5", "1.5", "١٧٨٠٠٠٠٠٠٠", "9" * 40])
def test_malformed_timestamps_are_refused(stamp: str) -> None:
    header = webhook_signing.signature(KEY, "1780000000", BODY)
    assert not webhook_signing.verify(KEY, stamp, BODY, header, now=NOW)


def test_one_matching_signature_among_several_is_enough() -> None:
    """Room for a later scheme or a second key during rotation."""
    good = webhook_signing.signature(KEY, STAMP, BODY)
    header = f"v2=abc, v1={'0' * 64}, {good}"
    assert webhook_signing.verify(KEY, STAMP, BODY, header, now=NOW)


@given(st.binary(max_size=512), st.binary(min_size=1, max_size=64))
def test_any_body_signed_with_a_key_verifies_with_it_only(body: bytes, key: bytes) -> None:
    header = webhook_signing.signature(key, STAMP, body)
    assert webhook_signing.verify(key, STAMP, body, header, now=NOW)
    assert not webhook_signing.verify(key + b"!", STAMP, body, header, now=NOW)


def test_the_backoff_doubles_from_retry_first_up_to_retry_max() -> None:
    schedule = [webhook_delivery.backoff_delay(n, first=1.0, maximum=300.0) for n in range(12)]
    assert schedule == [0.0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert webhook_delivery.backoff_delay(10_000, first=1.0, maximum=300.0) == 300.0


def test_a_batch_body_is_the_stored_lines_in_outbox_order() -> None:
    rows = (outbox.Row(1, NOW, '{"id":"a"}'), outbox.Row(3, NOW, '{"id":"b","t":"é"}'))
    body = webhook_delivery.batch_body(rows)
    assert json.loads(body) == {"events": [{"id": "a"}, {"id": "b", "t": "é"}]}


def test_the_receiver_snippet_in_the_docs_verifies_what_the_sender_signs() -> None:
    """docs/events.md tells receivers how to check a signature in a few lines: they work."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    [snippet] = [b for b in blocks if "def verify" in b]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # the documented code, as a receiver would paste it
    verify = namespace["verify"]
    stamp = str(int(time.time()))
    header = webhook_signing.signature(KEY, stamp, BODY)
    assert verify(KEY, stamp, BODY, header)
    assert not verify(KEY, stamp, BODY + b" ", header)
    assert not verify(b"other", stamp, BODY, header)
    old = str(int(time.time()) - 600)
    assert not verify(KEY, old, BODY, webhook_signing.signature(KEY, old, BODY))
