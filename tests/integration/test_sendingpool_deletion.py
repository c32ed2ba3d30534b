"""Deleting a SendingPool never loses mail it accepted (issue 15, item 6).

Through the real kopf operator, with the fake senders of `test_sendingpool_operator` (their
queue is what the test sets): a deleted pool stays under the operator's finalizer while its
pods report mail queued; its pods stop intake (drain without hand-off) and keep their IPs
(leases renewed) so the mail can leave; it goes, with its spool volumes, once every queue is
empty. A queue that does not empty within `spec.deletion.drainTimeout` keeps the pool, with a
condition saying what is left, until a person sets `mailfleet.io/deletion:
abandon-queued-mail` (the spool volumes are then kept).

Before this, the pool and its StatefulSet went at once and the spool volumes with them
(`whenDeleted: Delete`): the first test failed at "the pool is still there".
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest
from integration.test_sendingpool_operator import (
    API,
    HOST_BASE,
    IPS,
    NS,
    Kubelet,
    events,
    get,
    pool_body,
    pool_status,
    pvcs,
    world,
)
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.fake_senders import FakeSender, free_port
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import condition, wait_for

LEASE_SECONDS = 4.0  # `world`'s lease_duration


@pytest.fixture
async def port() -> int:
    return free_port(f"127.0.0.{HOST_BASE}")


def pool(api: ApiServer) -> dict[str, Any] | None:
    return get(api, API, "SendingPool", "mail")


def deleting(api: ApiServer, reason: str) -> dict[str, Any] | None:
    body = pool(api)
    cond = condition(body, "Deleting") if body else None
    return cond if cond and cond["reason"] == reason else None


def lease_holders(api: ApiServer) -> dict[str, str | None]:
    leases = api.list("coordination.k8s.io/v1", "Lease", NS, label_selector="mailfleet.io/pool")
    return {
        (lease["metadata"].get("annotations") or {}).get("mailfleet.io/egress-ip", ""):
        (lease.get("spec") or {}).get("holderIdentity")
        for lease in leases
    }


async def running_pool(api: ApiServer, kubelet: Kubelet, port: int, **spec: Any) -> None:
    api.create(pool_body(port, **spec))
    await wait_for(lambda: pool_status(api).get("activeIPs") == 2, message="two active IPs")
    await wait_for(lambda: all(s.leases for s in kubelet.senders.values()),
                   message="both pods hold an IP")


def renewed_after(sender: FakeSender, moment: datetime.datetime) -> bool:
    """The pod's lease was renewed later than `moment` (its expiry moved past moment + TTL)."""
    return bool(sender.expiries) and all(
        expiry > moment + datetime.timedelta(seconds=LEASE_SECONDS)
        for expiry in sender.expiries.values()
    )


async def test_a_deleted_pool_delivers_its_queue_from_its_ips_before_it_goes(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port) as kubelet:
        await running_pool(kube_api, kubelet, port)
        busy, idle = kubelet.senders["mail-0"], kubelet.senders["mail-1"]
        busy.queue = 3  # accepted (250), not delivered yet: the receiver defers it
        kube_api.delete(API, "SendingPool", "mail", NS)
        deleted_at = datetime.datetime.now(datetime.UTC)

        cond = await wait_for(lambda: deleting(kube_api, "Draining"), message="Draining")
        assert "3 messages" in cond["message"] and "mail-0: 3" in cond["message"]
        # Intake stops on every pod; the queue stays where it is (every peer is leaving too).
        await wait_for(lambda: busy.drains and idle.drains, message="both pods drained")
        assert busy.drains[0] is False and idle.drains[0] is False
        # The IPs stay with their pods (mail still leaves from them): renewed past the TTL.
        await wait_for(lambda: renewed_after(busy, deleted_at), within=30,
                       message="the busy pod's lease renewed after the deletion")
        assert pool(kube_api) is not None
        sts = get(kube_api, "apps/v1", "StatefulSet", "mail")
        assert sts is not None
        # The spool outlives the StatefulSet: only the operator removes it, once empty.
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain", "whenScaled": "Retain"
        }
        assert {"spool-mail-0", "spool-mail-1"} <= set(pvcs(kube_api))
        ready = condition(pool(kube_api) or {}, "Ready")
        assert ready and ready["status"] == "False" and ready["reason"] == "Draining"

        busy.queue = 0  # delivered
        await wait_for(lambda: pool(kube_api) is None, message="the pool gone")
        await wait_for(lambda: get(kube_api, "apps/v1", "StatefulSet", "mail") is None,
                       message="its StatefulSet gone")
        # An empty spool is removed with it, and the pods gave their IPs back first.
        await wait_for(lambda: not [p for p in pvcs(kube_api) if p.startswith("spool-mail-")],
                       message="spool volumes deleted")
        assert lease_holders(kube_api) == {IPS[0]: None, IPS[1]: None}
        assert events(kube_api, "Drained")


