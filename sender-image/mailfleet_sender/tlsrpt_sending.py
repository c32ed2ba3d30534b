"""Sending TLS-RPT reports (RFC 8460 §3, §5): the aggregate of `tlsrpt.Aggregator` written to
`tlsrpt_store` every `flushInterval`, and once a report period has ended, one report per
policy domain to each `rua` of its `_smtp._tls.<domain>` TXT record:

- `https:`: POSTed as `application/tlsrpt+gzip` (a 2xx answer is success; redirects are not
  followed), the certificate checked against the system store plus `delivery.tls.caFile`, the
  name looked up through the sender's resolver.
- `mailto:`: the RFC 8460 §5.3 message (`tlsrpt.build_mail`) submitted to this pod's own
  queue, in the report class (`SenderConfig.report_class`), so lease, quota, DKIM signing
  (by the From domain's key) and retries apply as to any message; once queued it is served.

A destination that fails is tried again after `retryFirst`, doubling up to `retryMax`; a report
not delivered to every destination within `retryFor` of its period's end is dropped and
counted (`mailfleet_sender_tlsrpt_reports_total{result="dropped"}`). Nothing here waits on
delivery: reports are sent from their own task. Each pod reports its own sessions, with a
report-id naming the pod: several reports per domain and day, which RFC 8460 allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver
from prometheus_client import Counter

from mailfleet_sender import (
    config,
    delivering,
    intake,
    messages,
    metrics,
    mta_sts,
    tlsrpt,
    tlsrpt_store,
    units,
)

log = logging.getLogger(__name__)

BATCH = 100
"""Reports tried per flush at most (the rest wait for the next one)."""


class Reporting:
    """The flush and send loop of one pod. `wall`: Unix seconds (injectable)."""

    def __init__(
        self,
        cfg: config.SenderConfig,
        *,
        aggregator: tlsrpt.Aggregator,
        store: tlsrpt_store.Store,
        resolver: dns.asyncresolver.Resolver,
        intake_: intake.Intake,
        metric_set: metrics.Metrics,
        wall: Callable[[], float],
        pod: str,
    ) -> None:
        self.aggregator = aggregator
        self.store = store
        self.resolver = resolver
        self.intake = intake_
        self.wall = wall
        self.pod = pod
        self.reports = Counter(
            f"{metrics.PREFIX}_tlsrpt_reports",
            "TLS-RPT reports by outcome: sent (to every rua), dropped (not delivered within "
            "retryFor, or past the outbox bound), no_rua (the domain asks for none).",
            ["result"], registry=metric_set.registry,
        )
        self.deliveries = Counter(
            f"{metrics.PREFIX}_tlsrpt_deliveries",
            "Tries of delivering a TLS-RPT report to one rua, by method (https, mailto) and "
            "result (ok, failed).",
            ["method", "result"], registry=metric_set.registry,
        )
        self.totals = {"sent": 0, "dropped": 0, "no_rua": 0}
        self._task: asyncio.Task[None] | None = None
        self.cfg = cfg
        self.reconfigure(cfg)

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        tls = cfg.delivery.tls
        length = units.duration_seconds(tls.reports.interval)
        if length != self.aggregator.period:
            # Counts are kept per period of the old length: they are reported now, as
            # periods of that length, and counting goes on under the new one.
            ended = self.aggregator.take_all()
            if self.cfg.delivery.tls.reports.enabled:
                self._move_to_outbox(ended)
            self.aggregator.period = length
        self.cfg = cfg
        self._context = delivering.make_context("webpki", "TLSv1.2", tls.ca_file)

    # --- lifecycle --------------------------------------------------------------------------

    def load(self) -> None:
        """The counts a previous run left (before any session is counted)."""
        for period, length, domain, data in self.store.load_counts():
            policies = tlsrpt.load_policies(data)
            if length == self.aggregator.period:
                self.aggregator.put_back(period, domain, policies)
            else:  # counted under another period length: reported as such
                self._move_to_outbox([(period, domain, policies)], length=length)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tlsrpt")

    async def stop(self) -> None:
        """Stop the loop and write what is in memory (a clean stop loses no count)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            self.flush()
        except Exception:
            log.exception("last TLS-RPT flush failed")

    async def _run(self) -> None:
        while True:
            reports = self.cfg.delivery.tls.reports
            await asyncio.sleep(units.duration_seconds(reports.flush_interval))
            try:
                self.flush()
                if self.cfg.delivery.tls.reports.enabled:
                    await self.send_due()
            except Exception:  # the loop must outlive a bad report or a full disk
                log.exception("TLS-RPT flush or send failed")

    # --- flush ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write changed counts; turn the periods that ended into reports in the outbox."""
        if not self.cfg.delivery.tls.reports.enabled:
            self.aggregator.take_dirty()
            self.aggregator.take_finished()  # nobody asked for them: memory stays bounded
            return
        dirty = self.aggregator.take_dirty()
        length = self.aggregator.period
        try:
            self.store.save_counts(
                [(index, length, domain, tlsrpt.dump_policies(p)) for index, domain, p in dirty]
            )
        except Exception:
            self.aggregator.mark_dirty(dirty)
            raise
        self._move_to_outbox(self.aggregator.take_finished())

    def _move_to_outbox(
        self, finished: list[tuple[int, str, list[tlsrpt.PolicyCounts]]],
        length: float | None = None,
    ) -> None:
        r = self.cfg.delivery.tls.reports
        period = self.aggregator.period if length is None else length
        for index, domain, policies in finished:
            report = tlsrpt.build_report(
                domain=domain, index=index, period=period, policies=policies,
                organization=r.organization, contact=r.contact,
                report_id=tlsrpt.new_report_id(domain=domain, index=index, period=period,
                                               pod=self.pod),
            )
            try:
                dropped = self.store.to_outbox(
                    period=index, domain=domain, report_id=str(report["report-id"]),
                    report=json.dumps(report), body=tlsrpt.encode_report(report),
                    now=self.wall(),
                )
            except Exception:
                self.aggregator.put_back(index, domain, policies)
                raise
            self._count("dropped", dropped)

    # --- sending ----------------------------------------------------------------------------

    async def send_due(self) -> None:
        for item in self.store.due(self.wall(), limit=BATCH):
            await self._send(item)

    async def _send(self, item: tlsrpt_store.Pending) -> None:
        r = self.cfg.delivery.tls.reports
        try:
            ruas = await self._rua(item.domain)
        except dns.exception.DNSException as exc:
            log.info("TLS-RPT record lookup failed; trying again later",
                     extra={"domain": item.domain, "error": str(exc)})
            ruas = None
        if ruas == []:
            self.store.remove(item)
            self._count("no_rua")
            return
        done = set(item.done)
        for uri in ruas or []:
            if uri in done:
                continue
            method = "https" if uri.startswith("https:") else "mailto"
            ok = await (self._post(uri, item) if method == "https" else self._mail(uri, item))
            self.deliveries.labels(method=method, result="ok" if ok else "failed").inc()
            if ok:
                done.add(uri)
        if ruas is not None and done >= set(ruas):
            self.store.remove(item)
            self._count("sent")
            log.info("TLS-RPT report sent", extra={"domain": item.domain,
                                                   "report_id": item.report_id})
            return
        now = self.wall()
        if now - item.created >= units.duration_seconds(r.retry_for):
            self.store.remove(item)
            self._count("dropped")
            log.warning("TLS-RPT report dropped: not delivered in time",
                        extra={"domain": item.domain, "report_id": item.report_id,
                               "attempts": item.attempts + 1})
            return
        wait = min(units.duration_seconds(r.retry_first) * 2 ** item.attempts,
                   units.duration_seconds(r.retry_max))
        self.store.served(item, tuple(done), next_try=now + wait)

    async def _rua(self, domain: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(f"_smtp._tls.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return tlsrpt.parse_rua(texts)

    async def _post(self, uri: str, item: tlsrpt_store.Pending) -> bool:
        timeout = aiohttp.ClientTimeout(
            total=units.duration_seconds(self.cfg.delivery.tls.reports.timeout))
        connector = aiohttp.TCPConnector(resolver=mta_sts.NameResolver(self.resolver),
                                         ssl=self._context, use_dns_cache=False)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
                    http.post(uri, data=item.body, allow_redirects=False,
                              headers={"Content-Type": "application/tlsrpt+gzip"}) as response:
                if 200 <= response.status < 300:
                    return True
                log.info("TLS-RPT report refused", extra={"domain": item.domain,
                                                          "status": response.status})
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.info("TLS-RPT report POST failed",
                     extra={"domain": item.domain, "error": str(exc)[:200]})
        return False

    async def _mail(self, uri: str, item: tlsrpt_store.Pending) -> bool:
        sender = self.cfg.report_from
        recipient = tlsrpt.mailto_address(uri)
        if sender is None or not messages.is_address(recipient):
            log.info("TLS-RPT report cannot go by mail",
                     extra={"domain": item.domain, "from_configured": sender is not None})
            return False
        data = tlsrpt.build_mail(report=json.loads(item.report), body=item.body,
                                 domain=item.domain, sender=sender, recipient=recipient,
                                 now=self.wall())
        result = await self.intake.submit(
            sender=sender, recipients=[recipient], data=data, via="tlsrpt",
            class_name=self.cfg.report_class,
        )
        if isinstance(result, messages.Rejection):
            log.info("TLS-RPT report not queued", extra={"domain": item.domain,
                                                         "reason": result.text})
            return False
        return True

    def _count(self, result: str, n: int = 1) -> None:
        if n > 0:
            self.reports.labels(result=result).inc(n)
            self.totals[result] += n
