"""The SendingPool controller against the API emulator, with fake sender admin endpoints.

Each pod's admin API is a tiny aiohttp server on its own 127.x address that keeps the leases it
was granted and checks, on every grant it sees, that no IP is validly held by two pods. Time
is a manual clock, so lease expiry and `unhealthyAfter` are exercised without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_operator.reconcile import context, pod_admin
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.fake_senders import FakeSenders, free_port
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import ManualClock, install_crds, pod_created, wait_for
from sandbox_fixtures.real_cluster import node_heartbeats

NS = "default"
IPS = ["192.0.2.10", "192.0.2.11"]


class Harness:
    def __init__(
        self,
        api: ApiServer,
        client: kube_client.Client,
        clock: ManualClock,
        pods: FakeSenders,
        settings: settings_module.Settings,
    ) -> None:
        self.api, self.client, self.clock, self.pods = api, client, clock, pods
        self.ctx = context.Context(client=client, settings=settings, clock=clock)
        self.admin = pod_admin.PodAdmin(timeout=1.0)
        # pod -> node. The emulator refuses to set spec.nodeName through a pod update (the
        # scheduler's binding is not emulated), so the harness binds pods in what it lists.
        self.node_of: dict[str, str] = {}
        self.warmups: list[dict[str, Any]] | None = None  # the pool's IPWarmups (indexed)

    async def cycle(self, name: str = "mail") -> dict[str, Any]:
        body = self.api.get("mailfleet.io/v1alpha1", "SendingPool", name, NS)
        pods = await self.client.list(
            resources.PODS, namespace=NS, label_selector=f"mailfleet.io/pool={name}"
        )
        for pod in pods:
            bound = self.node_of.get(pod["metadata"]["name"])
            if bound:
                pod["spec"]["nodeName"] = bound
        nodes = {n["metadata"]["name"]: n for n in await self.client.list(resources.NODES)}
        world = reconciler.World(pods, nodes, warmups=self.warmups)
        # The main cycle hands the lease loop its inputs; then one lease step, as the two
        # daemons would, then the main cycle again to write what the lease step decided.
        await reconciler.reconcile_pool(self.ctx, self.admin, body, world)
        await reconciler.renew_leases(self.ctx, self.admin, body, world)
        body = self.api.get("mailfleet.io/v1alpha1", "SendingPool", name, NS)
        await reconciler.reconcile_pool(self.ctx, self.admin, body, world)
        assert not self.pods.violations
        return self.api.get("mailfleet.io/v1alpha1", "SendingPool", name, NS)

    async def run_pods(self, count: int, name: str = "mail") -> None:
        """Act as kubelet: pods Running and Ready on node-a, each on its own 127.x address."""
        await self.api.settle()
        for ordinal in range(count):
            pod = f"{name}-{ordinal}"
            host = f"127.0.0.{20 + ordinal}"
            await pod_created(self.api, NS, pod)
            await self.pods.start(pod, host)
            await self.api.set_pod_status(NS, pod, ready=True, pod_ip=host)
            self.node_of[pod] = "node-a" if ordinal == 1 else "node-b"

    def ips(self, body: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
        return {e["address"]: (e["state"], e.get("pod")) for e in body["status"]["ips"]}

    def condition(self, body: dict[str, Any], type_: str) -> str:
        return next(c["status"] for c in body["status"]["conditions"] if c["type"] == type_)


def node(name: str, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


@pytest.fixture
async def harness(kube_api: ApiServer, kubeconfig: Path) -> AsyncIterator[Harness]:
    install_crds(kube_api)
    for name in ("node-a", "node-b"):
        kube_api.create(node(name, True))
        kube_api.patch(
            "v1", "Node", name, {"status": node(name, True)["status"]}, subresource="status"
        )
    clock = ManualClock()
    port = free_port("127.0.0.20")
    pods = FakeSenders(port, clock=clock.now)
    settings = settings_module.Settings(
        lease_duration=10,
        lease_renew_interval=3,
        lease_clock_skew=1,
        stats_interval=3600,
        sender_image="sender:test",
    )
    connection = kube_config.load_connection(str(kubeconfig))
    async with kube_client.Client(connection) as client, \
            node_heartbeats(kube_api, ["node-a", "node-b"]):
        h = Harness(kube_api, client, clock, pods, settings)
        try:
            yield h
        finally:
            await h.admin.close()
            await pods.stop()
            reconciler.MEMORY.clear()


def pool(port: int, **spec: Any) -> dict[str, Any]:
    wanted: dict[str, Any] = {
        "replicas": 2, "standbyReplicas": 1, "failover": {"unhealthyAfter": "5s"},
        "throttling": {"rate": "100/s"}, **spec,
    }
    return fake_senders.pool_body("mail", port=port, ips=IPS, namespace=NS, **wanted)


async def test_a_pool_gets_owned_children_and_its_ips_spread_over_active_pods(
    harness: Harness,
) -> None:
    created = harness.api.create(pool(harness.pods.port))
    body = await harness.cycle()
    uid = created["metadata"]["uid"]
    for api_version, kind, name in [
        ("apps/v1", "StatefulSet", "mail"),
        ("v1", "Service", "mail"),
        ("v1", "Service", "mail-pods"),
        ("v1", "ConfigMap", "mail-config"),
        ("policy/v1", "PodDisruptionBudget", "mail"),
        ("v1", "Secret", "mail-admin"),
        ("v1", "Secret", "mail-links"),  # link keys: apart from the admin token
        ("v1", "Secret", "mail-peers"),
    ]:
        child = harness.api.get(api_version, kind, name, NS)
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid, kind
    sts = harness.api.get("apps/v1", "StatefulSet", "mail", NS)
    assert sts["spec"]["replicas"] == 3  # 2 active + 1 standby
    config = yaml.safe_load(
        harness.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"]
    )
    assert config["throttles"]["rate"] == "100/s"  # no holder yet: one share
    assert set(harness.ips(body).values()) == {("Standby", None)}
    assert body["spec"] == created["spec"]  # the user's spec is never written

    await harness.run_pods(3)
    await harness.cycle()
    body = await harness.cycle()
    assert harness.ips(body) == {IPS[0]: ("Active", "mail-0"), IPS[1]: ("Active", "mail-1")}
    assert harness.pods.holders(IPS[0]) == ["mail-0"]
    assert harness.pods.holders(IPS[1]) == ["mail-1"]
    assert harness.condition(body, "Ready") == "True"
    config = yaml.safe_load(
        harness.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"]
    )
    assert config["throttles"]["rate"] == "50/s"  # 100/s over two active pods

    harness.api.delete("mailfleet.io/v1alpha1", "SendingPool", "mail", NS)
    await harness.api.settle()  # garbage collection by owner reference
    await wait_for(lambda: harness.api.list("apps/v1", "StatefulSet", NS) == [],
                   within=30, message="the StatefulSet deleted")
    await wait_for(lambda: not [c for c in harness.api.list("v1", "ConfigMap", NS)
                                if c["metadata"]["name"] == "mail-config"],
                   within=30, message="the ConfigMap deleted")


async def test_ips_move_on_unready_pod_node_failure_fencing_and_dnsbl(harness: Harness) -> None:
    async with DNSServer(host="127.0.0.1", port=0) as dns:
        harness.ctx = dataclass_replace_settings(
            harness.ctx, dns_nameservers=(f"{dns.host}:{dns.port}",)
        )
        harness.api.create(
            pool(
                harness.pods.port,
                healthChecks={"dnsbl": {"zones": ["bl.test"], "interval": "1s"}},
            )
        )
        await harness.cycle()
        await harness.run_pods(3)
        await harness.cycle()

        # mail-0 unready: kept during unhealthyAfter, then revoked and moved to the standby.
        await harness.api.set_pod_status(NS, "mail-0", ready=False, pod_ip="127.0.0.20")
        body = await harness.cycle()
        assert harness.ips(body)[IPS[0]] == ("Active", "mail-0")
        harness.clock.advance(6)
        body = await harness.cycle()  # revoke confirmed by the (reachable) pod
        assert harness.condition(body, "FailingOver") == "True"
        body = await harness.cycle()
        assert harness.ips(body)[IPS[0]] == ("Active", "mail-2")
        assert harness.pods.holders(IPS[0]) == ["mail-2"]
        assert harness.pods["mail-0"].drains
        assert harness.condition(body, "FailingOver") == "False"

        # mail-1's node goes NotReady and the pod is partitioned: the IP waits for expiry.
        await harness.api.set_pod_status(NS, "mail-0", ready=True, pod_ip="127.0.0.20")
        harness.pods["mail-1"].reachable = False
        harness.api.patch(
            "v1",
            "Node",
            "node-a",
            {"status": node("node-a", False)["status"]},
            subresource="status",
        )
        body = await harness.cycle()
        assert harness.ips(body)[IPS[1]] == ("Draining", "mail-1")
        for _ in range(4):  # renewals of the others go on; mail-1's lease runs out
            harness.clock.advance(3)
            body = await harness.cycle()
            assert harness.pods.violations == []
        assert harness.ips(body)[IPS[1]][0] == "Active"
        assert harness.ips(body)[IPS[1]][1] != "mail-1"

        # Fencing by hand takes an IP out; removing the annotation brings it back.
        harness.api.patch(
            "mailfleet.io/v1alpha1",
            "SendingPool",
            "mail",
            {"metadata": {"annotations": {"mailfleet.io/fenced-ips": IPS[0]}}},
            NS,
        )
        await harness.cycle()
        body = await harness.cycle()
        assert harness.ips(body)[IPS[0]] == ("Unassigned", None)
        assert harness.pods.holders(IPS[0]) == []
        harness.api.patch(
            "mailfleet.io/v1alpha1",
            "SendingPool",
            "mail",
            {"metadata": {"annotations": {"mailfleet.io/fenced-ips": None}}},
            NS,
        )
        body = await harness.cycle()
        assert harness.ips(body)[IPS[0]][0] == "Active"

        # A DNSBL listing: the IP gets no traffic until delisted.
        dns.list_on_dnsbl("bl.test", IPS[1])
        harness.clock.advance(2)
        await harness.cycle()
        body = await harness.cycle()
        assert harness.ips(body)[IPS[1]][0] == "Blocklisted"
        assert harness.pods.holders(IPS[1]) == []
        assert harness.condition(body, "Degraded") == "True"
        dns.delist_from_dnsbl("bl.test", IPS[1])
        harness.clock.advance(2)
        body = await harness.cycle()
        assert harness.ips(body)[IPS[1]][0] == "Active"


async def test_an_operator_restart_mid_failover_waits_for_the_lease_and_does_not_flap(
    harness: Harness,
) -> None:
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    await harness.cycle()
    harness.pods["mail-0"].reachable = False  # partitioned: never confirms the release
    await harness.api.set_pod_status(NS, "mail-0", ready=False, pod_ip="127.0.0.20")
    harness.clock.advance(6)
    body = await harness.cycle()
    assert harness.ips(body)[IPS[0]] == ("Draining", "mail-0")
    reconciler.MEMORY.clear()  # the operator restarts: only the API remembers
    seen = []
    for _ in range(9):  # a full lease (10 s + 1 s skew) from the restart, then it moves
        harness.clock.advance(2)
        body = await harness.cycle()
        seen.append(harness.ips(body)[IPS[0]])
    assert seen[-1] == ("Active", "mail-2")
    moved = seen.index(("Active", "mail-2"))
    assert all(state == ("Draining", "mail-0") for state in seen[:moved])
    assert all(state == ("Active", "mail-2") for state in seen[moved:])  # no flapping back


async def test_a_missing_domainauth_makes_the_pool_not_ready_and_names_it(
    harness: Harness,
) -> None:
    harness.api.create(pool(harness.pods.port, domains=["example-com"]))
    body = await harness.cycle()
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DomainAuthNotFound")
    assert "example-com" in ready["message"]
    config = yaml.safe_load(
        harness.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"]
    )
    assert config.get("dkim", {}).get("domains", []) == []  # nothing to sign with: held


def dataclass_replace_settings(ctx: context.Context, **changes: Any) -> context.Context:
    return context.Context(
        client=ctx.client, settings=ctx.settings.model_copy(update=changes), clock=ctx.clock
    )


def serving(harness: Harness) -> list[str]:
    """Pods carrying the label the client Service selects on."""
    items = harness.api.list("v1", "Pod", NS, label_selector="mailfleet.io/serving=true")
    return sorted(p["metadata"]["name"] for p in items)


async def test_the_serving_label_follows_the_ips_so_the_client_service_skips_standbys(
    harness: Harness,
) -> None:
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    await harness.cycle()
    await harness.cycle()
    assert serving(harness) == ["mail-0", "mail-1"]  # mail-2 is the standby
    service = harness.api.get("v1", "Service", "mail", NS)
    assert service["spec"]["selector"]["mailfleet.io/serving"] == "true"

    await harness.api.set_pod_status(NS, "mail-0", ready=False, pod_ip="127.0.0.20")
    harness.clock.advance(6)
    await harness.cycle()  # mail-0 failed: its IP is revoked, it serves no more
    assert "mail-0" not in serving(harness)
    await harness.cycle()
    assert harness.pods.holders(IPS[0]) == ["mail-2"]
    assert serving(harness) == ["mail-1", "mail-2"]


async def test_a_drained_pod_healthy_again_gets_its_drain_cancelled_and_becomes_a_standby(
    harness: Harness,
) -> None:
    harness.ctx = dataclass_replace_settings(harness.ctx, stats_interval=0)
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    await harness.cycle()
    # mail-0 fails (unready past unhealthyAfter): revoked, drained with hand-off, IP moves.
    await harness.api.set_pod_status(NS, "mail-0", ready=False, pod_ip="127.0.0.20")
    harness.clock.advance(6)
    await harness.cycle()
    mail_0 = harness.pods["mail-0"]
    assert mail_0.drains == [True] and mail_0.draining
    mail_0.handoff = "running"  # its queue is still being handed to the others
    for _ in range(2):
        harness.clock.advance(1)
        await harness.cycle()
    assert harness.pods.holders(IPS[0]) == ["mail-2"]
    assert mail_0.undrains == 0  # a running hand-off is left to finish

    mail_0.handoff = "done"
    harness.clock.advance(1)
    await harness.cycle()
    assert mail_0.undrains == 1 and not mail_0.draining
    # Undrained, the sender reports ready again: a spare, no IP, not serving.
    await harness.api.set_pod_status(NS, "mail-0", ready=True, pod_ip="127.0.0.20")
    harness.clock.advance(1)
    body = await harness.cycle()
    assert body["status"]["standbyReplicas"] == 1
    assert mail_0.addresses == [] and "mail-0" not in serving(harness)
    assert mail_0.undrains == 1  # cancelled once, not on every cycle
    # And a useful one: the next failover moves an IP to it.
    await harness.api.set_pod_status(NS, "mail-1", ready=False, pod_ip="127.0.0.21")
    harness.clock.advance(6)
    await harness.cycle()
    await harness.cycle()
    assert harness.pods.holders(IPS[1]) == ["mail-0"]


async def test_a_scale_down_keeps_the_leaving_pods_drain(harness: Harness) -> None:
    harness.ctx = dataclass_replace_settings(harness.ctx, stats_interval=0)
    harness.api.create(pool(harness.pods.port, standbyReplicas=0))
    await harness.cycle()
    await harness.run_pods(2)
    await harness.cycle()
    harness.pods["mail-1"].queue = 5  # mail left: the pod may not go yet
    harness.api.patch("mailfleet.io/v1alpha1", "SendingPool", "mail", {"spec": {"replicas": 1}},
                      NS)
    for _ in range(4):
        harness.clock.advance(1)
        await harness.cycle()
    assert harness.pods["mail-1"].drains == [True]
    assert harness.pods["mail-1"].undrains == 0


# --- DKIM rotation and the pod template ---------------------------------------------------

PEM = {sel: base64.b64encode(f"-----KEY {sel}-----\n".encode()).decode()
       for sel in ("mf-1", "mf-2")}


def key_secret(selector: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"example-com-dkim-{selector}", "namespace": NS},
        "data": {"private.pem": PEM[selector], "public.txt": ""},
    }


def set_key_states(harness: Harness, states: dict[str, str]) -> None:
    """What the DomainAuth controller writes at each step of a rotation (newest first)."""
    keys = [
        {"selector": s, "algorithm": "rsa-2048", "state": st,
         "secretName": f"example-com-dkim-{s}"}
        for s, st in sorted(states.items(), reverse=True)
    ]
    harness.api.patch(
        "mailfleet.io/v1alpha1", "DomainAuth", "example-com",
        {"status": {"dkim": {"keys": keys}, "conditions": [
            {"type": "Ready", "status": "True", "reason": "KeyActive", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}]}},
        NS, subresource="status",
    )


def rendered_keys(harness: Harness) -> list[tuple[str, str]]:
    config = yaml.safe_load(
        harness.api.get("v1", "ConfigMap", "mail-config", NS)["data"]["sender.yaml"]
    )
    return [(k["selector"], k["keyFile"]) for d in config["dkim"]["domains"] for k in d["keys"]]


async def test_a_dkim_rotation_rewrites_the_pool_secret_and_never_the_pod_template(
    harness: Harness,
) -> None:
    harness.ctx = dataclass_replace_settings(harness.ctx, stats_interval=0)
    harness.api.create({
        "apiVersion": "mailfleet.io/v1alpha1", "kind": "DomainAuth",
        "metadata": {"name": "example-com", "namespace": NS},
        "spec": {"domain": "example.com"},
    })
    harness.api.create(key_secret("mf-1"))
    set_key_states(harness, {"mf-1": "Active"})
    harness.api.create(pool(harness.pods.port, domains=["example-com"]))
    await harness.cycle()
    await harness.run_pods(3)
    await harness.cycle()
    sts = harness.api.get("apps/v1", "StatefulSet", "mail", NS)
    template, generation = sts["spec"]["template"], sts["metadata"]["generation"]
    secret = harness.api.get("v1", "Secret", "mail-dkim", NS)
    assert secret["metadata"]["ownerReferences"][0]["name"] == "mail"
    assert secret["data"] == {"example-com-dkim-mf-1.pem": PEM["mf-1"]}
    assert rendered_keys(harness) == [("mf-1", "/etc/mailfleet/dkim/example-com-dkim-mf-1.pem")]

    # The new key is published: copied ahead of its switch, not signed with yet.
    harness.api.create(key_secret("mf-2"))
    set_key_states(harness, {"mf-1": "Active", "mf-2": "Published"})
    harness.clock.advance(1)
    await harness.cycle()
    assert set(harness.api.get("v1", "Secret", "mail-dkim", NS)["data"]) == {
        "example-com-dkim-mf-1.pem", "example-com-dkim-mf-2.pem"}
    assert [s for s, _ in rendered_keys(harness)] == ["mf-1"]

    # The switch: the new key first, the retiring one as the fallback.
    set_key_states(harness, {"mf-1": "Retiring", "mf-2": "Active"})
    harness.clock.advance(1)
    await harness.cycle()
    assert rendered_keys(harness) == [
        ("mf-2", "/etc/mailfleet/dkim/example-com-dkim-mf-2.pem"),
        ("mf-1", "/etc/mailfleet/dkim/example-com-dkim-mf-1.pem"),
    ]

    # Retired: its key leaves the pool's Secret (and the config).
    set_key_states(harness, {"mf-1": "Retired", "mf-2": "Active"})
    harness.clock.advance(1)
    body = await harness.cycle()
    secret = harness.api.get("v1", "Secret", "mail-dkim", NS)
    assert secret["data"] == {"example-com-dkim-mf-2.pem": PEM["mf-2"]}
    assert [s for s, _ in rendered_keys(harness)] == ["mf-2"]
    # The Secret is written before the ConfigMap that names its files.
    config_map = harness.api.get("v1", "ConfigMap", "mail-config", NS)
    assert int(secret["metadata"]["resourceVersion"]) < int(
        config_map["metadata"]["resourceVersion"])

    sts = harness.api.get("apps/v1", "StatefulSet", "mail", NS)
    assert sts["spec"]["template"] == template  # no rolling update for a rotation
    assert sts["metadata"]["generation"] == generation
    assert harness.condition(body, "Ready") == "True"
    # Private keys stay in Secrets: not in the pool's status, not in its events.
    leaked = json.dumps([body, harness.api.list("v1", "Event", NS)])
    assert not any(pem in leaked for pem in PEM.values())


async def test_a_frozen_pod_on_a_failed_node_does_not_hold_up_the_cycle(
    harness: Harness,
) -> None:
    """A partitioned pod answers nothing until its calls time out; the renewals of the other
    pods must not wait for that (with short leases they would lapse)."""
    harness.ctx = dataclass_replace_settings(
        harness.ctx, stats_interval=0, pod_admin_timeout=0.1
    )
    await harness.admin.close()
    harness.admin = pod_admin.PodAdmin(timeout=30)  # a call to a frozen pod lasts "forever"
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    await harness.cycle()
    frozen = harness.pods["mail-1"]  # on node-a
    frozen.stalled = True
    harness.api.patch(
        "v1", "Node", "node-a", {"status": node("node-a", False)["status"]}, subresource="status"
    )
    reads = frozen.stats_reads
    harness.clock.advance(3)
    body = await harness.cycle()
    assert harness.ips(body)[IPS[1]] == ("Draining", "mail-1")
    memory = next(iter(reconciler.MEMORY.values()))
    # The cycle returned with the revoke and the drain still waiting for the frozen pod...
    assert {"assignment/mail-1", "drain/mail-1"} <= set(memory.inflight)
    assert frozen.stats_reads == reads  # and did not even try to read its stats
    # ...while the healthy holder got its renewal.
    mail_0 = harness.pods["mail-0"]
    assert min(mail_0.expiries.values()) > harness.clock.now()
    renewed = dict(mail_0.expiries)
    harness.clock.advance(3)
    await harness.cycle()  # no second call piles up on the frozen pod, renewals go on
    assert mail_0.expiries != renewed
    frozen.stalled = False
    for _ in range(50):
        if not memory.inflight:
            break
        await asyncio.sleep(0.02)
    assert not memory.inflight


def warming(quota: int) -> dict[str, Any]:
    """An IPWarmup of the pool's IPs in its day 1, as the IPWarmup controller writes it."""
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "IPWarmup",
        "metadata": {"name": "warm", "namespace": NS},
        "spec": {"poolRef": {"name": "mail"}, "addresses": IPS,
                 "schedule": {"steps": [quota]}, "target": quota},
        "status": {"phase": "WarmingUp", "day": 1, "dailyQuota": quota,
                   "ips": [{"address": ip, "day": 1, "dailyQuota": quota} for ip in IPS]},
    }


