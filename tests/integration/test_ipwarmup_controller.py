"""The IPWarmup controller against the API emulator, with fake sender stats and a manual clock.

The operator runs with the sandbox time scale (a warm-up day of 100 s, counted from the
epoch like the senders' quota days) and a clock the test moves, so days pass without
sleeping. Each fake pod serves `/v1/stats` from counts the test sets for the current sender
day (counts of a past day vanish, as in a real sender) and records the leases the
SendingPool controller grants it, so the warm-up's quotas are checked where they matter:
in the pods' leases.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mailfleet_operator import metrics
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_operator.reconcile import context, pod_admin, pool_policy, warmup_figures
from mailfleet_operator.reconcile import ipwarmup as reconciler
from mailfleet_operator.reconcile import sendingpool as pool_reconciler
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.fake_senders import FakeSenders, free_port
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sender import config as sender_config
from mailfleet_sender import units, wire
from sandbox_fixtures.operator import (
    ManualClock,
    OperatorRunner,
    condition,
    install_crds,
    operator_settings,
    pod_created,
    wait_for,
)

NS = "default"
API = "mailfleet.io/v1alpha1"
IP = "192.0.2.50"
DAY = 100.0  # seconds per warm-up day (the time scale)


def day_start_after_now() -> datetime.datetime:
    """Near the real time (the emulator stamps pods with it), at the start of a day."""
    real = datetime.datetime.now(datetime.UTC).timestamp()
    return datetime.datetime.fromtimestamp((math.floor(real / DAY) + 1) * DAY + 1, datetime.UTC)


class Harness:
    def __init__(self, api: ApiServer, client: kube_client.Client, port: int) -> None:
        self.api, self.client, self.port = api, client, port
        self.clock = ManualClock(day_start_after_now())
        self.senders = FakeSenders(port, clock=self.clock.now, day_seconds=DAY)
        settings = settings_module.Settings(
            warmup_day_seconds=DAY, stats_interval=1, lease_duration=30, sender_image="s:t",
            warmup_quota_chunk=10**9,  # no chunking here: a lease carries the whole remainder
        )
        self.ctx = context.Context(client=client, settings=settings, clock=self.clock)
        self.admin = pod_admin.PodAdmin(timeout=1.0)

    # --- objects -------------------------------------------------------------------------
    def create_pool(self, name: str = "mail", ips: tuple[str, ...] = (IP,)) -> None:
        self.api.create(fake_senders.pool_body(name, port=self.port, ips=ips, namespace=NS))

    def create_warmup(self, name: str = "new-ip", **spec: Any) -> None:
        body = {
            "poolRef": {"name": "mail"},
            "addresses": [IP],
            "schedule": {"linear": {"start": 100, "increment": 100}},
            "target": 300,
            **spec,
        }
        self.api.create(
            {"apiVersion": API, "kind": "IPWarmup", "metadata": {"name": name}, "spec": body}, NS
        )

    def edit(self, spec: dict[str, Any], name: str = "new-ip") -> None:
        self.api.patch(API, "IPWarmup", name, {"spec": spec}, NS)

    def warmup(self, name: str = "new-ip") -> dict[str, Any]:
        return self.api.get(API, "IPWarmup", name, NS)

    # --- cycles ----------------------------------------------------------------------------
    async def cycle(
        self, name: str = "new-ip", pods: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        await reconciler.reconcile_warmup(self.ctx, self.admin, self.warmup(name), pods=pods)
        return self.warmup(name)

    async def pool_cycle(self) -> None:
        body = self.api.get(API, "SendingPool", "mail", NS)
        pods = await self.client.list(
            resources.PODS, namespace=NS, label_selector="mailfleet.io/pool=mail"
        )
        world = pool_reconciler.World(pods=pods, nodes={})
        # Main cycle, then a step of the pool's lease loop (its own daemon in the operator).
        await pool_reconciler.reconcile_pool(self.ctx, self.admin, body, world)
        await pool_reconciler.renew_leases(self.ctx, self.admin, body, world)

    async def run_pool(self) -> None:
        """The pool's StatefulSet pod, ready on 127.0.0.60, holding the IP."""
        self.create_pool()
        await self.pool_cycle()
        await self.api.settle()
        await pod_created(self.api, NS, "mail-0")
        await self.senders.start("mail-0", "127.0.0.60")
        await self.api.set_pod_status(NS, "mail-0", ready=True, pod_ip="127.0.0.60")
        await self.pool_cycle()

    async def end_day(self, name: str = "new-ip", **kwargs: Any) -> dict[str, Any]:
        """Move the clock to the end of the running day and let the controller judge it."""
        self.clock.to(parse(self.warmup(name)["status"]["nextAdvanceAt"]))
        return await self.cycle(name, **kwargs)

    def lease(self) -> wire.Lease:
        (lease,) = self.senders["mail-0"].leases
        return lease

    def events(self) -> list[tuple[str, str]]:
        items = sorted(
            self.api.list("v1", "Event", NS), key=lambda e: int(e["metadata"]["resourceVersion"])
        )
        return [
            (e["reason"], e["message"]) for e in items if e["involvedObject"]["kind"] == "IPWarmup"
        ]


