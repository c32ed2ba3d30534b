"""The demo report: summary figures, the Markdown page, the warm-up chart (SVG) and the text
shown in the terminal. Pure rendering (no I/O) apart from `write_report`.

`build_summary` gathers the scenes' results into the dict written to
`demo-report/summary.json`: accepted, delivered, bounced, deferred, lost, the three pass rates,
quota_violations, failover_s, rotation_s, tls_rate (share of delivered messages the
receivers got over TLS), mta_sts_deferred (messages the MTA-STS scene saw held back by the
bad certificate), tlsrpt_reports (TLS-RPT reports that reached the reporting addresses), each
pool's egress attachment mode
(`pool_attachments`, from the scenes' `details["attachments"]`) and one entry per scene with
its outcome (passed, failed or skipped with the reason).

Issue 20 (events and engagement): `events_summary` gives the fields `webhook_events` (by type),
`webhook_missing` (events the receivers' records imply that the webhook receiver never got),
`opens_recorded`/`opens_simulated`, `clicks_recorded`/`clicks_simulated` and `machine_opens`;
`campaign_kpis` and `render_kpi_table` the KPI table per campaign tag from the pods' /v1/stats.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mailfleet_sandbox.scenes import SceneResult

JSON = dict[str, Any]
SUMMARY_KEYS = ("accepted", "delivered", "bounced", "deferred", "lost", "dkim_pass_rate",
                "spf_pass_rate", "dmarc_pass_rate", "quota_violations", "failover_s",
                "rotation_s")


def build_summary(results: Sequence[SceneResult], figures: JSON, *,
                  total_s: float, day_seconds: float, control_plane: str = "") -> JSON:
    """The figures of summary.json; failover_s is the slowest failover of the failure scenes."""
    by_name = {r.name: r for r in results}
    failovers = [r.timings["failover_s"] for r in results if "failover_s" in r.timings]
    warmup = by_name.get("warmup")
    rotation = by_name.get("dkim_rotation")
    sts = by_name.get("mta_sts_enforce")
    violations = list((warmup.details.get("quota_violations") or []) if warmup else [])
    attachments: dict[str, str] = {}
    for r in results:
        attachments.update(r.details.get("attachments") or {})
    return {
        "ok": all(r.ok for r in results),
        "control_plane": control_plane,
        "pool_attachments": attachments,
        "total_s": round(total_s, 1),
        "warmup_day_seconds": day_seconds,
        "accepted": figures.get("accepted", 0),
        "delivered": figures.get("delivered", 0),
        "bounced": figures.get("bounced", 0),
        "deferred": figures.get("deferred", 0),
        "lost": figures.get("lost", 0),
        "duplicates": figures.get("duplicates", 0),
        "dkim_pass_rate": figures.get("dkim_pass_rate", 0.0),
        "spf_pass_rate": figures.get("spf_pass_rate", 0.0),
        "dmarc_pass_rate": figures.get("dmarc_pass_rate", 0.0),
        "tls_rate": figures.get("tls_rate", 0.0),
        "mta_sts_deferred": sts.details.get("mta_sts_deferred") if sts else None,
        "tlsrpt_reports": figures.get("tlsrpt_reports", 0),
        "quota_violations": len(violations),
        "quota_violation_list": violations,
        "failover_s": max(failovers) if failovers else None,
        "failovers_s": {r.name: r.timings["failover_s"] for r in results
                        if "failover_s" in r.timings},
        "rotation_s": rotation.timings.get("rotation_s") if rotation else None,
        "providers": figures.get("providers", {}),
        "per_ip_day": (warmup.details.get("per_ip_day") or []) if warmup else [],
        **event_fields(by_name.get("events")),
        "scenes": [{"name": r.name, "title": r.title, "outcome": r.outcome,
                    "duration_s": r.duration_s, "timings": r.timings,
                    "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                               for c in r.checks],
                    "error": r.error, "skipped": r.skipped} for r in results],
    }


EVENT_KEYS = ("webhook_events", "webhook_missing", "opens_recorded", "opens_simulated",
              "clicks_recorded", "clicks_simulated", "machine_opens", "machine_opens_simulated")


def event_fields(scene: SceneResult | None) -> JSON:
    """Issue 20's summary fields from the events scene (None when it did not run)."""
    figures = (scene.details.get("events") or {}) if scene else {}
    out: JSON = {k: figures.get(k) for k in EVENT_KEYS}
    details = scene.details if scene else {}
    out["kpis_by_campaign"] = details.get("kpis_by_campaign") or {}
    out["outbox_pending_at_outage_end"] = (details.get("outbox_at_outage_end") or {}).get(
        "pending")
    return out


