"""A reverse proxy in front of the sandbox's API server that fails on demand (tests, benches).

Point an operator (or one `Leadership` instance) at the proxy instead of the API server, then
switch its mode at run time:

- `pass`: forward everything, watch streams included (chunked and long-lived, relayed chunk by
  chunk as they come);
- `error`: answer every new request `503` with a Kubernetes `Status` body, for a while
  (`error(seconds=5)`), then pass again; streams already open keep flowing;
- `blackhole`: accept connections and read requests but never answer them, and relay nothing
  more on open streams: what a partition looks like to the client. When the blackhole ends,
  held requests and stalled streams carry on, as TCP would after a healed partition (a client
  with a timeout has given up by then).

TLS: in front of the real control plane the proxy terminates TLS itself, with a serving
certificate for its own address issued by the sandbox CA (`serving_certificate`), so a
kubeconfig keeps its CA and only its `server` changes (`write_kubeconfig`, `connection_via`).
Upstream, it forwards the caller's `Authorization` header (bearer tokens: the API server sees
the caller's own identity). A caller that authenticates with a client certificate cannot have
it forwarded (TLS ends here); such requests go upstream with the proxy's own client
certificate, in the sandbox the admin's (`upstream_client`). Requests with a bearer token never
carry that certificate, so the API server cannot mistake them for the admin. In front of the
emulator (plain HTTP, no authentication) it is plain HTTP on both sides.

Not supported: protocol upgrades (exec, attach, port-forward).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import ipaddress
import json
import logging
import ssl
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailfleet_sandbox import pki

if TYPE_CHECKING:
    from mailfleet_operator.kube.config import Connection

    from mailfleet_sandbox.control_plane import ControlPlane

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
"""Headers that describe one connection, not the message: never copied across the proxy."""


class Mode(enum.Enum):
    PASS = "pass"
    ERROR = "error"
    BLACKHOLE = "blackhole"


def serving_certificate(authority: pki.SandboxPKI, host: str) -> pki.KeyPair:
    """A serving certificate for `host` (an IP address or a name) from the sandbox CA, written
    next to the CA's files and reused."""
    authority.ensure()
    stem = f"api-fault-proxy-{host}".replace(":", "_")
    pair = pki.KeyPair(authority.directory / f"{stem}.crt", authority.directory / f"{stem}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    ca_key = serialization.load_pem_private_key(authority.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(authority.ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api-fault-proxy")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + pki.VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pair.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pair.key.chmod(0o600)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status, as the API server answers errors."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class ApiFaultProxy:
    """`async with ApiFaultProxy(upstream=...) as proxy:`; then `proxy.error()`,
    `proxy.blackhole()`, `proxy.passthrough()`."""

    def __init__(
        self,
        *,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_ca: Path | None = None,
        upstream_client: pki.KeyPair | None = None,
        serving: pki.KeyPair | None = None,
    ) -> None:
        """`upstream_ca`: the CA of an https upstream; `upstream_client`: the identity used
        for callers without an Authorization header; `serving`: certificate to serve TLS with
        (None: plain HTTP)."""
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        self._upstream_ca = upstream_ca
        self._upstream_client = upstream_client
        self._serving = serving
        self._mode = Mode.PASS
        self._mode_changed = asyncio.Event()
        self._revert: asyncio.TimerHandle | None = None
        self._runner: web.AppRunner | None = None
        self._as_caller: aiohttp.ClientSession | None = None
        self._as_proxy: aiohttp.ClientSession | None = None
        self.requests = 0
        """Requests received (all modes): a test can see that a client kept trying."""

    @classmethod
    def for_control_plane(cls, plane: ControlPlane, *, host: str = "127.0.0.1") -> ApiFaultProxy:
        """In front of a `control_plane.ControlPlane`: TLS from the sandbox CA, the admin's
        certificate for callers that authenticate with a client certificate."""
        authority = plane.pki
        return cls(
            upstream=plane.url, host=host, upstream_ca=authority.ca.cert,
            upstream_client=authority.client("admin", "kubernetes-admin", ("system:masters",)),
            serving=serving_certificate(authority, host),
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> ApiFaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._as_caller = self._session(with_client_certificate=False)
        self._as_proxy = self._session(with_client_certificate=True)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        context = None
        if self._serving is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._serving.cert), str(self._serving.key))
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context)
        await site.start()
        for address in self._runner.addresses:
            self.port = int(address[1])
            break

    async def stop(self) -> None:
        self._cancel_revert()
        self._set(Mode.PASS)  # let held requests go, so shutdown does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in (self._as_caller, self._as_proxy):
            if session is not None:
                await session.close()
        self._as_caller = self._as_proxy = None

    def _session(self, *, with_client_certificate: bool) -> aiohttp.ClientSession:
        context: ssl.SSLContext | bool = False
        if self.upstream.startswith("https://"):
            context = ssl.create_default_context(
                cafile=str(self._upstream_ca) if self._upstream_ca else None)
            if with_client_certificate and self._upstream_client is not None:
                context.load_cert_chain(str(self._upstream_client.cert),
                                        str(self._upstream_client.key))
        # No total timeout: watches last as long as the caller keeps them.
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(ssl=context),
            auto_decompress=False,
        )

    # --- modes --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self._serving is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def passthrough(self) -> None:
        self._cancel_revert()
        self._set(Mode.PASS)

    def error(self, seconds: float | None = 5.0) -> None:
        """503 to every new request for `seconds` (None: until changed), then pass."""
        self._cancel_revert()
        self._set(Mode.ERROR)
        if seconds is not None:
            self._revert = asyncio.get_running_loop().call_later(seconds, self.passthrough)

    def blackhole(self) -> None:
        """Never answer, relay nothing, until the mode changes."""
        self._cancel_revert()
        self._set(Mode.BLACKHOLE)

    def _set(self, mode: Mode) -> None:
        if mode is not self._mode:
            log.info("api fault proxy mode", extra={"mode": mode.value, "proxy": self.url})
        self._mode = mode
        self._mode_changed.set()
        self._mode_changed = asyncio.Event()

    def _cancel_revert(self) -> None:
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None

    async def _through_blackhole(self) -> None:
        while self._mode is Mode.BLACKHOLE:
            await self._mode_changed.wait()

    # --- forwarding ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await self._through_blackhole()
        if self._mode is Mode.ERROR:
            return web.Response(
                status=503, content_type="application/json",
                text=json.dumps(status_body(503, "ServiceUnavailable",
                                            "api fault proxy: injected error")),
            )
        body = await request.read()
        await self._through_blackhole()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        session = self._as_caller if "Authorization" in request.headers else self._as_proxy
        assert session is not None, "proxy not started"
        try:
            upstream = await session.request(
                request.method, self.upstream + request.rel_url.raw_path_qs,
                headers=headers, data=body or None, allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as error:
            return web.Response(
                status=502, content_type="application/json",
                text=json.dumps(status_body(502, "BadGateway", f"api fault proxy: {error}")),
            )
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            # Relayed as it comes: a watch event reaches the caller when the server sends it.
            while True:
                chunk = await upstream.content.readany()
                if not chunk:
                    break
                await self._through_blackhole()
                await response.write(chunk)
            await response.write_eof()
            return response

    # --- pointing clients here ----------------------------------------------------------------

    def write_kubeconfig(self, source: Path, target: Path) -> Path:
        """A copy of the kubeconfig `source` whose clusters point at the proxy (credentials
        and CA kept: the proxy's certificate comes from the same CA)."""
        config = yaml.safe_load(Path(source).read_text())
        for cluster in config.get("clusters") or []:
            cluster["cluster"]["server"] = self.url
            if self._serving is None:
                cluster["cluster"].pop("certificate-authority", None)
                cluster["cluster"].pop("certificate-authority-data", None)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    def connection_via(self, connection: Connection) -> Connection:
        """The operator's `Connection`, aimed at the proxy instead of the API server."""
        return dataclasses.replace(connection, server=self.url)