def lease_of(harness: Harness, pod: str, address: str) -> Any:
    return next(lease for lease in harness.pods[pod].leases if lease.address == address)


async def test_a_warming_ips_new_holder_gets_quota_within_a_lease_after_its_holder_froze(
    harness: Harness,
) -> None:
    """Leases carry the warm-up quota in chunks, so a holder frozen mid-day blocks only its
    outstanding chunk: the IP's new holder may send at once, and the day's quota still holds
    with the frozen pod counted as having sent everything its lease allowed."""
    harness.ctx = dataclass_replace_settings(
        harness.ctx, stats_interval=0, pod_admin_timeout=0.1, warmup_quota_chunk=50
    )
    harness.warmups = [warming(1000)]
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    await harness.cycle()
    assert harness.pods.holders(IPS[1]) == ["mail-1"]  # on node-a
    first = lease_of(harness, "mail-1", IPS[1])
    assert (first.quota_remaining, first.sent_today_basis) == (50, 0)  # a chunk, not 1000

    # It sends; the next renewal refills its chunk from the count it reported.
    harness.pods.report("mail-1", IPS[1], sent=30)
    harness.clock.advance(4)  # a renewal is due
    await harness.cycle()
    renewed = lease_of(harness, "mail-1", IPS[1])
    assert (renewed.quota_remaining, renewed.sent_today_basis) == (50, 30)

    # Its node freezes mid-day: it may still send up to 80 until its lease runs out.
    frozen_at = harness.clock.now()
    frozen = harness.pods["mail-1"]
    frozen.stalled = True
    harness.api.patch(
        "v1", "Node", "node-a", {"status": node("node-a", False)["status"]}, subresource="status"
    )
    settings = harness.ctx.settings
    bound = settings.lease_duration + settings.lease_clock_skew + settings.lease_renew_interval
    new_holder = None
    while new_holder is None:
        harness.clock.advance(1)
        assert (harness.clock.now() - frozen_at).total_seconds() <= bound, "IP did not move"
        await harness.cycle()
        new_holder = next((p for p in harness.pods.holders(IPS[1]) if p != "mail-1"), None)
    granted = lease_of(harness, new_holder, IPS[1])
    assert granted.warmup
    assert granted.quota_remaining == 50  # min(chunk, 1000 - 80): not 0 until tomorrow
    assert 80 + granted.quota_remaining <= 1000
    frozen.stalled = False
    memory = next(iter(reconciler.MEMORY.values()))
    for _ in range(100):
        if not memory.inflight:
            break
        await asyncio.sleep(0.02)


