"""The mailfleet Grafana dashboard, built with Grafana's own SDK (grafana-foundation-sdk).

Why a builder and not hand-written JSON: the SDK's types are generated from Grafana's
dashboard schema, so the JSON it emits has the fields and shapes Grafana expects (checked
by mypy here and by tests/chart). `charts/generate.py` writes the result to
charts/mailfleet/files/dashboards/mailfleet.json; tests fail when that file is stale.

Sender series carry the pool as `mailfleet_io_pool` (the chart's PodMonitor copies the pod
label mailfleet.io/pool); operator series have no per-object labels by design.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.cog import encoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

UID = "mailfleet-overview"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SENDERS = 'namespace=~"$namespace", mailfleet_io_pool=~"$pool"'
CAMPAIGNS = f'{SENDERS}, tag="campaign", value=~"$campaign"'
"""The campaign view reads the KPIs broken out by the `campaign` tag (events.tagMetricsAllow)."""

Row = tuple[str, list[Any]]


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .datasource(DATASOURCE)
    )


def _series(title: str, description: str, unit: str, *queries: prometheus.Dataquery,
            stacked: bool = False) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .fill_opacity(20 if stacked else 5)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _stat(title: str, description: str, unit: str, query: prometheus.Dataquery) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .with_target(query)
    )


def _tag(figures: str, window: str) -> str:
    """Per campaign: the increase of the KPI counts `figures` (a regex) over `window`."""
    return (f'sum by (value) (increase(mailfleet_sender_kpi_tag_total{{{CAMPAIGNS}, '
            f'figure=~"{figures}"}}[{window}]))')


def _ratio(part: str, whole: str, window: str = "1h") -> str:
    return f"{_tag(part, window)} / {_tag(whole, window)}"


def _deliver_quantile(q: float, window: str) -> str:
    return (f"histogram_quantile({q}, sum by (value, le) (rate("
            f"mailfleet_sender_kpi_tag_deliver_seconds_bucket{{{CAMPAIGNS}}}[{window}])))")


_FINAL = "delivered|hard_bounced|soft_bounced"
_CAMPAIGN_COLUMNS = (
    ("sent", _tag("sent", "$__range"), "short"),
    ("delivery rate", _ratio("delivered", "sent", "$__range"), "percentunit"),
    ("hard bounce rate", _ratio("hard_bounced", _FINAL, "$__range"), "percentunit"),
    ("soft bounce rate", _ratio("soft_bounced", _FINAL, "$__range"), "percentunit"),
    ("complaint rate", _ratio("complained", "delivered", "$__range"), "percentunit"),
    ("unsubscribe rate", _ratio("unsubscribed", "delivered", "$__range"), "percentunit"),
    ("open rate", _ratio("opened_human", "delivered", "$__range"), "percentunit"),
    ("machine opens", _ratio("opened_machine", "delivered", "$__range"), "percentunit"),
    ("click rate", _ratio("clicked_human", "delivered", "$__range"), "percentunit"),
    ("deliver p50", _deliver_quantile(0.5, "$__range"), "s"),
    ("deliver p95", _deliver_quantile(0.95, "$__range"), "s"),
)


def _campaign_table() -> table.Panel:
    """One line per campaign over the dashboard's time range: the queries are merged on the
    campaign (`value`) and their value columns named after the figure."""
    panel = (
        table.Panel()
        .title("Campaigns (dashboard range)")
        .description("Per value of the campaign tag, over the whole time range: sent (accepted "
                     "recipients), delivered/sent, bounces over final outcomes, complaints, "
                     "unsubscribes, unique human opens and clicks over delivered, machine "
                     "(proxy) opens apart, time to deliver. Definitions: docs/kpis.md.")
        .datasource(DATASOURCE)
    )
    rename: dict[str, str] = {}
    for i, (name, expr, unit) in enumerate(_CAMPAIGN_COLUMNS):
        ref = chr(ord("A") + i)
        panel = panel.with_target(
            _query(expr, name, ref).instant().format(prometheus_model.PromQueryFormat.TABLE)
        )
        rename[f"Value #{ref}"] = name
        panel = panel.override_by_name(name, [model.DynamicConfigValue("unit", unit)])
    rename["value"] = "campaign"
    return (
        panel
        .with_transformation(model.DataTransformerConfig("merge", options={}))
        .with_transformation(model.DataTransformerConfig(
            "organize", options={"excludeByName": {"Time": True}, "renameByName": rename}))
    )


def _campaign_rows() -> list[Any]:
    return [
        _campaign_table(),
        _series("Delivery rate by campaign (1 h)", "Delivered / sent per campaign over the "
                "hour before each point (above 1 while a backlog accepted earlier drains).",
                "percentunit", _query(_ratio("delivered", "sent"), "{{value}}")),
        _series("Bounce rates by campaign (1 h)", "Hard and soft bounces over final outcomes "
                "(delivered + bounced) per campaign: a list to clean shows here.",
                "percentunit",
                _query(_ratio("hard_bounced", _FINAL), "{{value}} hard"),
                _query(_ratio("soft_bounced", _FINAL), "{{value}} soft", "B")),
        _series("Complaint rate by campaign (1 h)", "Complaints (feedback loops) over "
                "delivered; providers act above about 0.1 %.", "percentunit",
                _query(_ratio("complained", "delivered"), "{{value}}")),
        _series("Open rate by campaign (1 h)", "Unique human opens over delivered; proxy "
                "prefetches (machine) apart, never counted as human.", "percentunit",
                _query(_ratio("opened_human", "delivered"), "{{value}} human"),
                _query(_ratio("opened_machine", "delivered"), "{{value}} machine", "B")),
        _series("Click rate by campaign (1 h)", "Unique human clicks over delivered.",
                "percentunit", _query(_ratio("clicked_human", "delivered"), "{{value}}")),
        _series("Time to deliver by campaign (p50, p95)", "From accepted to the remote 250, "
                "per campaign, over the last hour.", "s",
                _query(_deliver_quantile(0.5, "1h"), "{{value}} p50"),
                _query(_deliver_quantile(0.95, "1h"), "{{value}} p95", "B")),
    ]


def _rows() -> list[Row]:
    delivered = f'mailfleet_sender_messages_total{{{SENDERS}}}'
    return [
        ("Deliveries", [
            _stat("Delivered (24 h)", "Messages accepted by the receiving MX in the last 24 h.",
                  "short",
                  _query(f'sum(increase(mailfleet_sender_messages_total{{{SENDERS}, '
                         f'result="delivered"}}[24h]))', "delivered")),
            _stat("Bounce rate (1 h)", "Bounced / (delivered + bounced) over the last hour. "
                  "Providers start blocking around 5-10 %.", "percentunit",
                  _query(f'sum(increase(mailfleet_sender_messages_total{{{SENDERS}, '
                         f'result="bounced"}}[1h])) / clamp_min(sum(increase('
                         f'mailfleet_sender_messages_total{{{SENDERS}, '
                         f'result=~"delivered|bounced"}}[1h])), 1)', "bounce rate")),
            _series("Deliveries by result", "Delivery attempts per second by outcome.",
                    "ops",
                    _query(f"sum by (result) (rate({delivered}[$__rate_interval]))",
                           "{{result}}"), stacked=True),
            _series("Deliveries by provider", "Delivered messages per second by the "
                    "receiving provider (MX pattern).", "ops",
                    _query(f'sum by (provider) (rate(mailfleet_sender_messages_total{{{SENDERS},'
                           f' result="delivered"}}[$__rate_interval]))', "{{provider}}"),
                    stacked=True),
            _series("Bounces and deferrals by provider", "Bounced and deferred attempts per "
                    "second, by provider: a provider throttling or blocking shows here first.",
                    "ops",
                    _query(f'sum by (provider, result) (rate(mailfleet_sender_messages_total{{'
                           f'{SENDERS}, result=~"bounced|deferred"}}[$__rate_interval]))',
                           "{{provider}} {{result}}")),
            _series("Delivery latency (p50, p95)", "Time from acceptance to the remote 250.",
                    "s",
                    _query(f"histogram_quantile(0.5, sum by (le) (rate("
                           f"mailfleet_sender_delivery_latency_seconds_bucket{{{SENDERS}}}"
                           f"[$__rate_interval])))", "p50"),
                    _query(f"histogram_quantile(0.95, sum by (le) (rate("
                           f"mailfleet_sender_delivery_latency_seconds_bucket{{{SENDERS}}}"
                           f"[$__rate_interval])))", "p95", ref="B")),
        ]),
        ("Campaigns", _campaign_rows()),
        ("Queue", [
            _series("Queue depth by class", "Deliveries not yet final, per priority class.",
                    "short",
                    _query(f"sum by (mailfleet_io_pool, class) (mailfleet_sender_queue_depth{{"
                           f"{SENDERS}}})", "{{mailfleet_io_pool}} {{class}}"), stacked=True),
            _series("Oldest queued message", "Age of the oldest pending delivery per class; "
                    "the MailfleetQueueOldestMessageOld alert fires on this.", "s",
                    _query(f"max by (mailfleet_io_pool, class) ("
                           f"mailfleet_sender_queue_oldest_age_seconds{{{SENDERS}}})",
                           "{{mailfleet_io_pool}} {{class}}")),
        ]),
        ("Warm-up and IPs", [
            bargauge.Panel()
            .title("Warm-up progress per IP (today)")
            .description("Messages sent today / today's quota of each leased IP: a bar at 100 % "
                         "is an IP that used its whole warm-up quota.")
            .datasource(DATASOURCE)
            .unit("percentunit")
            .min(0)
            .max(1)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.HORIZONTAL)
            .with_target(
                _query(f"max by (ip) (mailfleet_sender_ip_sent_today{{{SENDERS}}}) / "
                       f"clamp_min(max by (ip) (mailfleet_sender_ip_sent_today{{{SENDERS}}}) + "
                       f"max by (ip) (mailfleet_sender_ip_quota_remaining{{{SENDERS}}}), 1)",
                       "{{ip}}")
            ),
            _series("Sent today per IP", "Messages sent from each egress IP this quota day.",
                    "short",
                    _query(f"max by (ip) (mailfleet_sender_ip_sent_today{{{SENDERS}}})",
                           "{{ip}}")),
            _series("Egress IPs by state", "Active, Standby, Draining, Blocklisted and "
                    "Unassigned IPs over every pool.", "short",
                    _query("sum by (state) (mailfleet_operator_pool_ips)", "{{state}}"),
                    stacked=True),
        ]),
        ("Failover and reputation", [
            _series("Failovers", "Egress IPs moved to a standby sender, by reason.", "short",
                    _query("sum by (reason) (increase(mailfleet_operator_ip_failovers_total"
                           "[$__rate_interval]))", "{{reason}}")),
            _series("Reputation pauses", "Circuit-breaker trips (bounce or complaint rate "
                    "over spec.reputation.pauseAt), by scope.", "short",
                    _query("sum by (scope) (increase(mailfleet_operator_reputation_pauses_total"
                           "[$__rate_interval]))", "{{scope}}")),
        ]),
        ("Transport security", [
            _series("TLS share of MX sessions", "Share of outgoing SMTP sessions that carried "
                    "mail encrypted, by policy (dane, mta-sts, require-tls, opportunistic).",
                    "percentunit",
                    _query("sum by (policy) (rate(mailfleet_sender_tls_sessions_total"
                           "{result=\"tls\"}[$__rate_interval])) / sum by (policy) (rate("
                           "mailfleet_sender_tls_sessions_total[$__rate_interval]))",
                           "{{policy}}")),
            _series("TLS sessions by result", "tls, fallback (clear after a failed handshake), "
                    "plaintext (no STARTTLS) and the failures that deferred mail.", "ops",
                    _query("sum by (result) (rate(mailfleet_sender_tls_sessions_total"
                           "[$__rate_interval]))", "{{result}}")),
            _series("TLS-RPT reports", "Reports sent to receiving domains (sent, dropped, "
                    "no_rua) and reports received for the pool's own domains.", "short",
                    _query("sum by (result) (increase(mailfleet_sender_tlsrpt_reports_total"
                           "[$__rate_interval]))", "sent {{result}}"),
                    _query("sum by (result) (increase(mailfleet_sender_tlsrpt_received_total"
                           "[$__rate_interval]))", "received {{result}}", "B")),
        ]),
        ("DNS and DKIM", [
            table.Panel()
            .title("DNS verification (last hour)")
            .description("Record checks against DNS by family (dkim, spf, dmarc, bimi, "
                         "returnPath) and result; anything but `published` needs a look.")
            .datasource(DATASOURCE)
            .with_target(
                _query("sum by (family, result) (increase("
                       "mailfleet_operator_dns_verifications_total[1h]))",
                       "{{family}} {{result}}")
                .instant()
                .format(prometheus_model.PromQueryFormat.TABLE)
            ),
            _series("DKIM key transitions", "Key life events (KeyGenerated, KeyPublished, "
                    "KeyVerified, KeyActivated, KeyRetired...).", "short",
                    _query("sum by (reason) (increase(mailfleet_operator_dkim_transitions_total"
                           "[$__rate_interval]))", "{{reason}}")),
        ]),
        ("Operator", [
            _series("Reconciles by kind", "Reconcile cycles per second.", "ops",
                    _query("sum by (kind) (rate(mailfleet_operator_reconciles_total"
                           "[$__rate_interval]))", "{{kind}}")),
            _series("Reconcile errors", "Failed reconciles per second, by kind and error.",
                    "ops",
                    _query("sum by (kind, error) (rate("
                           "mailfleet_operator_reconcile_errors_total[$__rate_interval]))",
                           "{{kind}} {{error}}")),
            _series("Reconcile duration (p95)", "95th percentile of one reconcile cycle.", "s",
                    _query("histogram_quantile(0.95, sum by (kind, le) (rate("
                           "mailfleet_operator_reconcile_duration_seconds_bucket"
                           "[$__rate_interval])))", "{{kind}}")),
        ]),
    ]


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict, panels laid out 3 per row (full rows for tables)."""
    builder = (
        dashboard.Dashboard("mailfleet")
        .uid(UID)
        .description("Deliveries, campaigns, queues, IP warm-up, failovers, transport "
                     "security and DNS of mailfleet pools.")
        .tags(["mailfleet", "email"])
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(mailfleet_sender_queue_depth, namespace)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            dashboard.QueryVariable("pool")
            .label("Pool")
            .datasource(DATASOURCE)
            .query('label_values(mailfleet_sender_queue_depth{namespace=~"$namespace"}, '
                   "mailfleet_io_pool)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            dashboard.QueryVariable("campaign")
            .label("Campaign")
            .datasource(DATASOURCE)
            .query(f'label_values(mailfleet_sender_kpi_tag_total{{{SENDERS}, tag="campaign"}}, '
                   "value)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    y = 0
    panel_id = 0
    for title, panels in _rows():
        panel_id += 1
        row = dashboard.Row(title).id(panel_id).grid_pos(model.GridPos(h=1, w=24, x=0, y=y))
        builder = builder.with_row(row)
        y += 1
        x = 0
        for panel in panels:
            panel_id += 1
            width = 24 if isinstance(panel, table.Panel) else 8
            if x + width > 24:
                x, y = 0, y + 8
            grid = model.GridPos(h=8, w=width, x=x, y=y)
            builder = builder.with_panel(panel.id(panel_id).grid_pos(grid))
            x += width
        y += 8
    encoded = json.dumps(builder.build(), cls=encoder.JSONEncoder)
    result: dict[str, Any] = json.loads(encoded)
    return result


def render() -> str:
    """The file content: stable key order and indentation, so the committed copy diffs well."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"
