"""A stand-in for the senders' tracking endpoints (issue 20 contract: GET /t/o/<token>.gif is the
pixel, GET /t/c/<token> a 302 to the original URL) and builders of tracked messages, for the
engagement simulator's tests. The stand-in does not verify tokens; it records every request
(path, User-Agent, Host) so a test sees exactly what the simulated readers fetched.

A click redirects to `/landing/<token>` on the stand-in itself: a client that followed the
redirect would show up there.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from email.message import EmailMessage

import pytest
from aiohttp import web

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
STANDIN_ADDRESS = "127.0.0.23"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(message_id: str, recipient: str | None = None, url: str | None = None,
               kind: str = "o") -> str:
    """A token shaped like the contract's (the signature is a stand-in: nothing verifies it)."""
    payload = json.dumps({"m": message_id, "r": recipient, "u": url, "k": kind},
                         separators=(",", ":")).encode()
    return _b64(payload) + "." + _b64(hashlib.sha256(payload).digest()[:16])


def tracked_message(message_id: str, *, to: str = "alice@gmail.test",
                    base: str = "https://track.test", pixel: bool = True,
                    links: Sequence[str] = ("https://shop.example/spring", "https://shop.example/"),
                    cte: str = "quoted-printable") -> bytes:
    """A multipart/alternative message whose HTML part carries a pixel on `base` and tracked
    links to `links` (plus one untracked link), as the senders' rewriting produces it."""
    message = EmailMessage()
    message["From"] = "news@example.test"
    message["To"] = to
    message["Subject"] = f"Offers {message_id}"
    message["Message-ID"] = f"<{message_id}@example.test>"
    message.set_content("Our spring offers.\n")
    anchors = "".join(
        f'<p><a href="{base}/t/c/{mint_token(message_id, to, url, "c")}">offer {n}</a></p>'
        for n, url in enumerate(links)
    )
    image = (f'<img src="{base}/t/o/{mint_token(message_id, to)}.gif" width="1" height="1" '
             'alt="">' if pixel else "")
    body = (f"<html><body><h1>Spring</h1>{anchors}"
            f'<p><a href="https://example.test/about">about us</a></p>{image}</body></html>')
    message.add_alternative(body, subtype="html", cte=cte)
    return bytes(message)


@dataclasses.dataclass(frozen=True)
class Hit:
    path: str
    user_agent: str
    host: str


@dataclasses.dataclass
class TrackingStandIn:
    address: str
    port: int = 0
    hits: list[Hit] = dataclasses.field(default_factory=list)
    missing: set[str] = dataclasses.field(default_factory=set)
    """Tokens answered 404 (as a forged or unknown token is)."""

    def hits_on(self, prefix: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path.startswith(prefix)]

    def app(self) -> web.Application:
        async def record(request: web.Request) -> None:
            self.hits.append(Hit(request.path, request.headers.get("User-Agent", ""),
                                 request.headers.get("Host", "")))

        async def pixel(request: web.Request) -> web.StreamResponse:
            await record(request)
            name = request.match_info["name"]
            if not name.endswith(".gif") or name.removesuffix(".gif") in self.missing:
                raise web.HTTPNotFound()
            return web.Response(body=GIF, content_type="image/gif",
                                headers={"Cache-Control": "no-store"})

        async def click(request: web.Request) -> web.StreamResponse:
            await record(request)
            token = request.match_info["token"]
            if token in self.missing:
                raise web.HTTPNotFound()
            raise web.HTTPFound(f"http://{self.address}:{self.port}/landing/{token}")

        async def landing(request: web.Request) -> web.StreamResponse:
            await record(request)
            return web.Response(text="landing page")

        app = web.Application()
        app.router.add_get("/t/o/{name}", pixel)
        app.router.add_get("/t/c/{token}", click)
        app.router.add_get("/landing/{token}", landing)
        return app


@contextlib.asynccontextmanager
async def running_standin(address: str = STANDIN_ADDRESS,
                          tls: ssl.SSLContext | None = None) -> AsyncIterator[TrackingStandIn]:
    """The stand-in on `address` (free port), over TLS when given a server context."""
    standin = TrackingStandIn(address)
    runner = web.AppRunner(standin.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, 0, ssl_context=tls)
    await site.start()
    standin.port = int(runner.addresses[0][1])
    try:
        yield standin
    finally:
        await runner.cleanup()


@pytest.fixture
async def tracking_standin() -> AsyncIterator[TrackingStandIn]:
    """The tracking stand-in over plain HTTP on 127.0.0.23."""
    async with running_standin() as standin:
        yield standin
