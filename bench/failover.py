"""Seconds from a sender pod going unready to its IP serving from another pod.

Runs the SendingPool reconciler (at its real period) against the sandbox API emulator, with
fake sender admin endpoints on 127.x addresses. Last line: {"failover_s": .., "settings": ..}.
Goals: under 10 s with default settings, under 2 s with --aggressive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_operator.reconcile import context, pod_admin
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sender import wire

ROOT = Path(__file__).resolve().parents[1]
CHANGED = asyncio.Event()  # set on every assignment a fake pod receives


async def changed(wait_at_most: float = 0.05) -> None:
    """Wake on the next assignment (or after `wait_at_most`: leases also end by time)."""
    CHANGED.clear()
    try:
        await asyncio.wait_for(CHANGED.wait(), wait_at_most)
    except TimeoutError:
        pass


PROFILES = {
    "default": dict(lease=10.0, renew=3.0, unhealthy="5s"),
    "aggressive": dict(lease=3.0, renew=0.5, unhealthy="1s"),
}


async def fake_pod(
    pod: str, host: str, port: int, holds: dict[str, dict[str, Any]]
) -> web.AppRunner:
    async def assignment(request: web.Request) -> web.Response:
        body = wire.Assignment.model_validate(await request.json())
        holds[pod] = {lease.address: lease.expires_at for lease in body.leases}
        CHANGED.set()
        answer = wire.AssignmentStatus(
            pod=pod,
            generation=body.generation,
            day=0,
            leases=[
                wire.LeaseStatus(
                    address=lease.address,
                    helo_name=lease.helo_name,
                    expires_at=lease.expires_at,
                    valid=True,
                )
                for lease in body.leases
            ],
        )
        return web.json_response(answer.model_dump(mode="json", by_alias=True))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(wire.Stats(pod=pod).model_dump(mode="json", by_alias=True))

    async def drain(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/v1/assignment", assignment)
    app.router.add_get("/v1/stats", stats)
    app.router.add_post("/v1/drain", drain)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def measure(profile: str) -> float:
    params = PROFILES[profile]
    with socket.socket() as sock:
        sock.bind(("127.0.0.40", 0))
        port = sock.getsockname()[1]
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
            {
                "apiVersion": "mailfleet.io/v1alpha1",
                "kind": "SendingPool",
                "metadata": {"name": "bench", "namespace": "default"},
                "spec": {
                    "replicas": 1,
                    "standbyReplicas": 1,
                    "egress": {"ips": [{"address": "192.0.2.1", "heloName": "mta.example.com"}]},
                    "submission": {"http": {"port": port}},
                    "failover": {"unhealthyAfter": params["unhealthy"]},
                },
            }
        )
        holds: dict[str, dict[str, Any]] = {}
        runners = []
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
                runners.append(await fake_pod(f"bench-{ordinal}", host, port, holds))
                await api.set_pod_status("default", f"bench-{ordinal}", ready=True, pod_ip=host)

            def holder() -> str | None:
                now = time.time()
                return next(
                    (
                        p
                        for p, h in holds.items()
                        if "192.0.2.1" in h and h["192.0.2.1"].timestamp() > now
                    ),
                    None,
                )

            while holder() is None:
                await changed()
            first = holder()
            start = time.monotonic()
            await api.set_pod_status(
                "default", str(first), ready=False, pod_ip=f"127.0.0.{40 + int(str(first)[-1])}"
            )
            while holder() in (None, first):
                await changed()
            elapsed = time.monotonic() - start
            stop.set()
            await task
        for runner in runners:
            await runner.cleanup()
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
