"""Open and click tracking at run time (docs/tracking.md): the pool's tracking keys, rewriting
at submission (`tracking_rewrite`, for classes that ask), and the two public routes that turn
a fetch into an `opened` or `clicked` event.

- `GET /t/o/<token>.gif`: a 1x1 transparent GIF, never cached; `opened`.
- `GET /t/c/<token>`: 302 to the URL the token was minted for; `clicked` with that URL.
A token that does not verify (forged, altered, truncated, a key no longer listed) gets 404 and
nothing is recorded: the redirect target only ever comes out of a verified token, so there is
no open redirect. Routes stay up when no class tracks any more: mail already sent keeps working.

Machine fetches (image proxies, link scanners) are recorded with `machine: true`, never as a
reader's: a User-Agent matching `tracking.machineUserAgents`, no User-Agent at all, a HEAD
request, or a fetch within `tracking.machineWindow` of the submission (in the token) or of the
delivery (when this pod delivered the message: it remembers its recent deliveries).

Nothing about the reader is kept: no IP address, no User-Agent, only the verdict (docs).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import logging
import re
import secrets
import ssl
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import Counter

from mailfleet_sender import config, hooks, metrics, tracking_rewrite, tracking_tokens

log = logging.getLogger(__name__)

SCHEMA = "mailfleet.io/event/v1"
LOCAL_KEY_FILE = "tracking.key"
"""A lone pod's own random key (no `tracking.keyFile`), kept in its spool directory."""
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""The classic 43-byte transparent 1x1 GIF."""
NO_STORE = "no-store, no-cache, must-revalidate, max-age=0"
MAX_USER_AGENT = 512
"""Only this much of a User-Agent is matched (the patterns look at product tokens)."""
REMEMBERED_DELIVERIES = 50_000
"""Recent deliveries kept for the machine window (per pod; older ones fall back to the
submission time in the token)."""
_LOCATION_SAFE = "!#$%&'()*+,/:;=?@[]~-._"
"""Characters kept as they are in the Location header; the rest (non-ASCII, spaces) is
percent-encoded, as a browser would."""


class EventSink(Protocol):
    """Where events go, as wire-form objects (`events.JsonSink` takes them into the outbox).
    Sync and non-blocking."""

    def record(self, event: Mapping[str, object]) -> None: ...


class TrackingKeyError(ValueError):
    """The tracking key file cannot be used; the message names the file, never the key."""


def read_keys(path: str | Path) -> tuple[bytes, ...]:
    """The keys of a key file: one per line, the first signs, each at least 16 bytes."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise TrackingKeyError(f"cannot read tracking key file {path}: {exc.strerror}") from exc
    keys = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not keys:
        raise TrackingKeyError(f"tracking key file {path} holds no key")
    if any(len(k) < tracking_tokens.MIN_KEY_BYTES for k in keys):
        raise TrackingKeyError(
            f"a key in {path} is shorter than {tracking_tokens.MIN_KEY_BYTES} bytes"
        )
    return keys


