"""TLS-RPT reports other senders send about the pool's own domains (those publishing
`_smtp._tls` through DomainAuth `spec.tlsrpt`): read, checked against RFC 8460 §4.4's JSON
shape, stored (`tlsrpt_store`) and counted.

Two doors: `POST /v1/tlsrpt` on the public listener (RFC 8460 §5.4, `application/tlsrpt+gzip`
or `application/tlsrpt+json`), and the feedback port for `multipart/report;
report-type=tlsrpt` mail (§5.3). Bounds: the body is read up to `inboundMaxBytes`, a gzip body
is inflated up to `inboundMaxJsonBytes` and no further (a small bomb cannot blow up in
memory), JSON nesting is limited (`bodies.loads`), and lists and strings have maximum sizes.
Only reports whose every policy domain is one of the pool's signing domains (or a subdomain)
are kept: others are refused (HTTP 403, SMTP 554), so the metric's `policy_domain` label only
takes the pool's own names.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.message
import email.parser
import email.policy
import logging
import zlib
from collections.abc import Callable
from typing import Annotated, Literal

import pydantic
from aiohttp import web
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from mailfleet_sender import bodies, config, metrics, tlsrpt_store, units, wire

log = logging.getLogger(__name__)

TYPES = {"application/tlsrpt+gzip": True, "application/tlsrpt+json": False}
"""Accepted media types, and whether the body is gzip (RFC 8460 §5.3)."""

Text = Annotated[str, Field(max_length=1000)]
Count = Annotated[int, Field(ge=0, le=2**53)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=lambda name: name.replace("_", "-"),
                              populate_by_name=True, extra="ignore")


class TLSRPTDateRange(_Model):
    start_datetime: datetime.datetime
    end_datetime: datetime.datetime


class TLSRPTPolicy(_Model):
    policy_type: Literal["tlsa", "sts", "no-policy-found"]
    policy_string: list[Text] | None = Field(default=None, max_length=1000)
    policy_domain: Annotated[str, Field(min_length=1, max_length=253)]
    mx_host: list[Text] | Text | None = Field(default=None)


class TLSRPTSummary(_Model):
    total_successful_session_count: Count
    total_failure_session_count: Count


class TLSRPTFailureDetails(_Model):
    result_type: Annotated[str, Field(min_length=1, max_length=100)]
    sending_mta_ip: Text | None = None
    receiving_mx_hostname: Text | None = None
    receiving_mx_helo: Text | None = None
    receiving_ip: Text | None = None
    failed_session_count: Count
    additional_information: Text | None = None
    failure_reason_code: Text | None = None


class TLSRPTPolicyReport(_Model):
    policy: TLSRPTPolicy
    summary: TLSRPTSummary
    failure_details: list[TLSRPTFailureDetails] | None = Field(default=None, max_length=10_000)


class TLSRPTReport(_Model):
    """RFC 8460 §4.4 (unknown fields ignored, as §4.4 asks of extensions)."""

    organization_name: Annotated[str, Field(min_length=1, max_length=1000)]
    date_range: TLSRPTDateRange
    contact_info: Text = ""
    report_id: Annotated[str, Field(min_length=1, max_length=1000)]
    policies: list[TLSRPTPolicyReport] = Field(min_length=1, max_length=10_000)


class Refused(Exception):
    """A report not kept: `reason` (metric label), the HTTP status to answer."""

    def __init__(self, reason: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.status = status
        self.detail = detail


def inflate(body: bytes, limit: int) -> bytes:
    """gunzip `body` to at most `limit` bytes (Refused `oversized` beyond)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Refused("malformed", 400, f"not gzip: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise Refused("oversized", 413, f"report over {limit} bytes once decompressed")
    if not inflater.eof:
        raise Refused("malformed", 400, "truncated gzip")
    return out


def decode(body: bytes, *, gzipped: bool, max_json: int) -> TLSRPTReport:
    """The report in `body`; Refused with the reason otherwise."""
    raw = inflate(body, max_json) if gzipped else body
    if len(raw) > max_json:
        raise Refused("oversized", 413, f"report over {max_json} bytes")
    try:
        return TLSRPTReport.model_validate(bodies.loads(raw))
    except bodies.BadJSON as exc:
        raise Refused("malformed", 400, str(exc)) from exc
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Refused("malformed", 400, f"not an RFC 8460 report: {where}: {first['msg']}") \
            from exc


def is_report_mail(data: bytes) -> bool:
    """Whether a message's header says `multipart/report; report-type=tlsrpt` (headers only)."""
    head = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    return (head.get_content_type() == "multipart/report"
            and str(head.get_param("report-type", "")).lower() == "tlsrpt")


def report_from_mail(data: bytes, *, max_json: int) -> TLSRPTReport:
    """The report attached to a §5.3 message."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(message, email.message.EmailMessage) or not message.is_multipart():
        raise Refused("malformed", 400, "not a multipart/report")
    for part in message.iter_parts():
        kind = part.get_content_type()
        if kind in TYPES:
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                break
            return decode(payload, gzipped=TYPES[kind], max_json=max_json)
    raise Refused("malformed", 400, "no application/tlsrpt+gzip or +json part")


class Inbound:
    """Keeps and counts received reports. `wall`: Unix seconds (injectable)."""

    def __init__(
        self, cfg: config.SenderConfig, *, store: tlsrpt_store.Store,
        metric_set: metrics.Metrics, wall: Callable[[], float],
    ) -> None:
        self.store = store
        self.wall = wall
        self.received = Counter(
            f"{metrics.PREFIX}_tlsrpt_received",
            "TLS-RPT reports received about the pool's domains, by policy domain and result "
            "(stored, duplicate: the same organization and report-id again).",
            ["policy_domain", "result"], registry=metric_set.registry,
        )
        self.sessions = Counter(
            f"{metrics.PREFIX}_tlsrpt_received_sessions",
            "Sessions other senders reported to the pool's domains, by result (successful, "
            "failed).",
            ["policy_domain", "result"], registry=metric_set.registry,
        )
        self.refused = Counter(
            f"{metrics.PREFIX}_tlsrpt_refused",
            "TLS-RPT reports refused, by reason (malformed, oversized, foreign_domain, "
            "unsupported_type).",
            ["reason"], registry=metric_set.registry,
        )
        self.refusals: dict[str, int] = {}
        self.reconfigure(cfg)

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        self.cfg = cfg
        self.domains = {d.domain.lower().rstrip(".") for d in cfg.dkim.domains}

    @property
    def limits(self) -> config.TLSReports:
        return self.cfg.delivery.tls.reports

    def own(self, domain: str) -> str | None:
        """The pool domain `domain` is (or is under); None for any other."""
        name = domain.lower().rstrip(".")
        for own in self.domains:
            if name == own or name.endswith("." + own):
                return own
        return None

    def keep(self, report: TLSRPTReport) -> bool:
        """Store and count a valid report; False when it was stored before."""
        domains = [p.policy.policy_domain for p in report.policies]
        owners = {self.own(d) for d in domains}
        if None in owners:
            foreign = next(d for d in domains if self.own(d) is None)
            raise Refused("foreign_domain", 403,
                          f"policy domain {foreign[:100]!r} is not one of this pool's")
        names = sorted(str(o) for o in owners)  # summaries are per pool domain
        ok = sum(p.summary.total_successful_session_count for p in report.policies)
        failed = sum(p.summary.total_failure_session_count for p in report.policies)
        stored = self.store.store_received(
            tlsrpt_store.Received(
                organization=report.organization_name, report_id=report.report_id,
                policy_domains=tuple(names), successes=ok, failures=failed,
                report=report.model_dump_json(by_alias=True, exclude_none=True),
            ),
            now=self.wall(), keep=units.duration_seconds(self.limits.keep_received),
            capacity=self.limits.max_received,
        )
        for p in report.policies:
            label = str(self.own(p.policy.policy_domain))
            self.received.labels(policy_domain=label,
                                 result="stored" if stored else "duplicate").inc()
            if stored:
                self.sessions.labels(policy_domain=label, result="successful").inc(
                    p.summary.total_successful_session_count)
                self.sessions.labels(policy_domain=label, result="failed").inc(
                    p.summary.total_failure_session_count)
        log.info("TLS-RPT report received", extra={
            "organization": report.organization_name[:100], "domains": names,
            "duplicate": not stored})
        return stored

    def refuse(self, error: Refused) -> None:
        self.refused.labels(reason=error.reason).inc()
        self.refusals[error.reason] = self.refusals.get(error.reason, 0) + 1

    # --- doors ------------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.Response:
        """POST /v1/tlsrpt (RFC 8460 §5.4)."""
        try:
            kind = request.content_type.lower()
            if kind not in TYPES:
                raise Refused("unsupported_type", 415,
                              "Content-Type must be application/tlsrpt+gzip or +json")
            try:
                body = await bodies.read_body(request, self.limits.inbound_max_bytes)
            except bodies.TooLarge as exc:
                raise Refused("oversized", 413, str(exc)) from exc
            report = decode(body, gzipped=TYPES[kind],
                            max_json=self.limits.inbound_max_json_bytes)
            stored = self.keep(report)
        except Refused as error:
            self.refuse(error)
            payload = wire.ErrorResponse(error=error.detail, code=error.reason)
            return web.json_response(payload.model_dump(by_alias=True), status=error.status)
        receipt = wire.TLSReportReceipt(report_id=report.report_id, duplicate=not stored)
        return web.json_response(receipt.model_dump(by_alias=True), status=200)

    async def reply_to_mail(self, data: bytes) -> str:
        """The SMTP reply to a §5.3 report mail (parsed in a worker thread, kept on the loop,
        which owns the store)."""
        try:
            report = await asyncio.to_thread(
                report_from_mail, data, max_json=self.limits.inbound_max_json_bytes)
            stored = self.keep(report)
        except Refused as error:
            self.refuse(error)
            return f"554 5.6.0 Report refused: {error.reason}: {error.detail[:200]}"
        return f"250 2.0.0 tlsrpt {'stored' if stored else 'duplicate: already stored'}"

    def stats(self) -> dict[str, wire.TLSReportsReceived]:
        return {
            domain: wire.TLSReportsReceived(
                reports=n, successful_sessions=ok, failed_sessions=failed,
                last_at=datetime.datetime.fromtimestamp(at, datetime.UTC),
            )
            for domain, (n, ok, failed, at) in sorted(self.store.received_summary().items())
        }

