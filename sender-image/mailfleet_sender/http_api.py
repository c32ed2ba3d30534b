"""The HTTP side of a sender (aiohttp), on three listeners that trust different callers
(docs/security.md). A path asked on another listener than its own answers 404.

Submission (`submission.httpPort`, applications):
- `POST /v1/messages` (API key as `Authorization: Bearer`; 401 without a valid one, also when
  no key is configured, unless `allowUnauthenticated`): JSON (`wire.SubmitRequest`) or raw
  RFC 5322 (`Content-Type: message/rfc822`, recipients in `to` query parameters, else the
  To/Cc/Bcc headers). 202 once the message is on disk; the same checks and codes as SMTP
  (`intake`), as HTTP statuses; 403 when the From domain is not in `httpFromDomains`.
  Every body is read whole under a cap per kind (`bodies`; 413 beyond it).

Admin (`submission.adminPort`, the operator, the kubelet, Prometheus and the pool's pods):
- `/healthz` (the process serves), `/readyz` (it accepts mail), `/metrics`: unauthenticated;
  `/openapi.json`: this API's contract (`openapi`, the same document as
  docs/sender-openapi.yaml).
- `GET /v1/stats`, `GET|PUT /v1/assignment`, `POST /v1/drain[?handoff=true]`,
  `DELETE /v1/drain` (undrain), and `/v1/suppressions` (`suppression.suppression_routes`):
  admin (or peer) token as Bearer.
- `POST /v1/messages` with the peer token: hand-off between the pool's pods.
  `X-Mailfleet-Handoff: <key>` marks a message another pod hands off: the key is stored with
  it and a repeat answers 202 without storing it twice, also while this pod drains (any
  other submission is then refused with 503). Hand-offs carry their envelope in the
  body (`envelopes.CONTENT_TYPE`); the query form stays accepted. (A hand-off to another
  pool goes to that pool's submission listener with its API key.)

Public (`deliverability.publicPort`, the Internet):
- `POST /v1/unsubscribe/{token}` (RFC 8058 one-click, body `List-Unsubscribe=One-Click`):
  unauthenticated, the token is the credential; `GET` shows a confirmation form and changes
  nothing (link scanners fetch URLs).
- `POST /v1/tlsrpt`: TLS-RPT reports about the pool's domains (`tlsrpt_inbound`).
- `GET /t/o/{token}.gif`, `GET /t/c/{token}`: open pixel and tracked links (`tracking`).
"""

from __future__ import annotations

import email.utils
import hmac
import html
import logging
from collections.abc import Sequence
from typing import Literal, Protocol

import pydantic
from aiohttp import web

from mailfleet_sender import (
    bodies,
    deliverability,
    envelopes,
    from_domains,
    intake,
    leases,
    messages,
    metrics,
    openapi,
    tlsrpt_inbound,
    tracking,
    wire,
)

log = logging.getLogger(__name__)

RAW_TYPES = ("message/rfc822", "text/plain", "application/octet-stream")
HANDOFF_HEADER = "X-Mailfleet-Handoff"
MAX_HANDOFF_KEY = 128
ONE_CLICK = "List-Unsubscribe=One-Click"
MAX_UNSUBSCRIBE_BODY = 4096
MAX_ADMIN_BODY = 1024 * 1024
"""Assignment and drain requests (a few leases, a target): far below this."""

Listener = Literal["submission", "admin", "public"]


class Backend(Protocol):
    """What the HTTP layer needs from the service."""

    intake: intake.Intake
    metrics: metrics.Metrics
    deliverability: deliverability.Deliverability
    tls_inbound: tlsrpt_inbound.Inbound
    tracker: tracking.Tracker

    def stats(self) -> wire.Stats: ...

    async def settle_counters(self) -> None: ...

    def assignment_status(self) -> wire.AssignmentStatus: ...

    def assign(self, assignment: wire.Assignment) -> wire.AssignmentStatus: ...

    def drain(
        self, *, handoff: bool = False, target: wire.HandoffTarget | None = None
    ) -> None: ...

    async def undrain(self) -> wire.DrainStatus: ...

    def drain_status(self) -> wire.DrainStatus: ...

    def suppression_app_routes(self) -> web.RouteTableDef: ...

    def ready(self) -> bool: ...

    def api_keys(self) -> list[str]: ...

    def admin_token(self) -> str | None: ...

    def peer_tokens(self) -> list[str]: ...


def _error(status: int, text: str, code: str = "") -> web.Response:
    body = wire.ErrorResponse(error=text, code=code).model_dump(by_alias=True)
    return web.json_response(body, status=status)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.headers.get("X-API-Key")