def render_events(summary: JSON) -> list[str]:
    """The report's events section: what the webhook got, engagement, the KPIs per campaign."""
    if summary.get("webhook_events") is None:
        return []
    by_type = ", ".join(f"{k} {v}" for k, v in (summary["webhook_events"] or {}).items())
    return ["", "## Events and engagement", "",
            "| figure | value |", "|---|---|",
            f"| events the webhook got (by type) | {by_type} |",
            f"| events held in the outboxes when the receiver came back | "
            f"{summary.get('outbox_pending_at_outage_end')} |",
            f"| **events missing after the outage** | **{summary['webhook_missing']}** |",
            f"| human opens recorded / simulated | {summary['opens_recorded']} / "
            f"{summary['opens_simulated']} |",
            f"| clicks recorded / simulated | {summary['clicks_recorded']} / "
            f"{summary['clicks_simulated']} |",
            f"| machine opens recorded / simulated | {summary['machine_opens']} / "
            f"{summary['machine_opens_simulated']} |",
            "", "### KPIs per campaign (the pods' /v1/stats, last 24 h)", "",
            render_kpi_table(summary.get("kpis_by_campaign") or {}).rstrip("\n")]


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"


def _secs(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} s"


def attachments_line(summary: JSON) -> str:
    """`pool marketing: attachment Bind; pool mail-gw: attachment Cilium (...)`."""
    pools = summary.get("pool_attachments") or {}
    return "; ".join(f"pool {name}: attachment {mode}" for name, mode in pools.items())


def render_markdown(summary: JSON) -> str:
    verdict = "all scenes passed" if summary["ok"] else "SOME SCENES FAILED"
    lines = [
        "# mailfleet demo report", "",
        f"Run time {_secs(summary['total_s'])}; one warm-up day = "
        f"{summary['warmup_day_seconds']:g} s; {verdict}. Every figure below comes from what "
        "the simulated providers recorded (messages, peer IPs, SPF/DKIM/DMARC verdicts, "
        "answers), not from the senders.", "",
        *([f"Egress attachment per pool: {attachments_line(summary)}.", ""]
          if summary.get("pool_attachments") else []),
        "## Summary", "",
        "| figure | value |", "|---|---|",
        f"| accepted | {summary['accepted']} |",
        f"| delivered | {summary['delivered']} |",
        f"| bounced (with the receiver's reason) | {summary['bounced']} |",
        f"| deferred answers (4xx) | {summary['deferred']} |",
        f"| **lost** | **{summary['lost']}** |",
        f"| delivered twice | {summary['duplicates']} |",
        f"| DKIM pass | {_pct(summary['dkim_pass_rate'])} |",
        f"| SPF pass | {_pct(summary['spf_pass_rate'])} |",
        f"| DMARC pass | {_pct(summary['dmarc_pass_rate'])} |",
        f"| delivered over TLS | {_pct(summary.get('tls_rate'))} |",
        f"| deferred for MTA-STS (bad certificate) | {summary.get('mta_sts_deferred', '-')} |",
        f"| TLS-RPT reports received | {summary.get('tlsrpt_reports', 0)} |",
        f"| warm-up quota violations | {summary['quota_violations']} |",
        f"| failover (slowest) | {_secs(summary['failover_s'])} |",
        f"| DKIM rotation (annotation to first mail with the new key) | "
        f"{_secs(summary['rotation_s'])} |",
        "", "## Scenes", "",
        "| scene | outcome | took | timings |", "|---|---|---|---|",
    ]
    for scene in summary["scenes"]:
        timings = ", ".join(f"{k} {v}" for k, v in scene["timings"].items())
        lines.append(f"| {scene['title']} | {scene['outcome']} | "
                     f"{_secs(scene['duration_s'])} | {timings} |")
    lines += ["", "### Checks", ""]
    for scene in summary["scenes"]:
        lines.append(f"**{scene['title']}**")
        lines.append("")
        for check in scene["checks"]:
            mark = "✔" if check["ok"] else "✘"
            detail = f" — {check['detail']}" if check["detail"] else ""
            lines.append(f"- {mark} {check['name']}{detail}")
        if scene["error"]:
            lines.append(f"- ✘ {scene['error']}")
        if scene.get("skipped"):
            lines.append(f"- skipped: {scene['skipped']}")
        lines.append("")
    lines += ["## Per provider", "",
              "| provider | delivered | bounced (5xx) | deferred (4xx) | complaints | DKIM | "
              "SPF | DMARC |", "|---|---|---|---|---|---|---|---|"]
    for name, p in summary["providers"].items():
        lines.append(f"| {name} | {p['delivered']} | {p['bounced']} | {p['deferred']} | "
                     f"{p['complaints']} | {_pct(p['dkim_pass_rate'])} | "
                     f"{_pct(p['spf_pass_rate'])} | {_pct(p['dmarc_pass_rate'])} |")
    lines += render_events(summary)
    lines += ["", "## Warm-up: messages per IP and day against the quota", "",
              "![warm-up chart](warmup.svg)", "",
              "| IP | quota day | received | quota |", "|---|---|---|---|"]
    for row in summary["per_ip_day"]:
        quota = "none (warm)" if row["quota"] is None else row["quota"]
        lines.append(f"| {row['ip']} | {row['day']} | {row['sent']} | {quota} |")
    return "\n".join(lines) + "\n"


