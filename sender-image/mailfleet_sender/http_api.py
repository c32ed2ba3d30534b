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

import html
import logging
from typing import Literal, Protocol

import pydantic
from aiohttp import web

from mailfleet_sender import (
    bodies,
    deliverability,
    http_submission,
    leases,
    openapi,
    tlsrpt_inbound,
    tracking,
    wire,
)

log = logging.getLogger(__name__)

ONE_CLICK = "List-Unsubscribe=One-Click"
MAX_UNSUBSCRIBE_BODY = 4096
MAX_ADMIN_BODY = 1024 * 1024
"""Assignment and drain requests (a few leases, a target): far below this."""

Listener = Literal["submission", "admin", "public"]


class Backend(http_submission.SubmissionBackend, Protocol):
    """What the HTTP layer needs from the service."""

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

    def admin_token(self) -> str | None: ...


class Api(http_submission.Submission):
    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.backend = backend

    # --- apps ---------------------------------------------------------------------------

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

    # --- one-click unsubscribe (RFC 8058) -------------------------------------------------

    async def post_unsubscribe(self, request: web.Request) -> web.Response:
        layer = self.backend.deliverability
        try:
            body = await bodies.read_body(request, MAX_UNSUBSCRIBE_BODY)
        except bodies.TooLarge as exc:
            return http_submission.error(413, str(exc), "too_large")
        if ONE_CLICK.encode() not in body.replace(b"%3D", b"=").replace(b"%3d", b"="):
            layer.metrics.unsubscribes.labels("one-click", "bad_request").inc()
            return http_submission.error(
                400, f"the body must contain {ONE_CLICK} (RFC 8058)", "bad_request"
            )
        result = layer.unsubscribe(request.match_info["token"], via="one-click")
        if result.status != 200:
            return http_submission.error(
                result.status, "this unsubscribe link is not valid", result.result
            )
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
        if token is None or http_submission.matches(http_submission.bearer(request), [token]):
            return None
        return http_submission.error(401, "missing or invalid admin token", "auth")

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
            return http_submission.error(413, str(exc), "too_large")
        except pydantic.ValidationError as exc:
            return http_submission.error(400, str(exc), "invalid")
        try:
            status = self.backend.assign(assignment)
        except leases.StaleAssignment as exc:
            return http_submission.error(409, str(exc), exc.code)
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
                return http_submission.error(413, str(exc), "too_large")
            except pydantic.ValidationError as exc:
                return http_submission.error(400, f"bad drain request: {exc}", "badRequest")
            handoff = handoff or body.handoff
            target = body.target if handoff else None
        self.backend.drain(handoff=handoff, target=target)
        await self.backend.intake.in_step()  # every intake process refuses mail from here on
        status = self.backend.drain_status()
        return web.json_response(status.model_dump(mode="json", by_alias=True), status=202)

    async def delete_drain(self, request: web.Request) -> web.Response:
        """Undrain: accept mail again, cancel a hand-off cleanly (idempotent)."""
        denied = self._admin_denied(request)
        if denied is not None:
            return denied
        status = await self.backend.undrain()
        await self.backend.intake.in_step()
        return web.json_response(status.model_dump(mode="json", by_alias=True))