def _matches(supplied: str | None, accepted: list[str]) -> bool:
    if supplied is None:
        return False
    found = False
    for key in accepted:
        # Compare with every key (no early exit) so timing does not reveal which one matched.
        found |= hmac.compare_digest(supplied.encode(), key.encode())
    return found


def _rejection(rejection: messages.Rejection) -> web.Response:
    return _error(rejection.http_status, rejection.text, f"{rejection.code} {rejection.enhanced}")


class Api:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # --- apps ---------------------------------------------------------------------------

    def submission_routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self.post_message)]

    def public_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/unsubscribe/{token}", self.post_unsubscribe),
            web.get("/v1/unsubscribe/{token}", self.get_unsubscribe),
            web.post("/v1/tlsrpt", self.post_tlsrpt),
            web.get("/t/o/{token}.gif", self.get_open_pixel),
            web.get("/t/c/{token}", self.get_tracked_link),
        ]

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
            web.get("/v1/stats", self.stats),
            web.get("/v1/assignment", self.get_assignment),
            web.put("/v1/assignment", self.put_assignment),
            web.post("/v1/drain", self.post_drain),
            web.delete("/v1/drain", self.delete_drain),
            web.post("/v1/messages", self.post_peer_message),
        ]

    def app(self, listener: Listener, *, max_body: int) -> web.Application:
        application = web.Application(client_max_size=max_body)
        if listener == "submission":
            application.add_routes(self.submission_routes())
        elif listener == "public":
            application.add_routes(self.public_routes())
        else:
            application.add_routes(self.admin_routes())
            application.add_routes(self.backend.suppression_app_routes())
        return application

    # --- submission ---------------------------------------------------------------------

    def _open(self) -> bool:
        return self.backend.intake.cfg.submission.allow_unauthenticated

    async def post_message(self, request: web.Request) -> web.Response:
        """An application's submission: its API key, then its From domains."""
        keys = self.backend.api_keys()
        if (keys or not self._open()) and not _matches(_bearer(request), keys):
            self.backend.metrics.rejected.labels("http", "auth").inc()
            return _error(401, "missing or invalid API key", "auth")
        allowed = self.backend.intake.cfg.submission.http_from_domains
        return await self._submit(request, allowed=allowed)

    async def post_peer_message(self, request: web.Request) -> web.Response:
        """A hand-off from another pod of the pool (admin listener): the peer token. The
        message was judged when it entered the pool, so no From domain check here."""
        tokens = self.backend.peer_tokens()
        if (tokens or not self._open()) and not _matches(_bearer(request), tokens):
            self.backend.metrics.rejected.labels("handoff", "auth").inc()
            return _error(401, "missing or invalid peer token", "auth")
        return await self._submit(request, allowed=())

    async def _submit(self, request: web.Request, *, allowed: Sequence[str]) -> web.Response:
        intake_ = self.backend.intake
        if not intake_.accepting and HANDOFF_HEADER not in request.headers:
            return _rejection(intake.DRAINING)  # a hand-off repeat is looked up (`intake`)
        content_type = request.content_type
        if content_type != "application/json" and content_type not in RAW_TYPES and (
            content_type != envelopes.CONTENT_TYPE
        ):
            return _error(415, f"unsupported content type {content_type!r}", "content-type")
        try:
            body = await bodies.read_body(request, self._body_cap(content_type))
        except bodies.TooLarge:
            return _rejection(messages.TOO_BIG)
        if content_type == "application/json":
            return await self._post_json(body, allowed=allowed)
        key = request.headers.get(HANDOFF_HEADER)
        if key is not None and not (0 < len(key) <= MAX_HANDOFF_KEY and key.isascii()):
            return _error(400, f"{HANDOFF_HEADER}: 1-{MAX_HANDOFF_KEY} ASCII characters",
                          "invalid")
        if content_type == envelopes.CONTENT_TYPE:
            return await self._post_handoff(body, handoff_key=key, allowed=allowed)
        return await self._post_raw(request, body, handoff_key=key, allowed=allowed)

    def _body_cap(self, content_type: str) -> int:
        """Per kind of body: the message, plus JSON escaping (which can double it) or the
        hand-off envelope (up to maxRecipients addresses)."""
        s = self.backend.intake.cfg.submission
        if content_type == "application/json":
            return s.max_message_size * 2 + 64 * 1024
        if content_type == envelopes.CONTENT_TYPE:
            return s.max_message_size + envelopes.max_envelope_bytes(s.max_recipients)
        return s.max_message_size + 64 * 1024

    def _domain_refusal(
        self, allowed: Sequence[str], data: bytes, sender: str
    ) -> web.Response | None:
        refused = from_domains.refusal(allowed, data=data, envelope_sender=sender or None)
        if refused is None:
            return None
        self.backend.metrics.rejected.labels("http", "from_domain").inc()
        return _rejection(refused)

    async def _post_handoff(
        self, body: bytes, *, handoff_key: str | None, allowed: Sequence[str]
    ) -> web.Response:
        """A message another pod hands off, its envelope in the body (`envelopes`)."""
        max_recipients = self.backend.intake.cfg.submission.max_recipients
        try:
            envelope, data = envelopes.decode(
                body, max_envelope=envelopes.max_envelope_bytes(max_recipients)
            )
        except envelopes.BadEnvelope as exc:
            return _error(400, str(exc), "invalid")
        refused = self._domain_refusal(allowed, data, envelope.sender)
        if refused is not None:
            return refused
        result = await self.backend.intake.submit(
            sender=envelope.sender,
            recipients=envelope.recipients,
            data=data,
            via="handoff" if handoff_key else "http",
            class_name=envelope.class_name,
            tier=envelope.tier,
            handoff_key=handoff_key,
            tags=envelope.tags,
        )
        return self._answer(result)

    async def _post_json(self, body: bytes, *, allowed: Sequence[str]) -> web.Response:
        intake_ = self.backend.intake
        try:
            payload = bodies.loads(body)
        except bodies.BadJSON as exc:
            return _error(400, str(exc), "json")
        try:
            request = wire.SubmitRequest.model_validate(payload)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}"
                for e in exc.errors()
            )
            return _error(400, problems, "invalid")
        sender_address = _address_of(request.from_)
        if sender_address is None:
            return _error(400, "from: not an email address", "invalid")
        for name, value in request.headers.items():
            if not _header_ok(name, value):
                return _error(400, f"headers.{name}: invalid header", "invalid")
        recipients = []
        for item in request.to:
            address = _address_of(item)
            if address is None:
                return _error(400, f"to: {item!r} is not an email address", "invalid")
            recipients.append(address)
        try:
            data = messages.build_message(
                sender=request.from_,
                to=request.to,
                subject=request.subject,
                text=request.text,
                html=request.html,
                headers=request.headers,
                now=intake_.clock.wall(),
                hostname=intake_.hostname,
            )
        except (ValueError, TypeError) as exc:
            return _error(400, f"cannot build the message: {exc}", "invalid")
        refused = self._domain_refusal(allowed, data, request.envelope_from or sender_address)
        if refused is not None:
            return refused
        result = await intake_.submit(
            sender=request.envelope_from or sender_address,
            recipients=recipients,
            data=data,
            via="http",
            class_name=request.class_,
            tier=request.tier,
            tags=request.tags,
        )
        return self._answer(result)

    async def _post_raw(
        self, request: web.Request, body: bytes, *, handoff_key: str | None = None,
        allowed: Sequence[str] = (),
    ) -> web.Response:
        recipients = [
            part.strip()
            for value in request.query.getall("to", [])
            for part in value.split(",")
            if part.strip()
        ]
        split = messages.split_header_section(body)
        fields = (messages.header_fields(split[0]) if split else None) or []
        if not recipients:
            # Like sendmail -t: the recipients are in the headers (Bcc is removed at intake).
            recipients = _header_addresses(fields, ("to", "cc", "bcc"))
            if not recipients:
                return _error(400, "no recipients in ?to= nor in To/Cc/Bcc", "invalid")
        sender = request.query.get("from")
        if sender is None:
            found = _header_addresses(fields, ("from",))
            sender = found[0] if found else ""
        refused = self._domain_refusal(allowed, body, sender)
        if refused is not None:
            return refused
        result = await self.backend.intake.submit(
            sender=sender,
            recipients=recipients,
            data=body,
            via="handoff" if handoff_key else "http",
            class_name=request.query.get("class"),
            tier=request.query.get("tier"),
            handoff_key=handoff_key,
        )
        return self._answer(result)

    def _answer(self, result: intake.Queued | messages.Rejection) -> web.Response:
        if isinstance(result, messages.Rejection):
            return _rejection(result)
        body = wire.SubmitResponse(
            id=str(result.spool_id), message_id=result.message_id, recipients=result.recipients,
            duplicate=result.duplicate,
        ).model_dump(by_alias=True)
        return web.json_response(body, status=202)

    # --- one-click unsubscribe (RFC 8058) -------------------------------------------------

    async def post_unsubscribe(self, request: web.Request) -> web.Response:
        layer = self.backend.deliverability
        try:
            body = await bodies.read_body(request, MAX_UNSUBSCRIBE_BODY)
        except bodies.TooLarge as exc:
            return _error(413, str(exc), "too_large")
        if ONE_CLICK.encode() not in body.replace(b"%3D", b"=").replace(b"%3d", b"="):
            layer.metrics.unsubscribes.labels("one-click", "bad_request").inc()
            return _error(400, f"the body must contain {ONE_CLICK} (RFC 8058)", "bad_request")
        result = layer.unsubscribe(request.match_info["token"], via="one-click")
        if result.status != 200:
            return _error(result.status, "this unsubscribe link is not valid", result.result)
        await layer.flush_events()
        return web.json_response({"unsubscribed": True, "result": result.result})

    async def get_unsubscribe(self, request: web.Request) -> web.Response:
        token = html.escape(request.match_info["token"], quote=True)
        page = (
            "<!doctype html><title>Unsubscribe</title>"
            f'<form method="post" action="{token}">'
            f'<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return web.Response(text=page, content_type="text/html")

    async def get_open_pixel(self, request: web.Request) -> web.Response:
        return await self.backend.tracker.get_open(request)

    async def get_tracked_link(self, request: web.Request) -> web.Response:
        return await self.backend.tracker.get_click(request)

    # --- probes and metrics ------------------------------------------------------------

    async def post_tlsrpt(self, request: web.Request) -> web.Response:
        return await self.backend.tls_inbound.post(request)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.backend.ready():
            return web.Response(text="ready\n")
        return web.Response(text="not ready\n", status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.backend.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi.document_json(), content_type="application/json")

    # --- admin ------------------------------------------------------------------------

    def _admin_denied(self, request: web.Request) -> web.Response | None:
        token = self.backend.admin_token()
        if token is None or _matches(_bearer(request), [token]):
            return None
        return _error(401, "missing or invalid admin token", "auth")

    async def stats(self, request: web.Request) -> web.Response:
        denied = self._admin_denied(request)
        if denied is not None:
            return denied
        # The past days' figures are read from the spool: counter updates still queued for
        # the writer must land first, or a day that just ended reads short.
        await self.backend.settle_counters()
        return web.json_response(self.backend.stats().model_dump(mode="json", by_alias=True))

    async def get_assignment(self, request: web.Request) -> web.Response:
        denied = self._admin_denied(request)
        if denied is not None:
            return denied
        status = self.backend.assignment_status()
        return web.json_response(status.model_dump(mode="json", by_alias=True))

    async def put_assignment(self, request: web.Request) -> web.Response:
        denied = self._admin_denied(request)
        if denied is not None:
            return denied
        try:
            assignment = wire.Assignment.model_validate_json(
                await bodies.read_body(request, MAX_ADMIN_BODY)
            )
        except bodies.TooLarge as exc:
            return _error(413, str(exc), "too_large")
        except pydantic.ValidationError as exc:
            return _error(400, str(exc), "invalid")
        try:
            status = self.backend.assign(assignment)
        except leases.StaleAssignment as exc:
            return _error(409, str(exc), exc.code)
        return web.json_response(status.model_dump(mode="json", by_alias=True))

    async def post_drain(self, request: web.Request) -> web.Response:
        denied = self._admin_denied(request)
        if denied is not None:
            return denied
        handoff = request.query.get("handoff", "false").lower() in ("true", "1", "yes")
        target: wire.HandoffTarget | None = None
        if request.can_read_body:
            try:
                body = wire.DrainRequest.model_validate_json(
                    await bodies.read_body(request, MAX_ADMIN_BODY)
                )
            except bodies.TooLarge as exc:
                return _error(413, str(exc), "too_large")
            except pydantic.ValidationError as exc:
                return _error(400, f"bad drain request: {exc}", "badRequest")
            handoff = handoff or body.handoff
            target = body.target if handoff else None
        self.backend.drain(handoff=handoff, target=target)
        status = self.backend.drain_status()
        return web.json_response(status.model_dump(mode="json", by_alias=True), status=202)

    async def delete_drain(self, request: web.Request) -> web.Response:
        """Undrain: accept mail again, cancel a hand-off cleanly (idempotent)."""
        denied = self._admin_denied(request)
        if denied is not None:
            return denied
        status = await self.backend.undrain()
        return web.json_response(status.model_dump(mode="json", by_alias=True))


def _address_of(value: str) -> str | None:
    _, address = email.utils.parseaddr(value)
    return address if address and messages.is_address(address) else None


def _header_addresses(fields: list[tuple[str, bytes]], names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name, raw in fields:
        if name in names:
            try:
                values.append(messages.header_value(raw))
            except UnicodeDecodeError:
                continue
    return [
        address
        for _, address in email.utils.getaddresses(values)
        if address and messages.is_address(address)
    ]


def _header_ok(name: str, value: str) -> bool:
    return (
        bool(name)
        and all(33 <= ord(c) <= 126 and c != ":" for c in name)
        and "\r" not in value
        and "\n" not in value
    )