def render_warmup_svg(rows: Sequence[JSON], *, width: int = 720, height: int = 320) -> str:
    """Grouped bars: per quota day, what each IP delivered; a tick marks the day's quota."""
    days = sorted({r["day"] for r in rows})
    ips = sorted({r["ip"] for r in rows})
    colours = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2"]
    left, bottom, top = 50, 40, 30
    plot_w, plot_h = width - left - 20, height - bottom - top
    peak = max([r["sent"] for r in rows] + [r["quota"] or 0 for r in rows] + [1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13">Messages received per IP and quota day '
           f'(tick: the day\'s warm-up quota)</text>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
           f'stroke="#333"/>']
    for k in range(5):
        value = peak * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(f'<text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">{value:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{y:.0f}" x2="{left + plot_w}" y2="{y:.0f}" '
                   f'stroke="#ddd"/>')
    if days and ips:
        group = plot_w / len(days)
        bar = group * 0.8 / len(ips)
        index = {(r["ip"], r["day"]): r for r in rows}
        for d, day in enumerate(days):
            x0 = left + d * group + group * 0.1
            out.append(f'<text x="{x0 + group * 0.4:.0f}" y="{top + plot_h + 14}" '
                       f'text-anchor="middle">day {d + 1}</text>')
            for i, ip in enumerate(ips):
                row = index.get((ip, day))
                if row is None:
                    continue
                h = plot_h * row["sent"] / peak
                x = x0 + i * bar
                out.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 1:.1f}" '
                           f'height="{h:.1f}" fill="{colours[i % len(colours)]}">'
                           f'<title>{html.escape(ip)}: {row["sent"]}</title></rect>')
                if row["quota"]:
                    qy = top + plot_h - plot_h * row["quota"] / peak
                    out.append(f'<line x1="{x:.1f}" y1="{qy:.1f}" x2="{x + bar - 1:.1f}" '
                               f'y2="{qy:.1f}" stroke="#000" stroke-width="2"/>')
        for i, ip in enumerate(ips):
            x = left + i * 130
            out.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" '
                       f'fill="{colours[i % len(colours)]}"/>')
            out.append(f'<text x="{x + 14}" y="{height - 5}">{html.escape(ip)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_console(summary: JSON) -> str:
    """The report as shown at the end of `make demo`."""
    lines = ["", "mailfleet demo report", "=" * 21]
    for scene in summary["scenes"]:
        mark = {"passed": "ok ", "skipped": "skip"}.get(scene["outcome"], "FAIL")
        timings = ", ".join(f"{k}={v}" for k, v in scene["timings"].items())
        lines.append(f"[{mark}] {scene['title']:<64} {scene['duration_s']:6.1f}s  {timings}")
        for check in scene["checks"]:
            if not check["ok"]:
                lines.append(f"       ✘ {check['name']}: {check['detail']}")
        if scene["error"]:
            lines.append(f"       ✘ {scene['error']}")
        if scene.get("skipped"):
            lines.append(f"       skipped: {scene['skipped']}")
    if summary.get("pool_attachments"):
        lines += ["", "egress attachment: " + attachments_line(summary)]
    lines += ["", f"{'provider':<10}{'delivered':>10}{'bounced':>9}{'deferred':>10}"
              f"{'complaints':>12}{'DKIM':>9}{'SPF':>9}{'DMARC':>9}"]
    for name, p in summary["providers"].items():
        lines.append(f"{name:<10}{p['delivered']:>10}{p['bounced']:>9}{p['deferred']:>10}"
                     f"{p['complaints']:>12}{_pct(p['dkim_pass_rate']):>9}"
                     f"{_pct(p['spf_pass_rate']):>9}{_pct(p['dmarc_pass_rate']):>9}")
    lines += ["", "per IP and quota day (received / quota):"]
    by_ip: dict[str, list[str]] = {}
    for row in summary["per_ip_day"]:
        quota = "-" if row["quota"] is None else str(row["quota"])
        by_ip.setdefault(row["ip"], []).append(f"{row['sent']}/{quota}")
    for ip, cells in by_ip.items():
        lines.append(f"  {ip:<12} " + "  ".join(cells))
    lines += ["",
              f"accepted {summary['accepted']}, delivered {summary['delivered']}, bounced "
              f"{summary['bounced']}, deferred answers {summary['deferred']}, "
              f"LOST {summary['lost']}",
              f"DKIM {_pct(summary['dkim_pass_rate'])}, SPF {_pct(summary['spf_pass_rate'])}, "
              f"DMARC {_pct(summary['dmarc_pass_rate'])} (as verified by the receivers)",
              f"over TLS {_pct(summary.get('tls_rate'))}, deferred for MTA-STS "
              f"{summary.get('mta_sts_deferred', '-')}, TLS-RPT reports "
              f"{summary.get('tlsrpt_reports', 0)}",
              f"quota violations {summary['quota_violations']}, failover "
              f"{_secs(summary['failover_s'])}, DKIM rotation {_secs(summary['rotation_s'])}",
              f"total {_secs(summary['total_s'])} on "
              f"{summary.get('control_plane') or 'the sandbox'}: "
              + ("all scenes passed" if summary["ok"] else "SOME SCENES FAILED")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- events (issue 20)


class EventKey(NamedTuple):
    """What an event is matched on between the receivers' records and the webhook's."""

    type: str
    message: str | None
    """The spool's message id the events carry; None where the records cannot tell it."""
    recipient: str | None


Pair = tuple[str | None, str | None]
"""(message id, recipient) of an event the records imply."""


def event_key(event: Mapping[str, Any], *, with_message: bool = True) -> EventKey:
    """The key of a received event (the event schema); `with_message=False` for comparing with
    records that know the recipient but not the spool's message id."""
    message, recipient = event.get("message_id"), event.get("recipient")
    return EventKey(str(event.get("type")),
                    str(message) if with_message and message is not None else None,
                    recipient.lower() if isinstance(recipient, str) else None)


def unique_events(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each event once, first arrival kept: webhooks deliver at least once, so a batch retried
    after a lost answer brings the same event ids again."""
    seen: set[str] = set()
    out: list[Mapping[str, Any]] = []
    for event in events:
        event_id = event.get("id")
        if isinstance(event_id, str):
            if event_id in seen:
                continue
            seen.add(event_id)
        out.append(event)
    return out


def webhook_events_by_type(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(str(e.get("type")) for e in unique_events(events)).items()))


def implied_event_keys(*, delivered: Iterable[Pair] = (), bounced: Iterable[Pair] = (),
                       complained: Iterable[Pair] = (), opened: Iterable[Pair] = (),
                       clicked: Iterable[Pair] = ()) -> list[EventKey]:
    """The events the receivers' records imply: a copy accepted by a provider (delivered), a
    recipient refused for good (bounced), an ARF report (complained), a simulated open or
    click that got its answer (engagement.Engagement.implied_events)."""
    groups = {"delivered": delivered, "bounced": bounced, "complained": complained,
              "opened": opened, "clicked": clicked}
    return [EventKey(kind, message, recipient.lower() if recipient else None)
            for kind, pairs in groups.items() for message, recipient in pairs]


def _key_order(key: EventKey) -> tuple[str, str, str]:
    return key.type, key.message or "", key.recipient or ""


def webhook_missing(implied: Iterable[EventKey], received: Iterable[EventKey]) -> list[EventKey]:
    """Implied events the webhook never got, counted as multisets: two copies delivered to one
    recipient imply two events, and one received event does not account for both. Extra
    received events (a reader who opened twice) never hide a missing one of another key."""
    missing = Counter(implied) - Counter(received)
    return sorted(missing.elements(), key=_key_order)


def events_summary(events: Sequence[Mapping[str, Any]], implied: Iterable[EventKey],
                   simulated: Mapping[str, int], *, with_message: bool = True,
                   list_limit: int = 20) -> JSON:
    """The summary.json fields of issue 20. `events`: what the webhook receiver got (duplicates
    allowed); `simulated`: engagement.total(...). Recorded opens and clicks are the unique
    received events, human (`machine` not true) and machine apart."""
    unique = unique_events(events)
    missing = webhook_missing(implied, [event_key(e, with_message=with_message) for e in unique])

    def recorded(kind: str, machine: bool) -> int:
        return sum(e.get("type") == kind and (e.get("machine") is True) == machine
                   for e in unique)

    return {
        "webhook_events": webhook_events_by_type(unique),
        "webhook_missing": len(missing),
        "webhook_missing_list": [k._asdict() for k in missing[:list_limit]],
        "opens_recorded": recorded("opened", False),
        "opens_simulated": simulated.get("opens", 0),
        "clicks_recorded": recorded("clicked", False),
        "clicks_simulated": simulated.get("clicks", 0),
        "machine_opens": recorded("opened", True),
        "machine_opens_simulated": simulated.get("machine_opens", 0),
        "engagement_failed": simulated.get("failed", 0),
    }


# --------------------------------------------------------------------------- KPIs (issue 20)

KPI_COUNTS = ("sent", "delivered", "hard_bounced", "soft_bounced", "complained", "unsubscribed",
              "opened_human", "opened_machine", "clicked_human", "clicked_machine")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def merge_kpi_figures(figures: Sequence[Mapping[str, Any]]) -> JSON:
    """One breakout's figures over several pods: counts add up, rates are recomputed from the
    sums as the pods define them (docs/kpis.md), time to deliver is the slowest pod's
    (percentiles of parts do not give the percentile of the whole)."""
    out: JSON = {k: sum(int(f.get(k) or 0) for f in figures) for k in KPI_COUNTS}
    delivered = out["delivered"]
    final = delivered + out["hard_bounced"] + out["soft_bounced"]
    out.update(
        delivery_rate=_ratio(delivered, out["sent"]),
        hard_bounce_rate=_ratio(out["hard_bounced"], final),
        soft_bounce_rate=_ratio(out["soft_bounced"], final),
        complaint_rate=_ratio(out["complained"], delivered),
        unsubscribe_rate=_ratio(out["unsubscribed"], delivered),
        open_rate=_ratio(out["opened_human"], delivered),
        click_rate=_ratio(out["clicked_human"], delivered),
    )
    for quantile in ("deliver_p50_s", "deliver_p95_s"):
        values = [float(f[quantile]) for f in figures if f.get(quantile) is not None]
        out[quantile] = max(values) if values else None
    return out


def campaign_kpis(pod_kpis: Sequence[Mapping[str, Any]], *, tag: str = "campaign",
                  window: str = "24h") -> dict[str, JSON]:
    """Per value of `tag`, the figures of every pod's /v1/stats "kpis" over `window`, merged."""
    gathered: dict[str, list[Mapping[str, Any]]] = {}
    for kpis in pod_kpis:
        by = ((kpis.get("windows") or {}).get(window) or {}).get("by") or {}
        for value, figures in (by.get(f"tag:{tag}") or {}).items():
            gathered.setdefault(value, []).append(figures)
    return {value: merge_kpi_figures(group) for value, group in sorted(gathered.items())}


def render_kpi_table(per_value: Mapping[str, Mapping[str, Any]], *,
                     tag: str = "campaign") -> str:
    """The Markdown table of `campaign_kpis` (`_other`: values past the pods' cap)."""
    if not per_value:
        return f"No figures per {tag} tag were reported.\n"
    lines = [f"| {tag} | sent | delivered | hard / soft bounces | complaints | unsubscribes | "
             "opens (human / machine) | open rate | clicks | click rate | "
             "time to deliver p50 / p95 |", "|---" * 11 + "|"]
    for value, f in per_value.items():
        name = "(other)" if value == "_other" else html.escape(value).replace("|", "\\|")
        lines.append(
            f"| {name} | {f['sent']} | {f['delivered']} ({_pct(f['delivery_rate'])}) | "
            f"{f['hard_bounced']} / {f['soft_bounced']} ({_pct(f['hard_bounce_rate'])} / "
            f"{_pct(f['soft_bounce_rate'])}) | "
            f"{f['complained']} ({_pct(f['complaint_rate'])}) | "
            f"{f['unsubscribed']} ({_pct(f['unsubscribe_rate'])}) | "
            f"{f['opened_human']} / {f['opened_machine']} | {_pct(f['open_rate'])} | "
            f"{f['clicked_human']} | {_pct(f['click_rate'])} | "
            f"{_secs(f['deliver_p50_s'])} / {_secs(f['deliver_p95_s'])} |")
    return "\n".join(lines) + "\n"


def write_report(directory: Path, summary: JSON) -> list[Path]:
    """summary.json, report.md and warmup.svg under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "summary.json": json.dumps(summary, indent=2, default=str) + "\n",
        "report.md": render_markdown(summary),
        "warmup.svg": render_warmup_svg(summary["per_ip_day"]),
    }
    paths = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
