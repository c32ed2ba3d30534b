"""Bounded input on the HTTP side (issue 16): bodies are read whole however the wire splits
them, under a per-route cap (413 beyond it); deeply nested JSON answers 400, not 500; and a
suppression timestamp from the far future neither poisons the list nor survives a restart."""

from __future__ import annotations

import json
import pathlib
import sqlite3
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import bodies, suppression
from sandbox_fixtures.sender import ADMIN_TOKEN, API_KEY, SenderFactory, base_config

TOKEN = "pool-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POISON = 2**63 - 1
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_SMALL = b"[" * 5_000 + b"]" * 5_000
"""Deep enough to overflow json's recursion, small enough for the one-address route's cap."""


async def _chunks(data: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    """The body in small pieces, each its own write (chunked transfer encoding)."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.fixture
async def node(tmp_path: pathlib.Path) -> AsyncIterator[tuple[str, suppression.SuppressionList]]:
    lst = suppression.SuppressionList(tmp_path / "s.sqlite", node_id="pod-0")
    app = web.Application()
    app.add_routes(suppression.suppression_routes(lst, suppression.bearer_authorizer(TOKEN)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.71", 0)
    await site.start()
    yield f"http://127.0.0.71:{runner.addresses[0][1]}", lst
    await runner.cleanup()
    lst.close()


def _entry(address: str, ts: int, origin: str = "pod-9") -> dict[str, object]:
    return suppression.Entry(address, True, "hard_bounce", "dsn", ts, origin).to_json()


async def test_a_10000_entry_push_sent_in_small_chunks_is_read_whole(
    node: tuple[str, suppression.SuppressionList],
) -> None:
    url, lst = node
    now = int(time.time() * 1_000_000)
    body = json.dumps(
        {"entries": [_entry(f"user{i}@example.org", now + i) for i in range(10_000)]}
    ).encode()
    assert len(body) > 1_000_000
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{url}/v1/suppressions/_replicate",
                             data=_chunks(body)) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["applied"] == 10_000
        too_big = b'{"entries": ["' + b"y" * (suppression.MAX_IMPORT_BYTES + 10) + b'"]}'
        async with http.post(f"{url}/v1/suppressions/_replicate",
                             data=_chunks(too_big, 64 * 1024)) as response:
            assert response.status == 413
    assert len(lst) == 10_000


async def test_deeply_nested_json_is_a_400_on_every_json_route(
    node: tuple[str, suppression.SuppressionList],
) -> None:
    url, lst = node
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for method, path in (("POST", "/v1/suppressions/_replicate"),
                             ("POST", "/v1/suppressions"),
                             ("PUT", "/v1/suppressions/a@example.org")):
            async with http.request(method, f"{url}{path}", data=DEEP_SMALL) as response:
                assert response.status == 400, (path, await response.text())
                assert "nested deeper" in (await response.json())["message"]
    assert len(lst) == 0


async def test_the_submission_and_admin_api_answer_400_to_deep_json_and_read_chunked_bodies(
    tmp_path: pathlib.Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    cfg["submission"]["maxMessageSize"] = 256 * 1024
    sender = await sender_factory(cfg)
    c = sender.client
    status, body = await c.request("POST", "/v1/messages", token=API_KEY, data=DEEP,
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and "nested deeper" in body["error"], body
    for path in ("/v1/assignment", "/v1/drain"):
        method = "PUT" if path == "/v1/assignment" else "POST"
        status, body = await c.request(method, path, admin=True, token=ADMIN_TOKEN, data=DEEP,
                                       headers={"Content-Type": "application/json"})
        assert status == 400, (path, body)
    # A raw message just under the cap, in 1 KiB pieces: read whole, accepted.
    message = (b"From: a@example.test\r\nTo: r@gmail.test\r\nSubject: big\r\n\r\n"
               + (b"x" * 76 + b"\r\n") * 3000)
    assert 200 * 1024 < len(message) < 256 * 1024
    status, body = await c.request("POST", "/v1/messages", token=API_KEY, data=_chunks(message),
                                   headers={"Content-Type": "message/rfc822"})
    assert status == 202, body
    # Over the cap, chunked (no Content-Length to refuse up front): 413, nothing stored.
    status, body = await c.request("POST", "/v1/messages", token=API_KEY,
                                   data=_chunks(message * 2, 16 * 1024),
                                   headers={"Content-Type": "message/rfc822"})
    assert status == 413, body


def test_bodies_loads_refuses_deep_nesting_that_json_itself_accepts() -> None:
    assert bodies.loads(b'{"a": [[1]]}') == {"a": [[1]]}
    with pytest.raises(bodies.BadJSON, match="nested deeper"):
        bodies.loads(b"[" * 65 + b"]" * 65)
    with pytest.raises(bodies.BadJSON, match="nested deeper"):
        bodies.loads(DEEP)
    with pytest.raises(bodies.BadJSON, match="malformed"):
        bodies.loads(b"{")


# ------------------------------------------------------------------ suppression clock


async def test_an_entry_from_the_far_future_is_refused_and_writes_keep_working(
    node: tuple[str, suppression.SuppressionList],
) -> None:
    url, lst = node
    now = int(time.time() * 1_000_000)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{url}/v1/suppressions/_replicate", json={"entries": [
            _entry("poison@example.org", POISON), _entry("fine@example.org", now),
        ]}) as response:
            assert response.status == 200
            assert (await response.json())["applied"] == 1
        async with http.put(f"{url}/v1/suppressions/later@example.org") as response:
            assert response.status == 201, await response.text()
        async with http.delete(f"{url}/v1/suppressions/later@example.org") as response:
            assert response.status == 200
    assert not lst.is_suppressed("poison@example.org")
    assert lst.is_suppressed("fine@example.org")
    assert lst.metrics.merge_rejected == 1
    assert max(e.ts for e in lst.entries(0)[0]) < now + suppression.MAX_SKEW_US


async def test_a_poisoned_file_recovers_at_start(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.sqlite"
    lst = suppression.SuppressionList(path, node_id="pod-0")
    await lst.add("a@example.org", "hard_bounce", "dsn")
    lst.close()
    # What an earlier version stored from a poisoned peer.
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO entries VALUES ('p@example.org', 'p@example.org', 1, 'x', 'y',"
                   " ?, 'pod-9', 99)", (POISON,))
    again = suppression.SuppressionList(path, node_id="pod-0")
    try:
        assert again.is_suppressed("p@example.org")  # the content is kept
        poisoned = again.get("p@example.org")
        assert poisoned is not None and poisoned.ts < time.time() * 1_000_000 + 1
        entry = await again.add("b@example.org", "complaint", "arf")
        assert entry.ts < POISON
        assert await again.remove("b@example.org") is not None
        # Re-stamped entries are changes again: peers pull them with a sane timestamp.
        changed, _ = again.entries(since=1)
        assert "p@example.org" in {e.address for e in changed}
    finally:
        again.close()