async def test_a_queue_that_cannot_drain_in_time_keeps_the_pool_until_the_mail_is_abandoned(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port) as kubelet:
        await running_pool(kube_api, kubelet, port, deletion={"drainTimeout": "2s"})
        stuck = kubelet.senders["mail-1"]
        stuck.queue = 5  # the receiver keeps deferring it
        kube_api.delete(API, "SendingPool", "mail", NS)

        cond = await wait_for(lambda: deleting(kube_api, "DrainTimedOut"),
                              message="DrainTimedOut")
        assert cond["status"] == "True"
        assert "5 messages (mail-1: 5)" in cond["message"]
        assert "mailfleet.io/deletion=abandon-queued-mail" in cond["message"]
        assert await wait_for(lambda: events(kube_api, "DrainTimedOut"), message="event")
        # Past the bound it stays, and keeps draining and renewing, also after the operator
        # restarted (it remembers nothing: the drain resumes from the API and the pods).
        assert kubelet.operator is not None
        await kubelet.operator.stop()
        await kubelet.operator.start()
        now = datetime.datetime.now(datetime.UTC)
        await wait_for(lambda: renewed_after(stuck, now), within=30, message="renewed")
        assert pool(kube_api) is not None
        assert deleting(kube_api, "DrainTimedOut")

        kube_api.patch(API, "SendingPool", "mail", {
            "metadata": {"annotations": {"mailfleet.io/deletion": "abandon-queued-mail"}}
        }, NS)
        await wait_for(lambda: pool(kube_api) is None, message="the pool gone")
        abandoned = await wait_for(lambda: events(kube_api, "QueuedMailAbandoned"),
                                   message="event")
        assert "mail-1: 5" in abandoned[0]
        await wait_for(lambda: get(kube_api, "apps/v1", "StatefulSet", "mail") is None,
                       message="its StatefulSet gone")
        # The mail is abandoned by the pool, not destroyed: its volume is kept for a person.
        assert "spool-mail-1" in pvcs(kube_api)


class OtherKubelet(Kubelet):
    """The pods of a second pool, each on 127.0.0.(OTHER_BASE + N)."""

    async def _step(self) -> None:
        for pod in self.api.list("v1", "Pod", NS, label_selector=f"mailfleet.io/pool={self.pool}"):
            name = pod["metadata"]["name"]
            if (pod.get("status") or {}).get("podIP") or pod["metadata"].get("deletionTimestamp"):
                continue
            ordinal = int(name.rsplit("-", 1)[1])
            sender = await self.fleet.start(name, f"127.0.0.{OTHER_BASE + ordinal}")
            await self.api.set_pod_status(NS, name, ready=True, pod_ip=sender.host)


OTHER_BASE = HOST_BASE + 10


async def test_a_deleted_pool_hands_its_queue_to_the_pool_named_in_handoff_to(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port) as kubelet:
        other = OtherKubelet(kube_api, "other", port)
        other.start()
        try:
            kube_api.create(fake_senders.pool_body(
                "other", port=port, ips=["192.0.2.20"], namespace=NS,
                throttling={"rate": "100/s"},
            ))
            await wait_for(lambda: pool_status(kube_api, "other").get("activeIPs") == 1,
                           message="the other pool's IP active")
            await running_pool(kube_api, kubelet, port, deletion={"handoffTo": "other"})
            busy = kubelet.senders["mail-0"]
            busy.queue = 3
            kube_api.delete(API, "SendingPool", "mail", NS)

            cond = await wait_for(lambda: deleting(kube_api, "Draining"), message="Draining")
            assert cond["message"].startswith("handing the queues to pool other"), cond
            await wait_for(lambda: busy.drains, message="the busy pod asked to hand off")
            assert busy.drains[0] is True
            # That pool's submission port, with the key its pods accept: its generated one.
            generated = get(kube_api, "v1", "Secret", "other-submission")
            assert generated is not None
            assert busy.targets[0] == {
                "urls": [f"http://127.0.0.{OTHER_BASE}:8080"],
                "apiKey": base64.b64decode(generated["data"]["api-key"]).decode(),
            }
            assert pool(kube_api) is not None

            busy.queue = 0  # handed off
            await wait_for(lambda: pool(kube_api) is None, message="the pool gone")
            assert get(kube_api, API, "SendingPool", "other") is not None
        finally:
            await other.stop()


async def test_a_handoff_target_that_cannot_take_mail_leaves_the_pods_delivering(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port) as kubelet:
        await running_pool(kube_api, kubelet, port, deletion={"handoffTo": "nowhere"})
        busy = kubelet.senders["mail-0"]
        busy.queue = 2
        kube_api.delete(API, "SendingPool", "mail", NS)
        cond = await wait_for(lambda: deleting(kube_api, "Draining"), message="Draining")
        assert cond["message"].startswith(
            "cannot hand off to pool nowhere (no such pool in the namespace): delivering from "
            "this pool's IPs meanwhile"
        ), cond
        await wait_for(lambda: busy.drains, message="drained")
        assert busy.drains[0] is False and busy.targets[0] is None
        busy.queue = 0
        await wait_for(lambda: pool(kube_api) is None, message="the pool gone")
