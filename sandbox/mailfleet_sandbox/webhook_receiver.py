"""The sandbox's webhook receiver: an application's endpoint for a pool's delivery events
(`spec.events.webhooks[]`, docs/events.md), on a 127.x address, over HTTPS with a certificate
from the sandbox CA (or plain HTTP for tests of the operator's loopback setting).

It stands for a user's application, so it checks each batch the way the documentation tells
one to, written here from the wire format alone and never with the sender's code (a shared
bug would verify itself): `Mailfleet-Signature: v1=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`
over the raw body, with the key of the webhook named by `Mailfleet-Webhook`, and
`Mailfleet-Timestamp` within `tolerance_s` of its clock, past or future (replays). A batch
that fails either is answered 401 and recorded nowhere but in `refused`; a good one is
answered 200 and its events are recorded in order, by type, and by id (the outbox delivers at
least once: a batch retried after a lost answer comes again, `duplicates` counts it).

`down()` closes the listener (the sender sees connections refused, as with an application
that is down) and `up()` opens it again on the same address and port, for the demo's outage
and the tests of the outbox's redelivery.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

SIGNATURE_HEADER = "Mailfleet-Signature"
TIMESTAMP_HEADER = "Mailfleet-Timestamp"
WEBHOOK_HEADER = "Mailfleet-Webhook"
TOLERANCE_S = 300.0
"""The replay window the documentation asks receivers to enforce (5 minutes)."""
MAX_BODY = 10 * 1024 * 1024


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The header value a sender must send: what this receiver expects (and what tests send)."""
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signature_valid(key: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """Any `v1=` entry of the header (comma-separated, for a key rotation) matches."""
    expected = sign(key, timestamp, body)
    return any(
        hmac.compare_digest(part.strip().encode(), expected.encode())
        for part in header.split(",")
        if part.strip().startswith("v1=")
    )


@dataclass(frozen=True)
class Refusal:
    webhook: str
    reason: str  # unknown-webhook, no-signature, bad-signature, stale-timestamp, bad-timestamp
    at: float


class WebhookReceiver:
    """`async with WebhookReceiver({"crm": key}, host="127.0.40.1") as receiver:`."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/mailfleet/events",
        ssl_context: ssl.SSLContext | None = None,
        tolerance_s: float = TOLERANCE_S,
        clock: Callable[[], float] = time.time,
        record_file: Path | None = None,
    ) -> None:
        self.keys = dict(keys)
        self.host, self.port, self.path = host, port, path
        self.ssl_context = ssl_context
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.record_file = record_file
        self.events: list[dict[str, Any]] = []
        """Every event of every accepted batch, in arrival order (duplicates included)."""
        self.ids: set[str] = set()
        self.duplicates = 0
        self.batches = 0
        self.refused: list[Refusal] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # ------------------------------------------------------------------ what it got
    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    def by_type(self) -> dict[str, int]:
        """Distinct events (by id) per type."""
        counts: collections.Counter[str] = collections.Counter()
        seen: set[str] = set()
        for event in self.events:
            event_id = str(event.get("id"))
            if event_id not in seen:
                seen.add(event_id)
                counts[str(event.get("type"))] += 1
        return dict(counts)

    def of_message(self, message_id: str) -> list[dict[str, Any]]:
        """The message's events in the order they arrived (per-message order is kept)."""
        return [e for e in self.events if e.get("message_id") == message_id]

    # ------------------------------------------------------------------ the endpoint
    def _refuse(self, webhook: str, reason: str) -> web.Response:
        self.refused.append(Refusal(webhook, reason, self.clock()))
        return web.json_response({"error": reason}, status=401)

    async def _receive(self, request: web.Request) -> web.Response:
        if self._site is None:  # a request in flight as it went down: not taken
            return web.json_response({"error": "down"}, status=503)
        body = await request.read()
        webhook = request.headers.get(WEBHOOK_HEADER, "")
        key = self.keys.get(webhook)
        if key is None:
            return self._refuse(webhook, "unknown-webhook")
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not signature:
            return self._refuse(webhook, "no-signature")
        try:
            sent_at = float(timestamp)
        except ValueError:
            return self._refuse(webhook, "bad-timestamp")
        # Signature first: an unsigned claim about time is worth nothing.
        if not signature_valid(key, timestamp, body, signature):
            return self._refuse(webhook, "bad-signature")
        if abs(self.clock() - sent_at) > self.tolerance_s:
            return self._refuse(webhook, "stale-timestamp")
        try:
            batch = json.loads(body)
            events = batch["events"]
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                raise TypeError("events is not a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad batch: {exc}"}, status=400)
        self.batches += 1
        for event in events:
            event_id = str(event.get("id"))
            if event_id in self.ids:
                self.duplicates += 1
            self.ids.add(event_id)
            self.events.append(event)
        if self.record_file is not None:
            with self.record_file.open("a", encoding="utf-8") as handle:
                for event in events:
                    handle.write(json.dumps({"webhook": webhook, **event}) + "\n")
        return web.json_response({"accepted": len(events)})

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(self.path, self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        """Listen (again, on the same port once it was chosen)."""
        if self._runner is None:
            raise RuntimeError("start() the receiver first")
        if self._site is not None:
            return
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context,
                           reuse_address=True)
        await site.start()
        self._site = site
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])

    async def down(self) -> None:
        """Stop listening and drop the open (keep-alive) connections: the sender's next
        request is refused until `up()`."""
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        if self._runner is not None and self._runner.server is not None:
            await self._runner.server.shutdown(timeout=1.0)

    @property
    def is_up(self) -> bool:
        return self._site is not None

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self.down()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