async def test_a_force_deleted_holder_keeps_its_ip_until_its_lease_ran_out(
    harness: Harness,
) -> None:
    """`kubectl delete --force` of a pod on a partitioned node removes the object while the
    process may still send: the IP waits for the lease, and no second pod ever holds it."""
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    body = await harness.cycle()
    holder = harness.ips(body)[IPS[0]][1]
    assert holder is not None
    harness.pods[holder].reachable = False  # partitioned: hears nothing, keeps its lease
    harness.api.delete("v1", "Pod", holder, NS, grace_period=0)
    harness.node_of.pop(holder, None)
    seen = []
    for _ in range(10):  # the lease (10 s), the skew and the request timeout, then it moves
        harness.clock.advance(1.5)
        body = await harness.cycle()  # the harness asserts no IP is held by two pods
        seen.append(harness.ips(body)[IPS[0]])
        if harness.pods.holders(IPS[0]) == [holder]:
            assert seen[-1] == ("Draining", holder)  # not re-granted while it may send
    assert seen[-1][0] == "Active" and seen[-1][1] != holder
    assert ("Draining", holder) in seen


async def test_a_new_leader_waits_out_leases_it_did_not_grant_but_renews_a_healthy_holder(
    harness: Harness,
) -> None:
    """A new leader (here: a restarted operator) finds the IP Leases in the API. It renews a
    holder that is still healthy at once, and moves the IP of a lost holder only once the
    Lease it found has run out by its own clock."""
    harness.api.create(pool(harness.pods.port))
    await harness.cycle()
    await harness.run_pods(3)
    body = await harness.cycle()
    lost, kept = harness.ips(body)[IPS[0]][1], harness.ips(body)[IPS[1]][1]
    assert lost and kept and lost != kept
    leases = {
        item["metadata"]["annotations"]["mailfleet.io/egress-ip"]: item
        for item in harness.api.list("coordination.k8s.io/v1", "Lease", NS)
    }
    assert leases[IPS[0]]["spec"]["holderIdentity"].startswith(f"{lost}/")
    epoch = leases[IPS[0]]["spec"]["leaseTransitions"]
    harness.pods[lost].reachable = False
    await harness.api.set_pod_status(NS, lost, ready=False, pod_ip=harness.pods[lost].host)
    reconciler.MEMORY.clear()  # a new leader: knows nothing but the API
    renewed = dict(harness.pods[kept].expiries)
    harness.clock.advance(6)  # the lost holder is past unhealthyAfter
    body = await harness.cycle()
    assert harness.pods[kept].expiries != renewed  # the healthy holder was renewed
    assert harness.ips(body)[IPS[0]] == ("Draining", lost)
    states = []
    for _ in range(12):
        harness.clock.advance(1.5)
        body = await harness.cycle()
        states.append(harness.ips(body)[IPS[0]])
    assert states[-1][0] == "Active" and states[-1][1] not in (lost, None)
    waited = states.index(states[-1])
    assert all(state == ("Draining", lost) for state in states[:waited])
    # Waited the Lease it found (TTL + request timeout) plus the skew, by its own clock.
    found = leases[IPS[0]]["spec"]["leaseDurationSeconds"] + harness.ctx.settings.lease_clock_skew
    assert (waited + 1) * 1.5 >= found
    moved = next(
        item for item in harness.api.list("coordination.k8s.io/v1", "Lease", NS)
        if item["metadata"]["annotations"]["mailfleet.io/egress-ip"] == IPS[0]
    )
    assert moved["spec"]["holderIdentity"].startswith(f"{states[-1][1]}/")
    assert moved["spec"]["leaseTransitions"] == epoch + 1  # the fencing epoch grew