def local_key(directory: str | Path, *, create: bool) -> bytes | None:
    """A lone pod's random key, made once and kept in its spool (config refuses peers without
    `keyFile`): None when there is none and `create` is false."""
    path = Path(directory) / LOCAL_KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
    secret = secrets.token_hex(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(secret)
    log.warning("no tracking.keyFile: signing tracking links with a key local to this pod",
                extra={"path": str(path)})
    return secret


def is_machine(
    user_agent: str | None, patterns: Sequence[re.Pattern[str]], *, head: bool, now: float,
    since: float | None, window: float,
) -> bool:
    """Whether a fetch is a machine's (see the module docstring). `since`: the latest known
    moment before which the reader cannot have had the mail (submission or delivery)."""
    if head or not user_agent:
        return True
    agent = user_agent[:MAX_USER_AGENT]
    if any(p.search(agent) for p in patterns):
        return True
    return since is not None and window > 0 and now - since < window


def compile_patterns(texts: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(t, re.IGNORECASE) for t in texts)


def rfc3339(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_event(
    claims: tracking_tokens.Claims, *, now: float, machine: bool, pool: str,
    namespace: str | None, ip: str | None = None, provider: str | None = None,
) -> dict[str, object]:
    """An `opened` or `clicked` event in the contract's shape (docs/tracking.md)."""
    return {
        "schema": SCHEMA,
        "id": uuid.uuid4().hex,
        "type": "clicked" if claims.kind == tracking_tokens.CLICK else "opened",
        "time": rfc3339(now),
        "message_id": claims.message_id,
        "recipient": claims.recipient,
        "pool": pool,
        "namespace": namespace or None,
        "class": claims.class_name,
        "ip": ip,
        "provider": provider,
        "tags": dict(claims.tags),
        "reply": None,
        "bounce": None,
        "url": claims.url,
        "machine": machine,
        "delay_s": None,
        "attempt": None,
    }


def location(url: str) -> str:
    return urllib.parse.quote(url, safe=_LOCATION_SAFE)


@dataclasses.dataclass(frozen=True)
class _Delivered:
    at: float
    ip: str
    provider: str


class Tracker:
    """One pod's tracking: keys, the submission-time rewrite, the public routes."""

    def __init__(
        self, *, cfg: config.SenderConfig, metric_set: metrics.Metrics,
        wall: Callable[[], float], sink: EventSink,
    ) -> None:
        self.cfg = cfg
        self.wall = wall
        self.sink = sink
        self.keys: tuple[bytes, ...] = ()
        self._key_stamp: tuple[int, int, int] | None = None
        self._patterns = compile_patterns(cfg.tracking.machine_user_agents)
        self._delivered: collections.OrderedDict[tuple[str, str], _Delivered] = (
            collections.OrderedDict()
        )
        self._tls: ssl.SSLContext | None = None
        self._tls_stamp: tuple[object, ...] = ()
        r = metric_set.registry
        self.requests = Counter(
            f"{metrics.PREFIX}_tracking_requests",
            "Open pixel and click requests by result (human, machine, refused).",
            ["kind", "result"], registry=r,
        )
        self.rewritten = Counter(
            f"{metrics.PREFIX}_tracking_rewritten_messages",
            "Messages given an open pixel or tracked links at submission.", ["class"],
            registry=r,
        )
        self.rewrite_failures = Counter(
            f"{metrics.PREFIX}_tracking_rewrite_failures",
            "Messages that could not be rewritten (sent untracked).", registry=r,
        )
        self.load_keys()

    # --- keys and config ------------------------------------------------------------------

    def _wanted(self) -> bool:
        return any(c.tracking.on for c in self.cfg.classes)

    def load_keys(self) -> None:
        """Read the keys (at start, and on reconfiguring): raises config.ConfigError when the
        file given cannot be used, so a pod never signs links nobody can verify."""
        t = self.cfg.tracking
        if t.key_file is not None:
            try:
                self.keys = read_keys(t.key_file)
            except TrackingKeyError as exc:
                raise config.ConfigError(f"tracking: {exc}") from exc
            self._key_stamp = _stamp(Path(t.key_file))
            return
        own = local_key(self.cfg.spool_dir, create=self._wanted())
        self.keys = () if own is None else (own,)

    def refresh(self) -> None:
        """Re-read a key file the kubelet swapped, and the TLS pair; a bad new file keeps
        the old keys (logged)."""
        key_file = self.cfg.tracking.key_file
        if key_file is not None and _stamp(Path(key_file)) != self._key_stamp:
            try:
                self.keys = read_keys(key_file)
                self._key_stamp = _stamp(Path(key_file))
                log.info("tracking keys reloaded", extra={"keys": len(self.keys)})
            except TrackingKeyError as exc:
                log.error("tracking keys not reloaded; keeping the old ones",
                          extra={"error": str(exc)})
        self._reload_tls()

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        old = self.cfg
        self.cfg = cfg
        self._patterns = compile_patterns(cfg.tracking.machine_user_agents)
        if (cfg.tracking.key_file, self._wanted()) != (old.tracking.key_file, bool(self.keys)):
            try:
                self.load_keys()
            except config.ConfigError as exc:
                log.error("tracking keys not loaded", extra={"error": str(exc)})

    # --- submission -----------------------------------------------------------------------

    def tracks(self, class_name: str) -> bool:
        klass = self.cfg.class_named(class_name)
        return klass is not None and klass.tracking.on and bool(self.keys)

    async def rewrite(
        self, data: bytes, *, message_id: str, class_name: str, recipients: Sequence[str],
        tags: Mapping[str, str],
    ) -> bytes:
        """The message as it will be stored: rewritten when its class tracks. Never fails:
        a message that cannot be rewritten is kept as it is (and counted), not refused."""
        klass = self.cfg.class_named(class_name)
        base = self.cfg.tracking.base
        if klass is None or not klass.tracking.on or base is None or not self.keys:
            return data
        d = self.cfg.deliverability
        plan = tracking_rewrite.Plan(
            base=base, key=self.keys[0], message_id=message_id,
            recipient=recipients[0] if len(recipients) == 1 else None,
            opens=klass.tracking.opens, clicks=klass.tracking.clicks, class_name=class_name,
            tags=dict(tags), issued=int(self.wall()),
            unsubscribe_prefixes=(
                (f"{d.unsubscribe_base_url.rstrip('/')}/v1/unsubscribe/",)
                if d.unsubscribe_base_url else ()
            ),
        )
        try:
            result = await asyncio.to_thread(tracking_rewrite.rewrite_message, data, plan)
        except Exception:
            log.exception("tracking rewrite failed; the message goes untracked")
            self.rewrite_failures.inc()
            return data
        if result.data is not data:
            self.rewritten.labels(class_name).inc()
        return result.data

    # --- deliveries -----------------------------------------------------------------------

    def observe(self, outcome: hooks.Outcome) -> None:
        """Remember recent deliveries: the machine window starts there, and events name the
        IP and provider (when this pod delivered the message)."""
        if outcome.verdict is not hooks.Verdict.DELIVERED or not outcome.message:
            return
        seen = _Delivered(self.wall(), outcome.source_ip, outcome.provider)
        message = str(outcome.message)
        for key in ((message, outcome.recipient.lower()), (message, "")):
            self._delivered[key] = seen
            self._delivered.move_to_end(key)
        while len(self._delivered) > REMEMBERED_DELIVERIES * 2:
            self._delivered.popitem(last=False)

    def _delivery(self, claims: tracking_tokens.Claims) -> _Delivered | None:
        recipient = (claims.recipient or "").lower()
        return self._delivered.get((claims.message_id, recipient))

    # --- public routes --------------------------------------------------------------------

    def _verified(
        self, request: web.Request, kind: tracking_tokens.Kind
    ) -> tracking_tokens.Claims | None:
        claims = tracking_tokens.verify(request.match_info["token"], self.keys)
        if claims is None or claims.kind != kind:
            self.requests.labels("open" if kind == tracking_tokens.OPEN else "click",
                                 "refused").inc()
            return None
        now = self.wall()
        delivered = self._delivery(claims)
        since = max(
            (t for t in (claims.issued, delivered.at if delivered else None) if t is not None),
            default=None,
        )
        machine = is_machine(
            request.headers.get("User-Agent"), self._patterns, head=request.method == "HEAD",
            now=now, since=since, window=self.cfg.tracking.machine_window_seconds,
        )
        self.requests.labels("open" if kind == tracking_tokens.OPEN else "click",
                             "machine" if machine else "human").inc()
        self.sink.record(build_event(
            claims, now=now, machine=machine, pool=self.cfg.pool,
            namespace=self.cfg.namespace or None,
            ip=(delivered.ip or None) if delivered else None,
            provider=(delivered.provider or None) if delivered else None,
        ))
        return claims

    async def get_open(self, request: web.Request) -> web.Response:
        if self._verified(request, tracking_tokens.OPEN) is None:
            return web.Response(status=404, text="not found\n")
        return web.Response(
            body=PIXEL, content_type="image/gif",
            headers={"Cache-Control": NO_STORE, "Pragma": "no-cache", "Expires": "0"},
        )

    async def get_click(self, request: web.Request) -> web.Response:
        claims = self._verified(request, tracking_tokens.CLICK)
        if claims is None or claims.url is None:
            return web.Response(status=404, text="not found\n")
        return web.Response(
            status=302, headers={"Location": location(claims.url), "Cache-Control": NO_STORE},
        )

    # --- TLS of the public listener ---------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """The public listener's TLS (tracking.tlsCertFile/tlsKeyFile), None for plain HTTP.
        Reloaded in place when the files change (new handshakes get the new certificate)."""
        t = self.cfg.tracking
        if t.tls_cert_file is None or t.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(t.tls_cert_file, t.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise config.ConfigError(f"tracking: cannot load tlsCertFile/tlsKeyFile: {exc}") \
                from exc
        self._tls = context
        self._tls_stamp = self._tls_files_stamp()
        return context

    def _tls_files_stamp(self) -> tuple[object, ...]:
        t = self.cfg.tracking
        return tuple(_stamp(Path(p)) for p in (t.tls_cert_file, t.tls_key_file) if p)

    def _reload_tls(self) -> None:
        t = self.cfg.tracking
        if self._tls is None or t.tls_cert_file is None or t.tls_key_file is None:
            return
        stamp = self._tls_files_stamp()
        if stamp == self._tls_stamp:
            return
        try:
            self._tls.load_cert_chain(t.tls_cert_file, t.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("tracking TLS pair not reloaded; keeping the old one",
                      extra={"error": str(exc)})
            return
        self._tls_stamp = stamp
        log.info("tracking TLS certificate reloaded")


def chain_observer(hook_set: hooks.Hooks, tracker: Tracker) -> None:
    """Let the tracker see every outcome after the hooks' own observer."""
    first = hook_set.observe

    def both(outcome: hooks.Outcome) -> None:
        first(outcome)
        tracker.observe(outcome)

    hook_set.observe = both


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
