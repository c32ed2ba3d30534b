"""`POST /v1/messages` on the submission listener (applications) and, with the peer token, on
the admin listener (hand-off between the pool's pods): see `http_api` for the contract. Apart
from `http_api` because an intake worker process (`intake_worker`) serves the submission
listener too, with only what these handlers need (`SubmissionBackend`).
"""

from __future__ import annotations

import email.utils
import hmac
import logging
from collections.abc import Sequence
from typing import Protocol

import pydantic
from aiohttp import web

from mailfleet_sender import bodies, envelopes, from_domains, intake, messages, metrics, wire

log = logging.getLogger(__name__)

RAW_TYPES = ("message/rfc822", "text/plain", "application/octet-stream")
HANDOFF_HEADER = "X-Mailfleet-Handoff"
MAX_HANDOFF_KEY = 128


class SubmissionBackend(Protocol):
    """What the submission handlers need from the process serving them."""

    @property
    def intake(self) -> intake.Intake: ...

    @property
    def metrics(self) -> metrics.Metrics: ...

    def api_keys(self) -> list[str]: ...

    def peer_tokens(self) -> list[str]: ...


def read_lines(path: str | None) -> list[str]:
    """The keys (tokens) of a key file: one per line, blank lines and comments left out."""
    if path is None:
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def error(status: int, text: str, code: str = "") -> web.Response:
    body = wire.ErrorResponse(error=text, code=code).model_dump(by_alias=True)
    return web.json_response(body, status=status)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.headers.get("X-API-Key")


def matches(supplied: str | None, accepted: list[str]) -> bool:
    if supplied is None:
        return False
    found = False
    for key in accepted:
        # Compare with every key (no early exit) so timing does not reveal which one matched.
        found |= hmac.compare_digest(supplied.encode(), key.encode())
    return found


def _rejection(rejection: messages.Rejection) -> web.Response:
    return error(rejection.http_status, rejection.text, f"{rejection.code} {rejection.enhanced}")


class Submission:
    def __init__(self, backend: SubmissionBackend) -> None:
        self.submitter = backend

    def submission_routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self.post_message)]

    def submission_app(self, *, max_body: int) -> web.Application:
        application = web.Application(client_max_size=max_body)
        application.add_routes(self.submission_routes())
        return application

    # --- submission ---------------------------------------------------------------------

    def _open(self) -> bool:
        return self.submitter.intake.cfg.submission.allow_unauthenticated

    async def post_message(self, request: web.Request) -> web.Response:
        """An application's submission: its API key, then its From domains."""
        keys = self.submitter.api_keys()
        if (keys or not self._open()) and not matches(bearer(request), keys):
            self.submitter.metrics.rejected.labels("http", "auth").inc()
            return error(401, "missing or invalid API key", "auth")
        allowed = self.submitter.intake.cfg.submission.http_from_domains
        return await self._submit(request, allowed=allowed)

    async def post_peer_message(self, request: web.Request) -> web.Response:
        """A hand-off from another pod of the pool (admin listener): the peer token. The
        message was judged when it entered the pool, so no From domain check here."""
        tokens = self.submitter.peer_tokens()
        if (tokens or not self._open()) and not matches(bearer(request), tokens):
            self.submitter.metrics.rejected.labels("handoff", "auth").inc()
            return error(401, "missing or invalid peer token", "auth")
        return await self._submit(request, allowed=())

    async def _submit(self, request: web.Request, *, allowed: Sequence[str]) -> web.Response:
        intake_ = self.submitter.intake
        if not intake_.accepting and HANDOFF_HEADER not in request.headers:
            return _rejection(intake.DRAINING)  # a hand-off repeat is looked up (`intake`)
        content_type = request.content_type
        if content_type != "application/json" and content_type not in RAW_TYPES and (
            content_type != envelopes.CONTENT_TYPE
        ):
            return error(415, f"unsupported content type {content_type!r}", "content-type")
        try:
            body = await bodies.read_body(request, self._body_cap(content_type))
        except bodies.TooLarge:
            return _rejection(messages.TOO_BIG)
        if content_type == "application/json":
            return await self._post_json(body, allowed=allowed)
        key = request.headers.get(HANDOFF_HEADER)
        if key is not None and not (0 < len(key) <= MAX_HANDOFF_KEY and key.isascii()):
            return error(400, f"{HANDOFF_HEADER}: 1-{MAX_HANDOFF_KEY} ASCII characters",
                          "invalid")
        if content_type == envelopes.CONTENT_TYPE:
            return await self._post_handoff(body, handoff_key=key, allowed=allowed)
        return await self._post_raw(request, body, handoff_key=key, allowed=allowed)

    def _body_cap(self, content_type: str) -> int:
        """Per kind of body: the message, plus JSON escaping (which can double it) or the
        hand-off envelope (up to maxRecipients addresses)."""
        s = self.submitter.intake.cfg.submission
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
        self.submitter.metrics.rejected.labels("http", "from_domain").inc()
        return _rejection(refused)

    async def _post_handoff(
        self, body: bytes, *, handoff_key: str | None, allowed: Sequence[str]
    ) -> web.Response:
        """A message another pod hands off, its envelope in the body (`envelopes`)."""
        max_recipients = self.submitter.intake.cfg.submission.max_recipients
        try:
            envelope, data = envelopes.decode(
                body, max_envelope=envelopes.max_envelope_bytes(max_recipients)
            )
        except envelopes.BadEnvelope as exc:
            return error(400, str(exc), "invalid")
        refused = self._domain_refusal(allowed, data, envelope.sender)
        if refused is not None:
            return refused
        result = await self.submitter.intake.submit(
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
        intake_ = self.submitter.intake
        try:
            payload = bodies.loads(body)
        except bodies.BadJSON as exc:
            return error(400, str(exc), "json")
        try:
            request = wire.SubmitRequest.model_validate(payload)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}"
                for e in exc.errors()
            )
            return error(400, problems, "invalid")
        sender_address = _address_of(request.from_)
        if sender_address is None:
            return error(400, "from: not an email address", "invalid")
        for name, value in request.headers.items():
            if not _header_ok(name, value):
                return error(400, f"headers.{name}: invalid header", "invalid")
        recipients = []
        for item in request.to:
            address = _address_of(item)
            if address is None:
                return error(400, f"to: {item!r} is not an email address", "invalid")
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
            return error(400, f"cannot build the message: {exc}", "invalid")
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
                return error(400, "no recipients in ?to= nor in To/Cc/Bcc", "invalid")
        sender = request.query.get("from")
        if sender is None:
            found = _header_addresses(fields, ("from",))
            sender = found[0] if found else ""
        refused = self._domain_refusal(allowed, body, sender)
        if refused is not None:
            return refused
        result = await self.submitter.intake.submit(
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
