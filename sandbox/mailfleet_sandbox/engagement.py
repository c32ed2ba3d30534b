"""Recipients at the simulated providers who read their mail (issue 20, item 4): they open a
known share of the delivered tracked messages, some through a prefetching image proxy as
Gmail does, and click a known share of tracked links, so the demo can hold what the senders
recorded against what really happened.

Only a recipient's copy of a message that carries an open pixel (found by `tracked_messages`)
is considered. Whether it is opened, by whom and which link is clicked is decided from the
seed and the copy alone (`decide`, over the pixel's token and the recipient): a test knows
the outcome in advance, and over many messages the shares hold.

The fetches are real HTTP GETs of the URLs in the message, but a tracking host never resolves
through DNS: `endpoints` maps each tracking host to a 127.x address, port and scheme (and the
CA that signs its certificate for https), and a URL whose host is not mapped is refused, never
fetched, so no traffic leaves 127.0.0.0/8. A click's redirect is recorded, not followed (the
original URL is somewhere on the internet). A human opens after a delay; a proxy fetches as
soon as the message arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import aiohttp
import yarl

from mailfleet_sandbox import tracked_messages
from mailfleet_sandbox.providers import ReceivedMessage, SmtpReceiver

log = logging.getLogger(__name__)

HUMAN_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
GMAIL_PROXY_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
"""What Gmail's image proxy sends: the machine fetcher the senders must tell from a reader."""
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_BODY_LIMIT = 64 * 1024

