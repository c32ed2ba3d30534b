"""The sandbox's MTA-STS policy host: HTTPS on a 127.x address serving
`/.well-known/mta-sts.txt` for every `mta-sts.<domain>` name, with a certificate from the
sandbox CA chosen by SNI (RFC 8461 §3.3). A domain's policy can be set, changed, or made to
fail (HTTP 500 or a certificate for another name), which is what the sender's tests and the
demo need. Point `mta-sts.<domain>` A records of the sandbox DNS at `host`.

It is also the sandbox's TLS-RPT collector (RFC 8460 §3 `https:` rua): every POST to another
path is kept in `reports` (body as sent, gzip or not) and answered 201.
"""

from __future__ import annotations

import ssl
from types import TracebackType

from aiohttp import web

from mailfleet_sandbox.certificates import SandboxCA


class PolicyServer:
    def __init__(self, ca: SandboxCA, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ca = ca
        self.host = host
        self.port = port
        self.policies: dict[str, str] = {}
        self.broken: set[str] = set()
        """Domains answered with HTTP 500."""
        self.wrong_name: set[str] = set()
        """Domains served a certificate for another name (a WebPKI failure)."""
        self.requests: list[str] = []
        self.reports: list[tuple[str, bytes]] = []
        """(path, body) of every report POSTed (TLS-RPT over HTTPS)."""
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._runner: web.AppRunner | None = None

    def set_policy(self, domain: str, *, mode: str, mx: list[str], max_age: int = 86400) -> str:
        text = "version: STSv1\r\nmode: {}\r\n{}max_age: {}\r\n".format(
            mode, "".join(f"mx: {m}\r\n" for m in mx), max_age
        )
        self.policies[domain] = text
        return text

    def _context_for(self, server_name: str) -> ssl.SSLContext:
        domain = server_name.removeprefix("mta-sts.")
        names = ["elsewhere.invalid"] if domain in self.wrong_name else [server_name]
        key = ",".join(names)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = self.ca.issue(names).server_context()
        return context

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name:
            sslobj.context = self._context_for(name)

    async def _serve(self, request: web.Request) -> web.Response:
        host = (request.host or "").split(":")[0].lower()
        domain = host.removeprefix("mta-sts.")
        self.requests.append(domain)
        if domain in self.broken:
            return web.Response(status=500, text="policy host is broken")
        text = self.policies.get(domain)
        if text is None:
            return web.Response(status=404, text="no policy")
        return web.Response(text=text, content_type="text/plain")

    async def _collect(self, request: web.Request) -> web.Response:
        self.reports.append((request.path, await request.read()))
        return web.Response(status=201, text="report received")

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/.well-known/mta-sts.txt", self._serve)
        app.router.add_post("/{path:.*}", self._collect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = self.ca.issue(["mta-sts.invalid"]).server_context()
        context.sni_callback = self._sni
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PolicyServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
