"""Prometheus metrics of one sender, in a registry of its own (several senders can run in one
test process). Queue gauges are read at scrape time from the scheduler, not kept in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mailfleet_sender import kpis

PREFIX = "mailfleet_sender"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
SIGN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


class _Snapshot(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(
            f"{PREFIX}_accepted_messages", "Messages accepted into the spool.", ["via", "class"],
            registry=r,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_submissions", "Submissions refused.", ["via", "reason"],
            registry=r,
        )
        self.messages = Counter(
            f"{PREFIX}_messages",
            "Delivery attempts by result (delivered, deferred, bounced, expired, suppressed).",
            ["result", "class", "ip", "provider"],
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_delivery_latency_seconds",
            "From acceptance to remote 250.",
            ["class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dkim_sign = Histogram(
            f"{PREFIX}_dkim_sign_seconds",
            "Time to DKIM-sign one message (all its signatures).",
            buckets=SIGN_BUCKETS,
            registry=r,
        )
        self.config_valid = Gauge(
            f"{PREFIX}_config_valid", "1 when the last config (re)load succeeded.", registry=r
        )
        self.config_reload_failures = Counter(
            f"{PREFIX}_config_reload_failures", "Config reloads refused.", registry=r
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads", "Config reloads applied.", registry=r
        )
        self.held = Counter(
            f"{PREFIX}_held_messages",
            "Deliveries held: no DKIM key, or bulk mail while the suppression list is lost.",
            registry=r,
        )
        self.quarantined = Counter(
            f"{PREFIX}_spool_quarantined",
            "Corrupt databases on the spool volume set aside at start (spool, suppression, "
            "reports): the pod started with an empty one.",
            ["database"],
            registry=r,
        )
        self.feedback_reports = Counter(
            f"{PREFIX}_feedback_reports",
            "Reports on the feedback port by type (dsn, arf, unsubscribe) and result "
            "(applied, duplicate, ignored, refused, deferred).",
            ["report", "result"],
            registry=r,
        )
        self.complaints = Counter(
            f"{PREFIX}_complaints",
            "Complaint (ARF) reports matched to mail this pool sent, by class and source IP.",
            ["class", "ip"],
            registry=r,
        )
        self.feedback_refused = Counter(
            f"{PREFIX}_feedback_refused",
            "Unusable reports by reason (not_multipart_report, forged_trace, unknown_message...).",
            ["reason"],
            registry=r,
        )
        self.feedback_rate_limited = Counter(
            f"{PREFIX}_feedback_rate_limited",
            "Report transactions refused (451 4.7.1) because their source was over its rate.",
            registry=r,
        )
        self.unsubscribes = Counter(
            f"{PREFIX}_unsubscribes",
            "One-click and mailto unsubscribes by result (recorded, unchanged, forged_token, "
            "expired_token, bad_request).",
            ["via", "result"],
            registry=r,
        )
        self.suppressions = Counter(
            f"{PREFIX}_suppressions_recorded",
            "Addresses this pod put on the pool's suppression list, by reason.",
            ["reason"],
            registry=r,
        )
        self.shaping_events = Counter(
            f"{PREFIX}_shaping_transitions",
            "Reactive shaping transitions (backoff, suspend, resume, recover, recovered).",
            ["provider", "transition"],
            registry=r,
        )
        self.handoff = Counter(
            f"{PREFIX}_handoff_messages",
            "Messages handed off to other pods on drain, by result (accepted, duplicate, bounced, "
            "failed).",
            ["result"],
            registry=r,
        )

    def attach(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Register a scrape-time reader (queues, IPs)."""
        self.registry.register(_Snapshot(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


KPI_BREAKOUTS: dict[str, list[str]] = {
    "pool": [], "class": ["class"], "provider": ["provider"], "ip": ["ip"], "tag": ["tag", "value"],
}
"""Family -> its labels besides `pool` (and `figure` for counters). Each breakout is its own
family, never crossed with another: the label sets stay the sum of the capped value lists
(docs/kpis.md), not their product."""
KPI_METRICS: tuple[str, ...] = tuple(
    name for family in KPI_BREAKOUTS for name in (
        f"{PREFIX}_kpi_{family}_total", f"{PREFIX}_kpi_{family}_deliver_seconds_bucket",
        f"{PREFIX}_kpi_{family}_deliver_seconds_sum",
        f"{PREFIX}_kpi_{family}_deliver_seconds_count",
    )
)
"""Every series name the KPI families expose (the chart tests check dashboards against it)."""


def kpi_families(pool: str, lifetime: Mapping[kpis.Key, kpis.Lifetime]) -> list[Metric]:
    """The KPI counters (one series per figure) and time-to-deliver histograms since the book
    began, labelled only by the capped breakout values the book admitted."""
    counters = {
        family: CounterMetricFamily(
            f"{PREFIX}_kpi_{family}",
            f"Campaign KPI counts per {family} (figure: sent, delivered, hard_bounced, "
            "opened_human as unique opens...; docs/kpis.md).",
            labels=["pool", *labels, "figure"],
        )
        for family, labels in KPI_BREAKOUTS.items()
    }
    histograms = {
        family: HistogramMetricFamily(
            f"{PREFIX}_kpi_{family}_deliver_seconds",
            f"Time from accepted to delivered per {family}.",
            labels=["pool", *labels],
        )
        for family, labels in KPI_BREAKOUTS.items()
    }
    for (dim, value), life in sorted(lifetime.items()):
        if dim == kpis.TOTAL:
            family, labels = "pool", [pool]
        elif dim.startswith("tag:"):
            family, labels = "tag", [pool, dim.removeprefix("tag:"), value]
        else:
            family, labels = dim, [pool, value]
        for figure, n in zip(kpis.COUNTS, life.counts, strict=True):
            counters[family].add_metric([*labels, figure], n)
        cumulative, buckets = 0, []
        for bound, n in zip((*kpis.PROMETHEUS_BUCKETS, float("inf")), life.buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), cumulative))
        histograms[family].add_metric(labels, buckets, life.delay_sum)
    return [*counters.values(), *histograms.values()]