def warmups_gauge(phase: str) -> float | None:
    """`mailfleet_operator_warmups{namespace="default", phase}` as Prometheus would scrape it."""
    return metrics.REGISTRY.get_sample_value(
        "mailfleet_operator_warmups", {"namespace": NS, "phase": phase}
    )


def parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def cond(body: dict[str, Any], type_: str) -> tuple[str, str]:
    found = next(c for c in body["status"]["conditions"] if c["type"] == type_)
    return found["status"], found["reason"]


def decisions(body: dict[str, Any]) -> list[tuple[int, str, str | None]]:
    return [(r["day"], r["decision"], r.get("reason")) for r in body["status"]["history"]]


@pytest.fixture
async def harness(kube_api: ApiServer, kubeconfig: Path) -> AsyncIterator[Harness]:
    install_crds(kube_api)
    connection = kube_config.load_connection(str(kubeconfig))
    async with kube_client.Client(connection) as client:
        h = Harness(kube_api, client, free_port("127.0.0.60"))
        try:
            yield h
        finally:
            await h.admin.close()
            await h.senders.stop()
            warmup_figures.MEMORY.clear()
            pool_reconciler.MEMORY.clear()


async def test_senders_stats_drive_the_days_and_the_quota_reaches_the_lease(
    harness: Harness,
) -> None:
    await harness.run_pool()
    assert harness.lease().quota_remaining is None  # not under warm-up: unlimited
    harness.create_warmup(safety={"maxBounceRate": 0.05, "onViolation": "Hold"})

    body = await harness.cycle()
    status = body["status"]
    assert (status["phase"], status["day"], status["dailyQuota"]) == ("WarmingUp", 1, 100)
    assert (warmups_gauge("WarmingUp"), warmups_gauge("Held")) == (1, 0)
    assert parse(status["nextAdvanceAt"]) == parse(status["startedAt"]) + datetime.timedelta(
        seconds=DAY - 1
    )
    assert cond(body, "Ready") == ("False", "WarmingUp")
    assert cond(body, "Progressing")[0] == "True"
    await harness.pool_cycle()  # one pool reconcile later, the lease carries the quota
    assert (harness.lease().quota_remaining, harness.lease().warmup) == (100, True)

    harness.senders.report("mail-0", IP, sent=90)
    assert (await harness.cycle())["status"]["sentToday"] == 90
    body = await harness.end_day()
    assert (body["status"]["day"], body["status"]["dailyQuota"]) == (2, 200)
    assert decisions(body) == [(1, "Advance", None)]
    await harness.pool_cycle()
    assert harness.lease().quota_remaining == 200  # a new day: the full new quota

    # A bounce spike holds the day (same quota again), with the figures in the event.
    harness.senders.report("mail-0", IP, sent=200, bounced=30)
    await harness.cycle()
    body = await harness.end_day()
    assert (body["status"]["phase"], body["status"]["day"]) == ("Held", 2)
    assert cond(body, "Held") == ("True", "BounceRateExceeded")
    assert (warmups_gauge("WarmingUp"), warmups_gauge("Held")) == (0, 1)  # the alert reads it
    reason, message = harness.events()[-1]
    assert reason == "Hold"
    assert "bounce rate 15.00 % above the maximum 5.00 %" in message
    assert "sent 200/200" in message

    # Too little mail proves nothing: held again, not rolled back.
    harness.senders.report("mail-0", IP, sent=50)
    await harness.cycle()
    body = await harness.end_day()
    assert decisions(body)[-1] == (2, "Hold", "VolumeTooLow")

    harness.senders.report("mail-0", IP, sent=200)
    await harness.cycle()
    body = await harness.end_day()
    assert (body["status"]["phase"], body["status"]["day"]) == ("WarmingUp", 3)
    assert cond(body, "Held")[0] == "False"

    harness.senders.report("mail-0", IP, sent=300)
    await harness.cycle()
    body = await harness.end_day()
    assert body["status"]["phase"] == "Completed"
    assert "nextAdvanceAt" not in body["status"]
    assert cond(body, "Ready") == ("True", "Completed")
    assert cond(body, "Completed")[0] == "True"
    assert [d for _, d, _ in decisions(body)] == ["Advance", "Hold", "Hold", "Advance", "Complete"]
    await harness.pool_cycle()
    assert (harness.lease().quota_remaining, harness.lease().warmup) == (None, False)
    reasons = [r for r, _ in harness.events()]
    assert reasons == ["Started", "Advance", "Hold", "Hold", "Advance", "Complete", "Completed"]

    # The rendered config, as the senders read it: engaged tiers first under a warm-up
    # quota, and quota days as long as the operator's warm-up days.
    config = sender_config.SenderConfig.model_validate(
        yaml.safe_load(harness.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"])
    )
    assert config.warmup.tier_order[0] == "high"
    assert units.duration_seconds(config.clock.day_length) == DAY


async def test_rollback_gate_pause_spec_pause_and_restart_keep_the_day(harness: Harness) -> None:
    await harness.run_pool()
    harness.create_warmup(target=1000, safety={"onViolation": "Rollback", "rollbackDays": 1})
    await harness.cycle()
    for day in (1, 2):
        harness.senders.report("mail-0", IP, sent=100 * day)
        await harness.cycle()
        await harness.end_day()

    # Complaints on day 3 roll back to day 2.
    harness.senders.report("mail-0", IP, sent=300, delivered=300, complained=3)
    await harness.cycle()
    body = await harness.end_day()
    assert (body["status"]["phase"], body["status"]["day"]) == ("RolledBack", 2)
    assert decisions(body)[-1] == (3, "Rollback", "ComplaintRateExceeded")
    assert harness.events()[-1][0] == "Rollback"

    # With onViolation Pause, a breach stops warm-up traffic until a person edits the spec.
    harness.edit({"safety": {"onViolation": "Pause"}})
    harness.senders.report("mail-0", IP, sent=200, complained=2)
    await harness.cycle()
    body = await harness.end_day()
    status = body["status"]
    assert (status["phase"], status["day"], status["dailyQuota"]) == ("Paused", 2, 0)
    assert "nextAdvanceAt" not in status
    assert cond(body, "Held") == ("True", "ComplaintRateExceeded")
    await harness.pool_cycle()
    assert harness.lease().quota_remaining == 0
    harness.clock.to(harness.clock.now() + datetime.timedelta(seconds=3 * DAY))
    body = await harness.cycle()
    assert (body["status"]["day"], len(body["status"]["history"])) == (2, 4)

    harness.edit({"safety": {"onViolation": "Pause", "maxComplaintRate": 0.02}})
    body = await harness.cycle()
    assert (body["status"]["phase"], body["status"]["day"]) == ("WarmingUp", 2)
    assert body["status"]["dailyQuota"] == 200
    assert harness.events()[-1][0] == "Resumed"

    # spec.paused freezes the day count however long it lasts; resuming continues from it.
    harness.edit({"paused": True})
    body = await harness.cycle()
    assert (body["status"]["phase"], body["status"]["dailyQuota"]) == ("Paused", 0)
    assert cond(body, "Held") == ("True", "PausedBySpec")
    harness.clock.to(harness.clock.now() + datetime.timedelta(seconds=5 * DAY))
    body = await harness.cycle()
    assert (body["status"]["day"], len(body["status"]["history"])) == (2, 4)
    harness.edit({"paused": False})
    body = await harness.cycle()
    assert (body["status"]["phase"], body["status"]["day"]) == ("WarmingUp", 2)
    assert parse(body["status"]["nextAdvanceAt"]) > harness.clock.now()

    # An operator restart (memory gone) keeps the day and the history, and carries on.
    history = body["status"]["history"]
    warmup_figures.MEMORY.clear()
    harness.senders.report("mail-0", IP, sent=200)
    body = await harness.cycle()
    assert (body["status"]["day"], body["status"]["history"]) == (2, history)
    body = await harness.end_day()
    assert (body["status"]["day"], decisions(body)[-1]) == (3, (2, "Advance", None))


async def test_an_ip_that_changes_pods_mid_day_is_judged_on_everything_it_sent(
    harness: Harness,
) -> None:
    harness.create_pool()
    harness.create_warmup()
    await harness.senders.start("a", "127.0.0.61")
    await harness.senders.start("b", "127.0.0.62")
    pod_a = {"metadata": {"name": "a", "uid": "uid-a"}, "status": {"podIP": "127.0.0.61"}}
    pod_b = {"metadata": {"name": "b", "uid": "uid-b"}, "status": {"podIP": "127.0.0.62"}}
    await harness.cycle(pods=[pod_a])
    harness.senders.report("a", IP, sent=40)
    await harness.cycle(pods=[pod_a])
    # Failover: pod a is gone, b holds the IP and sends the rest of the day.
    harness.senders.report("b", IP, sent=30)
    body = await harness.cycle(pods=[pod_b])
    assert body["status"]["sentToday"] == 70
    body = await harness.end_day(pods=[pod_b])
    assert body["status"]["history"][0]["sent"] == 70
    assert decisions(body) == [(1, "Advance", None)]  # 70 of 100 passes minVolumeRatio 0.5


async def test_bad_references_and_two_warmups_on_one_ip_get_a_clear_condition(
    harness: Harness,
) -> None:
    harness.create_warmup(name="orphan", poolRef={"name": "nowhere"})
    body = await harness.cycle("orphan")
    assert (body["status"]["phase"], cond(body, "Ready")) == ("Pending", ("False", "PoolNotFound"))
    assert "SendingPool 'nowhere' does not exist" in body["status"]["conditions"][0]["message"]

    harness.create_pool()
    harness.create_warmup(name="stranger", addresses=["198.51.100.9"])
    body = await harness.cycle("stranger")
    assert cond(body, "Ready") == ("False", "AddressNotInPool")
    assert "198.51.100.9" in body["status"]["conditions"][0]["message"]

    harness.create_warmup(name="first")
    harness.create_warmup(name="second")
    first, second = await harness.cycle("first"), await harness.cycle("second")
    assert first["status"]["phase"] == "WarmingUp"
    assert (second["status"]["phase"], cond(second, "Ready")) == (
        "Pending",
        ("False", "ConflictingWarmup"),
    )
    assert "IPWarmup 'first'" in second["status"]["conditions"][0]["message"]
    # The pool follows only the running warm-up.
    quotas = await pool_policy.read_warmup_quotas(harness.ctx, NS, "mail")
    assert quotas == {IP: 100}
    assert "ConflictingWarmup" in [r for r, _ in harness.events()]

    # A bad edit mid-warm-up freezes the day but never lifts the IP's limit.
    harness.edit(
        {"schedule": {"linear": {"start": 100, "increment": 1}}, "target": 100000}, "first"
    )
    first = await harness.cycle("first")
    assert cond(first, "Ready") == ("False", "InvalidSpec")
    assert "more than the 365 allowed" in first["status"]["conditions"][0]["message"]
    assert (first["status"]["phase"], first["status"]["day"]) == ("WarmingUp", 1)
    assert await pool_policy.read_warmup_quotas(harness.ctx, NS, "mail") == {IP: 100}


async def test_the_running_operator_waits_for_the_pool_then_starts_the_warmup(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer
) -> None:
    install_crds(kube_api)
    runner = OperatorRunner(operator_settings(kubeconfig, dns_server, warmup_day_seconds=DAY))
    await runner.start()
    try:
        kube_api.create(
            {
                "apiVersion": API,
                "kind": "IPWarmup",
                "metadata": {"name": "w", "namespace": NS},
                "spec": {
                    "poolRef": {"name": "later"},
                    "schedule": {"steps": [50, 100]},
                    "target": 100,
                },
            }
        )

        def status() -> dict[str, Any]:
            return dict(kube_api.get(API, "IPWarmup", "w", NS).get("status") or {})

        await wait_for(
            lambda: (
                (condition({"status": status()}, "Ready") or {}).get("reason") == "PoolNotFound"
            ),
            message="Ready=False PoolNotFound",
        )
        kube_api.create(
            {
                "apiVersion": API,
                "kind": "SendingPool",
                "metadata": {"name": "later", "namespace": NS},
                "spec": {"replicas": 1, "egress": {"ips": [{"address": IP, "heloName": "m.x"}]}},
            }
        )
        await wait_for(lambda: status().get("phase") == "WarmingUp", message="the warm-up to start")
        assert (status()["day"], status()["dailyQuota"], status()["ips"][0]["address"]) == (
            1,
            50,
            IP,
        )
    finally:
        await runner.stop()


async def test_an_invalid_warmup_holds_its_ips_at_the_last_quota_never_unlimited(
    harness: Harness,
) -> None:
    """Fail closed: a warm-up that stops validating (stored before the API refused such specs,
    or its status corrupted) keeps its IPs at the quota it last published; one that never
    published a quota holds them at 0. Neither lifts the limit."""
    await harness.run_pool()
    harness.create_warmup()
    await harness.cycle()
    await harness.pool_cycle()
    assert harness.lease().quota_remaining == 100

    broken = harness.warmup()
    broken["spec"]["schedule"] = {"linear": {"start": 500, "increment": 100}}  # above target
    assert await pool_policy.read_warmup_quotas(harness.ctx, NS, "mail", [broken]) == {IP: 100}
    await reconciler.reconcile_warmup(harness.ctx, harness.admin, broken)
    body = harness.warmup()
    assert cond(body, "Ready") == ("False", "InvalidSpec")
    message = next(c["message"] for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert "above the target" in message
    assert f"held at their last quota until it is fixed ({IP} at 100/day)" in message
    assert (body["status"]["day"], body["status"]["dailyQuota"]) == (1, 100)

    corrupt = {**harness.warmup(), "status": {"phase": "WarmingUp", "day": "one"}}
    never = {**broken, "status": None}
    for stored in (corrupt, never):
        assert await pool_policy.read_warmup_quotas(harness.ctx, NS, "mail", [stored]) == {IP: 0}
    no_pool = {**broken, "spec": {**broken["spec"], "poolRef": None}}
    assert await pool_policy.read_warmup_quotas(harness.ctx, NS, "mail", [no_pool]) == {IP: 100}


async def test_a_spec_refused_before_the_start_holds_its_ips_at_zero(harness: Harness) -> None:
    await harness.run_pool()
    await harness.pool_cycle()
    assert harness.lease().quota_remaining is None
    # Valid for the schema, refused by the controller: 100 days of +1 cannot reach 100000.
    harness.create_warmup(schedule={"linear": {"start": 100, "increment": 1}}, target=100000)
    body = await harness.cycle()
    assert (body["status"]["phase"], cond(body, "Ready")) == ("Pending", ("False", "InvalidSpec"))
    await harness.pool_cycle()
    assert harness.lease().quota_remaining == 0


async def test_an_operator_restart_remembers_what_the_ip_sent_today(harness: Harness) -> None:
    """A holder lost mid-day after 900 of 1000 (its pod recreated without its counters), and
    the operator restarted meanwhile: the new grant is the 100 that remain, not 1000 again."""
    await harness.run_pool()
    harness.create_warmup(schedule={"steps": [1000, 2000]}, target=2000)
    await harness.cycle()
    await harness.pool_cycle()
    assert harness.lease().quota_remaining == 1000
    harness.senders.report("mail-0", IP, sent=900)
    body = await harness.cycle()
    (usage,) = body["status"]["ips"][0]["usage"]
    assert (usage["day"], usage["pod"], usage["sent"]) == (harness.senders.day(), "mail-0", 900)

    warmup_figures.MEMORY.clear()
    pool_reconciler.MEMORY.clear()
    harness.senders.report("mail-0", IP, sent=0)
    await harness.pool_cycle()
    assert (harness.lease().quota_remaining, harness.lease().sent_today_basis) == (100, 900)
    body = await harness.cycle()
    assert (body["status"]["sentToday"], body["status"]["ips"][0]["usage"][0]["sent"]) == (900, 900)


async def test_a_day_the_operator_missed_is_judged_on_the_pods_counters_never_blind(
    harness: Harness,
) -> None:
    """Down across midnight: the ended day's figures are read from the pods' per-day counters
    (`days` in /v1/stats) before it is judged; while a pod cannot tell them, the day waits
    (the quota stays) with a condition saying so."""
    await harness.run_pool()
    harness.create_warmup()
    body = await harness.cycle()
    # The day's mail goes out while the operator is down; it restarts after midnight.
    harness.senders.report("mail-0", IP, sent=90)
    warmup_figures.MEMORY.clear()
    harness.clock.to(parse(body["status"]["nextAdvanceAt"]) + datetime.timedelta(seconds=5))
    body = await harness.cycle()
    assert decisions(body) == [(1, "Advance", None)]
    assert body["status"]["history"][0]["sent"] == 90
    assert (body["status"]["day"], body["status"]["dailyQuota"]) == (2, 200)

    # The next day ends while the pod does not answer: nothing is judged until it does.
    harness.senders.report("mail-0", IP, sent=150)
    harness.senders["mail-0"].reachable = False
    ended_at = body["status"]["nextAdvanceAt"]
    harness.clock.to(parse(ended_at) + datetime.timedelta(seconds=1))
    body = await harness.cycle()
    assert (len(body["status"]["history"]), body["status"]["day"]) == (1, 2)
    assert body["status"]["dailyQuota"] == 200
    assert cond(body, "Held") == ("True", "AwaitingFigures")
    held = next(c["message"] for c in body["status"]["conditions"] if c["type"] == "Held")
    assert "waiting for mail-0" in held
    assert body["status"]["nextAdvanceAt"] == ended_at  # the judgement is still due
    assert harness.events()[-1][0] == "AwaitingFigures"
    await harness.cycle()
    assert [r for r, _ in harness.events()].count("AwaitingFigures") == 1  # once, not per cycle

    harness.senders["mail-0"].reachable = True
    body = await harness.cycle()
    assert decisions(body)[-1] == (2, "Advance", None)
    assert body["status"]["history"][-1]["sent"] == 150
    assert cond(body, "Held")[0] == "False"
    assert parse(body["status"]["nextAdvanceAt"]) > harness.clock.now()


async def test_a_second_warmup_in_another_timezone_on_the_pool_is_refused_and_held(
    harness: Harness,
) -> None:
    other = "192.0.2.51"
    harness.create_pool(ips=(IP, other))
    harness.create_warmup(name="paris", timezone="Europe/Paris")
    assert (await harness.cycle("paris"))["status"]["phase"] == "WarmingUp"
    harness.create_warmup(name="tokyo", addresses=[other], timezone="Asia/Tokyo")
    body = await harness.cycle("tokyo")
    assert cond(body, "Ready") == ("False", "TimezoneConflict")
    message = body["status"]["conditions"][0]["message"]
    assert "Asia/Tokyo differs from Europe/Paris of IPWarmup 'paris'" in message
    quotas = await pool_policy.read_warmup_quotas(harness.ctx, NS, "mail")
    assert quotas == {IP: 100, other: 0}

    # With real (calendar) days the pool's senders count their quota days in Paris.
    harness.ctx = context.Context(
        client=harness.client,
        settings=harness.ctx.settings.model_copy(update={"warmup_day_seconds": None}),
        clock=harness.clock,
    )
    await harness.pool_cycle()
    config = sender_config.SenderConfig.model_validate(
        yaml.safe_load(harness.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"])
    )
    assert (config.clock.timezone, units.duration_seconds(config.clock.day_length)) == (
        "Europe/Paris",
        86400,
    )
