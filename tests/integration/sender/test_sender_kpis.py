"""A sender's campaign KPIs as users read them: `/v1/stats` carries `kpis` (snake_case figures
per the event contract), `/metrics` the bounded KPI families, and a restart of the sender
carries on from what it had counted.

Events are fed where the event stream will feed them (`Service.kpis.observe`): the events of
a real delivery arrive once the event outbox is wired in (docs/kpis.md)."""

from __future__ import annotations

import datetime
import time
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from prometheus_client.parser import text_string_to_metric_families
from sandbox_fixtures.sender import ADMIN_TOKEN, SenderFactory, base_config


def _event(kind: str, message: str, campaign: str, **fields: Any) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    return {
        "schema": "mailfleet.io/event/v1", "id": f"{kind}-{message}", "type": kind,
        "time": now.replace("+00:00", "Z"), "message_id": message, "recipient": "a@gmail.test",
        "pool": "test-pool", "namespace": "default", "class": "default", "ip": "127.0.0.9",
        "provider": "gmail", "tags": {"campaign": campaign}, "reply": None, "bounce": None,
        "url": None, "machine": None, "delay_s": None, "attempt": None, **fields,
    }


async def test_stats_and_metrics_carry_the_kpis_and_a_restart_keeps_them(
    tmp_path: Any, dns_server: DNSServer, sender_factory: SenderFactory,
) -> None:
    cfg = base_config(tmp_path, dns=dns_server, destination_port=9)
    sender = await sender_factory(cfg)
    kpis = sender.service.kpis
    for i in range(4):
        kpis.observe(_event("accepted", f"m{i}", "spring"))
    for i in range(3):
        kpis.observe(_event("delivered", f"m{i}", "spring", delay_s=1.5))
    kpis.observe(_event("opened", "m0", "spring", machine=False))
    kpis.observe(_event("opened", "m0", "spring", machine=True))

    stats = await sender.client.stats()
    spring = stats["kpis"]["windows"]["1h"]["by"]["tag:campaign"]["spring"]
    assert (spring["sent"], spring["delivered"], spring["delivery_rate"]) == (4, 3, 0.75)
    assert (spring["opened_human"], spring["opened_machine"]) == (1, 1)
    assert spring["open_rate"] == round(1 / 3, 6)
    assert spring["hard_bounce_rate"] == 0.0 and spring["complaint_rate"] == 0.0
    assert 1.35 <= spring["deliver_p50_s"] <= 1.65
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert stats["kpis"]["days"][today]["total"]["sent"] == 4

    status, text = await sender.client.request("GET", "/metrics", admin=True, token=ADMIN_TOKEN)
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    labels = (("figure", "delivered"), ("pool", "test-pool"), ("tag", "campaign"),
              ("value", "spring"))
    assert samples[("mailfleet_sender_kpi_tag_total", labels)] == 3

    await sender.stop()
    restarted = await sender_factory(cfg)
    again = await restarted.client.stats()
    assert again["kpis"] == stats["kpis"]
