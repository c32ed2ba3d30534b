"""Seconds from a sender pod going unready to its IP serving from another pod.

Runs the SendingPool reconciler (at its real period) against the sandbox API emulator, with
fake sender admin endpoints on 127.x addresses. Last line: {"failover_s": .., "settings": ..}.
Goals: under 10 s with default settings, under 2 s with --aggressive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import yaml
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_operator.reconcile import context, pod_admin
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.kube import ApiServer

ROOT = Path(__file__).resolve().parents[1]

PROFILES = {
    "default": dict(lease=10.0, renew=3.0, unhealthy="5s"),
    "aggressive": dict(lease=3.0, renew=0.5, unhealthy="1s"),
}


async def measure(profile: str) -> float:
    params = PROFILES[profile]
    port = fake_senders.free_port("127.0.0.40")
    async with ApiServer(host="127.0.0.1", port=0) as api:
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            api.create(yaml.safe_load(path.read_text()))
        kubeconfig = api.write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig")
        settings = settings_module.Settings(
            lease_duration=params["lease"],
            lease_renew_interval=params["renew"],
            stats_interval=3600,
        )
        api.create(
            fake_senders.pool_body(
                "bench", port=port, ips=["192.0.2.1"], standbyReplicas=1,
                failover={"unhealthyAfter": params["unhealthy"]},
            )
        )
        senders = fake_senders.FakeSenders(port)
        async with (
            kube_client.Client(kube_config.load_connection(str(kubeconfig))) as client,
            pod_admin.PodAdmin(timeout=1.0) as admin,
        ):
            ctx = context.Context(client=client, settings=settings, clock=settings_module.Clock())
            stop = asyncio.Event()

            async def loop() -> None:
                while not stop.is_set():
                    body = api.get("mailfleet.io/v1alpha1", "SendingPool", "bench", "default")
                    pods = await client.list(
                        resources.PODS,
                        namespace="default",
                        label_selector="mailfleet.io/pool=bench",
                    )
                    outcome = await reconciler.reconcile_pool(
                        ctx, admin, body, reconciler.World(pods, {}, warmups=[])
                    )
                    try:
                        await asyncio.wait_for(stop.wait(), outcome.requeue_after)
                    except TimeoutError:
                        pass

            task = asyncio.create_task(loop())
            await asyncio.sleep(0.2)
            await api.settle()
            for ordinal in range(2):
                host = f"127.0.0.{40 + ordinal}"
                await senders.start(f"bench-{ordinal}", host)
                await api.set_pod_status("default", f"bench-{ordinal}", ready=True, pod_ip=host)

            def holder() -> str | None:
                return next(iter(senders.holders("192.0.2.1")), None)

            while holder() is None:
                await senders.next_grant(within=0.05)
            first = str(holder())
            start = time.monotonic()
            await api.set_pod_status("default", first, ready=False, pod_ip=senders[first].host)
            while holder() in (None, first):
                await senders.next_grant(within=0.05)
            elapsed = time.monotonic() - start
            stop.set()
            await task
        await senders.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aggressive", action="store_true")
    args = parser.parse_args()
    profile = "aggressive" if args.aggressive else "default"
    seconds = asyncio.run(measure(profile))
    print(f"failover with {profile} settings {PROFILES[profile]}: {seconds:.2f} s")
    print(json.dumps({"failover_s": round(seconds, 3), "settings": profile}))


if __name__ == "__main__":
    main()