Kind = Literal["open", "click"]


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class EngagementSettings:
    """How the recipients of one provider behave. Shares are of considered copies (with a
    pixel); `proxy_share` is of the opens."""

    open_share: float = 0.5
    proxy_share: float = 0.0
    """Share of the opens made by a prefetching proxy (Gmail's image proxy), not a reader."""
    click_share: float = 0.1
    """Share of the copies (with at least one tracked link) where the reader clicks one link,
    whether or not the pixel was loaded (mail clients that block images still click)."""
    seed: str = "mailfleet"
    human_delay_s: float = 0.2
    """Mean seconds before a reader opens (each copy draws 0.5x to 1.5x of it)."""
    click_delay_s: float = 0.2
    """Mean seconds from the reading (or the open) to the click."""
    human_user_agent: str = HUMAN_USER_AGENT
    proxy_user_agent: str = GMAIL_PROXY_USER_AGENT
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("open_share", "proxy_share", "click_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in ("human_delay_s", "click_delay_s", "timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a tracking host is served inside the sandbox: the sandbox's own resolution."""

    address: str
    port: int
    scheme: Literal["http", "https"] = "http"
    ca_pem: bytes | None = None
    """The CA that signs the endpoint's certificate (https): never the system store."""

    def __post_init__(self) -> None:
        if ipaddress.ip_address(self.address) not in LOOPBACK:
            raise ValueError(f"{self.address} is not in 127.0.0.0/8: traffic stays on loopback")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme {self.scheme!r} must be http or https")
        if self.scheme == "https" and self.ca_pem is None:
            raise ValueError("an https endpoint needs the CA that signs its certificate")


# --------------------------------------------------------------------------- deciding


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the reader of one copy does; offsets are seconds after the copy arrived."""

    open: bool
    machine: bool
    """The open is a proxy's prefetch (at once), not a reader's."""
    click: str | None
    """The tracked link clicked, if any."""
    open_after_s: float = 0.0
    click_after_s: float = 0.0


def _draw(seed: str, key: str, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key, purpose)."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def copy_key(token: str, recipient: str) -> str:
    """What a decision is drawn from: one recipient's copy of one tracked message."""
    return f"{token}\x00{recipient.lower()}"


def decide(settings: EngagementSettings, key: str, links: Sequence[str] = ()) -> Decision:
    """Pure and deterministic: the same seed and key always give the same decision."""
    seed = settings.seed
    opened = _draw(seed, key, "open") < settings.open_share
    machine = opened and _draw(seed, key, "proxy") < settings.proxy_share
    click = None
    if links and _draw(seed, key, "click") < settings.click_share:
        click = links[int(_draw(seed, key, "link") * len(links))]
    reading = settings.human_delay_s * (0.5 + _draw(seed, key, "delay"))
    clicking = settings.click_delay_s * (0.5 + _draw(seed, key, "click-delay"))
    return Decision(
        open=opened,
        machine=machine,
        click=click,
        open_after_s=0.0 if machine else reading,
        click_after_s=reading + clicking,
    )


def route(url: str, endpoints: Mapping[str, Endpoint]) -> tuple[Endpoint, str, str] | None:
    """(endpoint, URL to connect to, Host header) for a URL on a mapped tracking host; None for
    anything else, which is then never fetched."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() not in ("http", "https") or host not in endpoints:
        return None
    endpoint = endpoints[host]
    try:
        host_header = host if parts.port is None else f"{host}:{parts.port}"
    except ValueError:
        return None
    query = f"?{parts.query}" if parts.query else ""
    target = f"{endpoint.scheme}://{endpoint.address}:{endpoint.port}{parts.path or '/'}{query}"
    return endpoint, target, host_header


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Fetch:
    """One GET the simulation made (or refused to make)."""

    kind: Kind
    url: str
    user_agent: str
    machine: bool
    status: int | None
    """The HTTP status; None when refused or when no answer came."""
    location: str | None = None
    """A click's redirect target, recorded and not followed."""
    error: str | None = None
    at: float = 0.0

    @property
    def ok(self) -> bool:
        """An open got the pixel (2xx); a click got a redirect with a Location."""
        if self.status is None:
            return False
        if self.kind == "open":
            return 200 <= self.status < 300
        return 300 <= self.status < 400 and bool(self.location)


@dataclasses.dataclass
class Engaged:
    """One recipient's copy of a tracked message and what its reader did with it."""

    provider: str
    recipient: str
    message_id: str | None
    """The Message-ID header."""
    token: str
    tracked_message: str | None
    """The spool's message id the pixel's token names (what the events carry)."""
    tracked_recipient: str | None
    decision: Decision
    fetches: list[Fetch] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fetches"] = [dict(dataclasses.asdict(f), ok=f.ok) for f in self.fetches]
        return out


Fetcher = Callable[[str, Endpoint, str, str], Awaitable[tuple[int, str | None]]]
"""(URL to connect to, endpoint, Host header, User-Agent) -> (status, Location header)."""


class HttpFetcher:
    """GETs with aiohttp to the endpoint's loopback address: the Host header and the TLS server
    name stay the tracking host's, the certificate is checked against the endpoint's CA, no
    redirect is followed, no proxy from the environment is used."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[bytes, ssl.SSLContext] = {}

    async def __call__(
        self, target: str, endpoint: Endpoint, host: str, user_agent: str
    ) -> tuple[int, str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        tls: ssl.SSLContext | bool = False
        server_name = None
        if endpoint.scheme == "https" and endpoint.ca_pem is not None:
            tls = self._context(endpoint.ca_pem)
            server_name = host.rpartition(":")[0] if host.count(":") == 1 else host
        async with self._session.get(
            yarl.URL(target, encoded=True),
            headers={"Host": host, "User-Agent": user_agent, "Accept": "*/*"},
            allow_redirects=False,
            ssl=tls,
            server_hostname=server_name,
        ) as response:
            await response.content.read(_BODY_LIMIT)
            return response.status, response.headers.get("Location")

    def _context(self, ca_pem: bytes) -> ssl.SSLContext:
        context = self._contexts.get(ca_pem)
        if context is None:
            context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
            self._contexts[ca_pem] = context
        return context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------- the simulator


class Engagement:
    """The readers behind one or more provider receivers (`attach`), with one set of settings.
    `observe` is the receivers' message hook; `settle` waits for what was decided so far."""

    def __init__(
        self,
        settings: EngagementSettings,
        endpoints: Mapping[str, Endpoint],
        *,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = {host.lower(): endpoint for host, endpoint in endpoints.items()}
        self._http = None if fetcher is not None else HttpFetcher(settings.timeout_s)
        self._fetch: Fetcher = fetcher if fetcher is not None else self._http  # type: ignore[assignment]
        self.records: list[Engaged] = []
        """Every considered copy, in arrival order, with its decision and its fetches."""
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, *receivers: SmtpReceiver) -> None:
        for receiver in receivers:
            receiver.on_message.append(self.observe)

    def observe(self, message: ReceivedMessage) -> None:
        """Decide for each recipient's copy of a message with a pixel and start its reader."""
        tracked = tracked_messages.find_tracking(message.data)
        if tracked is None:
            return
        token = tracked.token
        tracked_message, tracked_recipient = tracked_messages.token_claims(token)
        for recipient in message.rcpt_to:
            record = Engaged(
                provider=message.provider,
                recipient=recipient,
                message_id=message.header("Message-ID"),
                token=token,
                tracked_message=tracked_message,
                tracked_recipient=tracked_recipient,
                decision=decide(self.settings, copy_key(token, recipient), tracked.links),
            )
            self.records.append(record)
            if record.decision.open or record.decision.click:
                task = asyncio.get_running_loop().create_task(self._read(record, tracked))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read(self, record: Engaged, tracked: tracked_messages.Tracked) -> None:
        decision, settings = record.decision, self.settings
        steps: list[tuple[float, Kind, str, str, bool]] = []
        if decision.open:
            agent = settings.proxy_user_agent if decision.machine else settings.human_user_agent
            steps.append((decision.open_after_s, "open", tracked.pixel, agent, decision.machine))
        if decision.click is not None:
            steps.append((decision.click_after_s, "click", decision.click,
                          settings.human_user_agent, False))
        started = asyncio.get_running_loop().time()
        for offset, kind, url, agent, machine in sorted(steps, key=lambda step: step[0]):
            wait = started + offset - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)  # a reader's pause, not a test waiting
            record.fetches.append(await self._get(kind, url, agent, machine))

    async def _get(self, kind: Kind, url: str, agent: str, machine: bool) -> Fetch:
        routed = route(url, self.endpoints)
        if routed is None:
            log.warning("engagement: refused a URL on an unmapped host",
                        extra={"host": urllib.parse.urlsplit(url).hostname})
            return Fetch(kind, url, agent, machine, None, error="refused: host not mapped",
                         at=time.time())
        endpoint, target, host = routed
        try:
            status, location = await self._fetch(target, endpoint, host, agent)
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as error:
            return Fetch(kind, url, agent, machine, None, error=f"{type(error).__name__}: {error}",
                         at=time.time())
        return Fetch(kind, url, agent, machine, status, location=location, at=time.time())

    # ----------------------------------------------------------------- results

    def simulated(self) -> dict[str, int]:
        """Totals for the demo report: successful human opens, proxy opens, clicks, and the
        fetches that failed (refused, no answer, or an unexpected status such as 404)."""
        fetches = [f for r in self.records for f in r.fetches]
        return {
            "opens": sum(f.ok and f.kind == "open" and not f.machine for f in fetches),
            "machine_opens": sum(f.ok and f.kind == "open" and f.machine for f in fetches),
            "clicks": sum(f.ok and f.kind == "click" for f in fetches),
            "failed": sum(not f.ok for f in fetches),
        }

    def implied_events(self) -> dict[str, list[tuple[str | None, str | None]]]:
        """{"opened": [(message id, recipient)], "clicked": [...]}: the events the successful
        fetches imply, named as the tokens name them (report.implied_event_keys takes these)."""
        out: dict[str, list[tuple[str | None, str | None]]] = {"opened": [], "clicked": []}
        for record in self.records:
            pair = (record.tracked_message, record.tracked_recipient)
            for fetch in record.fetches:
                if fetch.ok:
                    out["opened" if fetch.kind == "open" else "clicked"].append(pair)
        return out

    def details(self) -> list[dict[str, Any]]:
        return [record.as_json() for record in self.records]

    # ----------------------------------------------------------------- lifecycle

    async def settle(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - a deadline
        """Wait until every reader started so far has done what it decided."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"engagement: {len(self._tasks)} readers still busy")
            await asyncio.wait(set(self._tasks), timeout=remaining)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> Engagement:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def total(engagements: Sequence[Engagement]) -> dict[str, int]:
    """`simulated()` summed over several engagements (one per provider, say)."""
    out = {"opens": 0, "machine_opens": 0, "clicks": 0, "failed": 0}
    for engagement in engagements:
        for key, value in engagement.simulated().items():
            out[key] += value
    return out
