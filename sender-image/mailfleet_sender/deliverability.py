"""The deliverability layer of one pod, plugged into the delivery core through `hooks.Hooks`:
bounce classification with soft-to-hard escalation, the pool's suppression list (replicated
between pods), List-Unsubscribe and the one-click endpoint's logic, the trace header and VERP
return paths that let reports find their recipient, reactive shaping, and the rolling rates
of /v1/stats. docs/deliverability.md tells the story; the pure rules live in `bounces`,
`reports`, `feedback`, `unsubscribe`, `shaping`, `rates` and `suppression`.

State and where it lives: the suppression list in SQLite on the spool volume (replicated),
soft-bounce counts in the spool (so `softToHardAfter` spans restarts), shaping factors and
rolling counters in memory (a restarted pod starts at full speed with empty windows, which the
operator's gates tolerate: a rate without traffic is null, not 0).

Keys: every pod of the pool must hold the same link keys, or a report or an unsubscribe that
lands on another pod would not verify; they come from the pool's own Secret, as a list so a
rotation keeps old links valid (`link_keys`). Nothing is derived from the admin token. A lone
pod without `linkKeyDir` keeps a random key in its spool directory and says so in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailfleet_sender import (
    bounces,
    clock,
    config,
    event_publishing,
    feedback,
    hooks,
    link_keys,
    metrics,
    rates,
    report_limits,
    reported_copies,
    reports,
    shaping,
    spool,
    suppression,
    units,
    unsubscribe,
)

log = logging.getLogger(__name__)

SUPPRESSION_FILE = "suppression.sqlite3"
_LIST_UNSUBSCRIBE = re.compile(rb"(?im)^list-unsubscribe:")
_REF_CHARS = re.compile(r"[^A-Za-z0-9_]")

UnsubscribeToken = unsubscribe.UnsubscribeToken
FeedbackCounter = Callable[[str, str], None]
"""(source IP, kind) -> count a report against the IP's day (complained, bounced)."""


@dataclasses.dataclass(frozen=True)
class UnsubscribeResult:
    status: int
    result: str
    """recorded, unchanged, forged_token, expired_token."""
    recipient: str | None = None


def load_keys(cfg: config.SenderConfig, *, spool_dir: str | Path) -> link_keys.PoolKeys:
    """The pool's link keys and peer tokens from their files (a lone pod without a key dir:
    its own key). Raises config.ConfigError when a file given cannot be used: fail closed."""
    d = cfg.deliverability
    try:
        links = (
            link_keys.read_key_dir(d.link_key_dir) if d.link_key_dir
            else (link_keys.local_key(spool_dir),)
        )
        tokens = link_keys.read_peer_tokens(d.peer_token_file) if d.peer_token_file else ()
    except link_keys.LinkKeyError as exc:
        raise config.ConfigError(f"deliverability: {exc}") from exc
    return link_keys.PoolKeys(
        links, tokens, link_dir=d.link_key_dir, peer_token_file=d.peer_token_file
    )


def message_ref(pod: str, spool_id: str) -> str:
    """The id marks carry: pod-qualified (spool ids repeat across pods), VERP-safe."""
    return f"{_REF_CHARS.sub('_', pod)[:24]}.{spool_id}"


def _header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


