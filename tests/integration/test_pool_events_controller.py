"""A pool's events and KPIs through the SendingPool controller (API emulator and the real
kube-apiserver, fake sender admin endpoints): a webhook whose Secret is missing turns
EventsReady False and is left out of the config while mail keeps flowing, and comes back once
the Secret exists; the pods' KPI figures are summed into status.kpis."""

from __future__ import annotations

import base64
from typing import Any

import yaml
from integration.test_sendingpool_controller import (  # the controller's harness
    NS,
    Harness,
    dataclass_replace_settings,
    harness,
    pool,
)

__all__ = ["harness"]  # the fixture, used by name


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == type_)


def config(h: Harness) -> dict[str, Any]:
    text = h.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"]
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


WEBHOOK = {"name": "crm", "url": "https://crm.example.com/hooks",
           "signingKeySecretRef": {"name": "crm-hook"}}


async def test_a_webhook_without_its_secret_is_left_out_until_the_secret_exists(
    harness: Harness,
) -> None:
    harness.ctx = dataclass_replace_settings(harness.ctx, stats_interval=0)
    harness.api.create(pool(harness.pods.port, events={"webhooks": [WEBHOOK]}))
    await harness.cycle()
    await harness.run_pods(3)
    body = await harness.cycle()
    events = condition(body, "EventsReady")
    assert (events["status"], events["reason"]) == ("False", "SecretMissing")
    assert "crm-hook" in events["message"] and "webhook crm" in events["message"]
    assert condition(body, "Ready")["status"] == "True"  # mail keeps flowing
    assert "crm" not in str(config(harness).get("events", {}).get("webhooks", []))
    # The pods mount the webhook's directory anyway (optional), so the template is stable.
    sts = harness.api.get("apps/v1", "StatefulSet", "mail", NS)
    template = sts["spec"]["template"]["spec"]
    volume = next(v for v in template["volumes"] if v["name"] == "events-crm")
    assert volume["projected"]["sources"][0]["secret"]["optional"] is True
    mounts = {m["name"]: m["mountPath"] for m in template["containers"][0]["volumeMounts"]}
    assert mounts["events-crm"] == "/etc/mailfleet/events/crm"

    harness.api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "crm-hook", "namespace": NS}, "data": {"key": base64.b64encode(b"k" * 32)
                                                       .decode()}})
    harness.clock.advance(1)
    body = await harness.cycle()
    events = condition(body, "EventsReady")
    assert (events["status"], events["reason"]) == ("True", "WebhooksReady")
    after = harness.api.get("apps/v1", "StatefulSet", "mail", NS)
    assert after["spec"]["template"] == sts["spec"]["template"]  # no rollout for a Secret


async def test_the_pods_kpis_are_summed_into_the_status(harness: Harness) -> None:
    harness.ctx = dataclass_replace_settings(harness.ctx, stats_interval=0)
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    body = await harness.cycle()
    assert "kpis" not in body["status"]  # senders without KPIs: nothing made up

    def figures(sent: int, delivered: int, opened: int, p95: float) -> dict[str, Any]:
        total = {"sent": sent, "delivered": delivered, "hard_bounced": sent - delivered,
                 "complained": 0, "opened_human": opened, "clicked_human": 0,
                 "deliver_p95_s": p95}
        return {"windows": {"24h": {"total": total, "by": {}}}, "days": {}}

    harness.pods["mail-0"].kpis = figures(300, 297, 100, 2.5)
    harness.pods["mail-1"].kpis = figures(100, 100, 50, 9.0)
    harness.clock.advance(1)
    body = await harness.cycle()
    kpis = body["status"]["kpis"]
    assert (kpis["pods"], kpis["sent"], kpis["delivered"]) == (2, 400, 397)
    assert kpis["deliveryRate"] == round(397 / 400, 4)
    assert kpis["openRate"] == round(150 / 397, 4)
    assert kpis["deliverP95Seconds"] == 9.0
