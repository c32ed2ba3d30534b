"""SendingPools at scale against the sandbox API emulator: time until every pool has its
children and a status, the operator's peak RSS, and API requests per pool.

Each pool is reconciled as the kopf handler would (same `reconcile_pool`, pods and nodes from
the watch index, here an empty world: the emulator's pods stay Pending). The emulator runs in
this process too, so the RSS printed is an upper bound for the operator alone.
Last line: {"pools": N, "converge_s": .., "rss_mb": .., "requests_per_pool": ..}; --pools N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.reconcile import context, pod_admin
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sandbox.kube import ApiServer

ROOT = Path(__file__).resolve().parents[1]


class CountingClient(kube_client.Client):
    requests = 0

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        CountingClient.requests += 1
        return await super()._request(method, path, **kwargs)


async def run(pools: int, concurrency: int) -> dict[str, Any]:
    async with ApiServer(host="127.0.0.1", port=0, controllers=False) as api:
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            api.create(yaml.safe_load(path.read_text()))
        kubeconfig = api.write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig")
        for index in range(pools):
            api.create(
                {
                    "apiVersion": "mailfleet.io/v1alpha1",
                    "kind": "SendingPool",
                    "metadata": {"name": f"pool-{index}", "namespace": "default"},
                    "spec": {
                        "replicas": 2,
                        "standbyReplicas": 1,
                        "egress": {
                            "ips": [
                                {
                                    "address": f"10.{index // 250}.{index % 250}.{n}",
                                    "heloName": f"mta{n}.p{index}.example.com",
                                }
                                for n in (1, 2)
                            ]
                        },
                    },
                }
            )
        settings = settings_module.Settings(stats_interval=3600)
        connection = kube_config.load_connection(str(kubeconfig))
        async with CountingClient(connection) as client, pod_admin.PodAdmin() as admin:
            ctx = context.Context(client=client, settings=settings, clock=settings_module.Clock())
            bodies = api.list("mailfleet.io/v1alpha1", "SendingPool", "default")
            gate = asyncio.Semaphore(concurrency)
            CountingClient.requests = 0
            start = time.monotonic()

            async def one(body: dict[str, Any]) -> None:
                async with gate:
                    # Pods, nodes and IPWarmups come from kopf's indexes (empty here).
                    world = reconciler.World([], {}, warmups=[])
                    await reconciler.reconcile_pool(ctx, admin, body, world)

            await asyncio.gather(*(one(b) for b in bodies))
            # A second cycle for all: what steady state costs (should be ~no writes).
            converge = time.monotonic() - start
            first_cycle_requests = CountingClient.requests
            done = sum(
                1
                for b in api.list("mailfleet.io/v1alpha1", "SendingPool", "default")
                if b.get("status", {}).get("conditions")
            )
            statefulsets = len(api.list("apps/v1", "StatefulSet", "default"))
            CountingClient.requests = 0
            bodies = api.list("mailfleet.io/v1alpha1", "SendingPool", "default")
            await asyncio.gather(*(one(b) for b in bodies))
            steady = CountingClient.requests
    assert done == pools and statefulsets == pools, (done, statefulsets)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{pools} pools: children and status in {converge:.2f} s, "
        f"{first_cycle_requests / pools:.1f} requests per pool on creation, "
        f"{steady / pools:.2f} per pool per steady cycle, peak RSS {rss_mb:.0f} MB"
    )
    return {
        "pools": pools,
        "converge_s": round(converge, 3),
        "rss_mb": round(rss_mb, 1),
        "requests_per_pool": round(first_cycle_requests / pools, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.pools, args.concurrency))))


if __name__ == "__main__":
    main()