class Deliverability:
    """One pod's deliverability state; `hook_set()` gives the core its plug points."""

    def __init__(
        self,
        *,
        cfg: config.SenderConfig,
        keys: link_keys.PoolKeys,
        node_id: str,
        spool_: spool.Spool,
        clock_: clock.Clock,
        metric_set: metrics.Metrics,
        suppression_path: str | Path,
    ) -> None:
        self.cfg = cfg
        self.keys = keys
        self.node_id = node_id
        self.spool = spool_
        self.clock = clock_
        self.metrics = metric_set
        self.suppressions = suppression.SuppressionList(
            suppression_path, node_id=node_id, clock=clock_.wall
        )
        self.shaper = shaping.Shaper(cfg.deliverability.shaping)
        self.counters = rates.RollingCounters()
        self.soft_counts: dict[str, int] = spool_.load_soft_counts()
        self.used_tokens = unsubscribe.MemoryUsedTokens()
        self.count_feedback: FeedbackCounter = lambda ip, kind: None
        self.events: event_publishing.Publisher | None = None
        """Where complaints, reported bounces and unsubscribes become events."""
        limits = cfg.deliverability.reports
        self.reported = reported_copies.ReportedCopies(
            Path(suppression_path).parent / reported_copies.FILE,
            window=units.duration_seconds(limits.replay_window),
            capacity=limits.max_remembered,
        )

    @property
    def limits(self) -> report_limits.ReportLimits:
        return self.cfg.deliverability.reports

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        self.cfg = cfg
        self.shaper.update_rules(cfg.deliverability.shaping)
        self.reported.window = units.duration_seconds(cfg.deliverability.reports.replay_window)
        self.reported.capacity = cfg.deliverability.reports.max_remembered

    def close(self) -> None:
        self.suppressions.close()
        self.reported.close()

    def hook_set(self) -> hooks.Hooks:
        return hooks.Hooks(
            classify=self.classify,
            is_suppressed=self.is_suppressed,
            hold_reason=self.hold_reason,
            prepare=self.prepare,
            stamp=self.stamp,
            return_path=self.return_path,
            pace=self.pace,
            observe=self.observe,
        )

    # --- marks ------------------------------------------------------------------------

    @property
    def marks(self) -> feedback.Marks:
        return feedback.Marks(trace_keys=self.keys.verifying)

    def _ref(self, context: hooks.PrepareContext) -> str:
        return message_ref(self.node_id, context.message_id)

    # --- hooks ------------------------------------------------------------------------

    def classify(self, reply: hooks.Reply, recipient: str) -> hooks.Classification:
        """bounces.classify_reply, then soft-to-hard escalation for the recipient."""
        text = reply.text
        if reply.enhanced and reply.enhanced not in text:
            text = f"{reply.enhanced} {text}"
        verdict = bounces.classify_reply(reply.code, text, provider=reply.provider)
        category, reason = verdict.category, verdict.reason
        if category is bounces.Category.SOFT_BOUNCE:
            previous = self.soft_counts.get(recipient.lower(), 0)
            escalated = bounces.escalate_soft(previous, self.cfg.bounces.soft_to_hard_after)
            if escalated is bounces.Category.HARD_BOUNCE:
                return hooks.Classification(
                    hooks.Verdict.BOUNCED, escalated.value,
                    f"soft_to_hard: {previous + 1} soft bounces in a row ({reason})",
                )
        return hooks.Classification(
            hooks.Verdict.DEFERRED if verdict.retryable else hooks.Verdict.BOUNCED,
            category.value,
            reason,
        )

    def is_suppressed(self, recipient: str, class_name: str) -> bool:
        return self.cfg.deliverability.suppression.enabled and self.suppressions.is_suppressed(
            recipient
        )

    def hold_reason(self, class_name: str) -> str | None:
        """Fail closed: bulk mail waits while the suppression list is lost (its file was
        corrupt and set aside) until a peer or an admin restores it."""
        if not self.suppressions.resync_pending:
            return None
        klass = self.cfg.class_named(class_name)
        if klass is None or not klass.bulk:
            return None
        return "suppression list lost, waiting for it to be restored"

    def prepare(self, data: bytes, context: hooks.PrepareContext) -> bytes:
        """List-Unsubscribe + List-Unsubscribe-Post for bulk classes (signed after this)."""
        d = self.cfg.deliverability
        if not context.bulk or not d.unsubscribe_base_url:
            return data
        if _LIST_UNSUBSCRIBE.search(_header_section(data)):
            return data  # the submitter manages its own list headers
        headers = unsubscribe.build_unsubscribe_headers(
            context.recipient,
            d.unsubscribe_base_url,
            d.unsubscribe_mailto_domain or d.bounce_domain,
            self.keys.sealing(self.clock.wall()),
            list_id=f"{self.cfg.pool}/{context.class_name}",
            now=self.clock.wall(),
        )
        lines = b"".join(
            f"{name}: {value.replace(', ', ',' + chr(13) + chr(10) + ' ')}\r\n".encode()
            for name, value in headers
        )
        return lines + data

    def stamp(self, data: bytes, context: hooks.PrepareContext) -> bytes:
        """The sealed trace header, outside the DKIM signature (it differs per copy)."""
        trace = reports.Trace(
            message_id=self._ref(context),
            recipient=context.recipient,
            klass=context.class_name,
            source_ip=context.source_ip,
        )
        value = reports.encode_trace(trace, self.keys.sealing(self.clock.wall()))
        return f"{reports.TRACE_HEADER}: {value}\r\n".encode() + data

    def return_path(self, context: hooks.PrepareContext) -> str | None:
        """VERP: b-<ref>-<tag>@bounce domain, unless there is no bounce domain or the message
        has the null sender (a bounce must never bounce)."""
        domain = self.cfg.deliverability.bounce_domain
        if not domain or not context.sender:
            return None
        return reports.encode_verp_return_path(
            domain, self._ref(context), context.recipient,
            key=self.keys.sealing(self.clock.wall()),
        )

    def pace(self, provider: str) -> float:
        factor = self.shaper.rate_factor(provider, self.clock.monotonic())
        self._drain_shaping_events()
        return factor

    def observe(self, outcome: hooks.Outcome) -> None:
        now = self.clock.wall()
        ip = outcome.source_ip or None
        c = outcome.classification
        key = outcome.recipient.lower()
        if outcome.verdict is hooks.Verdict.DELIVERED:
            self._record(ip, outcome.class_name, rates.Outcome.DELIVERED, now)
            if self.soft_counts.pop(key, None) is not None:
                self.spool.update([], soft=[spool.SoftCount(key, 0)])
            return
        if outcome.verdict is hooks.Verdict.SUPPRESSED:
            self._record(None, outcome.class_name, rates.Outcome.SUPPRESSED, now)
            return
        if c is None or outcome.reply is None or not c.category:
            return
        try:
            category = bounces.Category(c.category)
        except ValueError:
            return
        classified = bounces.Classification(
            category=category, code=outcome.reply.code, enhanced=None, reason=c.reason
        )
        if outcome.reply.stage != "dns":
            self._record(ip, outcome.class_name, rates.outcome_for(classified), now)
        shaping_key = outcome.provider if outcome.provider not in ("", "other") else outcome.site
        if shaping_key:
            self.shaper.observe(shaping_key, classified, self.clock.monotonic())
            self._drain_shaping_events()
        if category is bounces.Category.SOFT_BOUNCE:
            self.soft_counts[key] = self.soft_counts.get(key, 0) + 1
            self.spool.update([], soft=[spool.SoftCount(key, self.soft_counts[key])])
        elif category is bounces.Category.HARD_BOUNCE:
            if self.soft_counts.pop(key, None) is not None:
                self.spool.update([], soft=[spool.SoftCount(key, 0)])
            if self.cfg.bounces.suppress_hard:
                reason = (
                    suppression.Reason.SOFT_TO_HARD if c.reason.startswith("soft_to_hard")
                    else suppression.Reason.HARD_BOUNCE
                )
                self.suppress(outcome.recipient, reason, f"{self.node_id}:smtp")

    def _record(self, ip: str | None, klass: str, outcome: rates.Outcome, now: float) -> None:
        self.counters.record(ip=ip, klass=klass, outcome=outcome, now=now)

    def _drain_shaping_events(self) -> None:
        for event in self.shaper.drain_events():
            self.metrics.shaping_events.labels(event.provider, event.transition.value).inc()
            log.info("shaping", extra={"provider": event.provider,
                                       "transition": event.transition.value,
                                       "factor": event.factor})

    # --- suppression and feedback -----------------------------------------------------

    def suppress(self, address: str, reason: str, source: str) -> bool:
        """Put an address on the pool list; False when it is not an address or already on."""
        try:
            if self.suppressions.is_suppressed(address):
                return False
            self.suppressions.record(address, reason, source)
        except suppression.InvalidAddress:
            log.warning("cannot suppress an invalid address", extra={"reason": reason})
            return False
        self.metrics.suppressions.labels(reason).inc()
        return True

    def read_report(self, raw: bytes, envelope_rcpts: Sequence[str]) -> feedback.Reading:
        """Parse and match one report under the configured caps. Touches no state of this
        object (keys and limits only), so it runs in a worker thread; ReportError when unusable.
        """
        limits = self.limits
        return feedback.read_report(raw, envelope_rcpts, self.marks,
                                    max_bytes=limits.max_bytes, max_parts=limits.max_parts)

    def refuse_report(self, error: reports.ReportError) -> None:
        self.metrics.feedback_refused.labels(error.reason).inc()
        self.metrics.feedback_reports.labels("unknown", "refused").inc()
        log.info("report refused", extra={"reason": error.reason})

    def apply_reading(self, reading: feedback.Reading) -> int:
        """Act on a matched report: each event counts once per copy (`reported_copies`); how
        many counted (0: all were about copies already counted). LedgerFull when the ledger
        cannot remember one more copy: nothing more is counted, the reporter should retry."""
        now = self.clock.wall()
        counted = 0
        for event in reading.events:
            key = reported_copies.identity(event.kind.value, event.message_ref, event.recipient)
            try:
                fresh = self.reported.claim(key, now)
            except reported_copies.LedgerFull:
                self.metrics.feedback_reports.labels(reading.report, "deferred").inc()
                log.warning("report ledger full: reports are refused for now",
                            extra={"capacity": self.reported.capacity})
                raise
            if not fresh:
                continue
            try:
                self._apply_event(event, now)
            except Exception:
                self.reported.release(key)  # not counted: the reporter's retry must count
                raise
            counted += 1
        result = "applied" if counted else "duplicate" if reading.events else "ignored"
        self.metrics.feedback_reports.labels(reading.report, result).inc()
        return counted

    def apply_report(self, raw: bytes, envelope_rcpts: Sequence[str]) -> feedback.Reading:
        """`read_report` then `apply_reading`, on the caller's thread (tests, small reports)."""
        try:
            reading = self.read_report(raw, envelope_rcpts)
        except reports.ReportError as error:
            self.refuse_report(error)
            raise
        self.apply_reading(reading)
        return reading

    async def flush_events(self) -> None:
        """Before telling a reporter or a recipient "done": their events are on disk."""
        if self.events is not None:
            try:
                await self.events.flush()
            except spool.SpoolError:  # kept queued and retried by the spool's writer
                log.warning("events not yet committed before answering")

    def _apply_event(self, event: feedback.Event, now: float) -> None:
        ip = event.source_ip or None
        if self.events is not None:
            self.events.reported(event, own_ref=message_ref(self.node_id, "").rstrip("."))
        if event.kind is feedback.Kind.COMPLAINT:
            self.metrics.complaints.labels(event.class_name or "", ip or "").inc()
            if event.class_name:
                self._record(ip, event.class_name, rates.Outcome.COMPLAINT, now)
            if ip:
                self.count_feedback(ip, "complained")
            self.suppress(event.recipient, suppression.Reason.COMPLAINT, f"{self.node_id}:arf")
            return
        category = event.category or bounces.Category.SOFT_BOUNCE
        outcome = {
            bounces.Category.HARD_BOUNCE: rates.Outcome.HARD_BOUNCE,
            bounces.Category.BLOCKED: rates.Outcome.BLOCKED,
        }.get(category, rates.Outcome.SOFT_BOUNCE)
        if event.class_name:
            self._record(ip, event.class_name, outcome, now)
        if ip:
            self.count_feedback(ip, "bounced")
        key = event.recipient.lower()
        if category is bounces.Category.SOFT_BOUNCE:
            previous = self.soft_counts.get(key, 0)
            self.soft_counts[key] = previous + 1
            self.spool.update([], soft=[spool.SoftCount(key, previous + 1)])
            escalated = bounces.escalate_soft(previous, self.cfg.bounces.soft_to_hard_after)
            if escalated is bounces.Category.HARD_BOUNCE and self.cfg.bounces.suppress_hard:
                self.suppress(event.recipient, suppression.Reason.SOFT_TO_HARD,
                              f"{self.node_id}:dsn")
        elif category is bounces.Category.HARD_BOUNCE and self.cfg.bounces.suppress_hard:
            self.suppress(event.recipient, suppression.Reason.HARD_BOUNCE, f"{self.node_id}:dsn")

    def unsubscribe(self, token: str, *, via: str) -> UnsubscribeResult:
        """Verify a token and record the opt-out; forged, expired or replayed change nothing."""
        max_age = units.duration_seconds(self.cfg.deliverability.unsubscribe_max_age)
        try:
            verified = unsubscribe.verify_token(
                token, self.keys.verifying, self.used_tokens, now=self.clock.wall(),
                max_age=max_age,
            )
        except unsubscribe.UnsubscribeError as error:
            self.metrics.unsubscribes.labels(via, error.reason).inc()
            log.info("unsubscribe refused", extra={"via": via, "reason": error.reason})
            return UnsubscribeResult(400, error.reason)
        recipient = verified.recipient
        try:
            record = unsubscribe.should_record(
                verified,
                currently_suppressed=self.suppressions.is_suppressed(recipient),
                last_removed_at=self.suppressions.last_removed_at(recipient),
            )
        except suppression.InvalidAddress:
            self.metrics.unsubscribes.labels(via, "forged_token").inc()
            return UnsubscribeResult(400, "forged_token")
        self._unsubscribed_event(verified)
        if not record:
            self.metrics.unsubscribes.labels(via, "unchanged").inc()
            return UnsubscribeResult(200, "unchanged", recipient)
        self.suppress(recipient, suppression.Reason.UNSUBSCRIBE, f"{self.node_id}:{via}")
        _, _, klass = verified.list_id.partition("/")
        self._record(None, klass or verified.list_id, rates.Outcome.UNSUBSCRIBE,
                     self.clock.wall())
        self.metrics.unsubscribes.labels(via, "recorded").inc()
        return UnsubscribeResult(200, "recorded", recipient)

    def _unsubscribed_event(self, verified: UnsubscribeToken) -> None:
        """The recipient opted out: an event even when already suppressed (a complaint came
        first), none for a replayed link or one older than a re-subscription."""
        if self.events is None or not unsubscribe.should_record(
            verified, currently_suppressed=False,
            last_removed_at=self.suppressions.last_removed_at(verified.recipient),
        ):
            return
        _, _, klass = verified.list_id.partition("/")
        self.events.record(self.events.builder.unsubscribed(
            recipient=verified.recipient, class_name=klass or None, now=self.clock.wall()))

    # --- views ------------------------------------------------------------------------

    def rates_snapshot(self) -> dict[str, Any]:
        return self.counters.snapshot(self.clock.wall())

    def shaping_snapshot(self) -> dict[str, dict[str, Any]]:
        """Providers currently slowed down or suspended (absent: full speed)."""
        now_mono, now_wall = self.clock.monotonic(), self.clock.wall()
        out: dict[str, dict[str, Any]] = {}
        for name in self.shaper.providers():
            state = self.shaper.state(name, now_mono)
            if state.factor >= 1.0 and state.suspended_until is None:
                continue
            until = state.suspended_until
            out[name] = {
                "factor": 0.0 if until is not None else state.factor,
                "backoffs": state.backoffs,
                "suspendedForSeconds": None if until is None else max(0.0, until - now_mono),
                "at": now_wall,
            }
        self._drain_shaping_events()
        return out

