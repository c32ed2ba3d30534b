"""Benchmark of the sandbox API emulator over HTTP: creates/s and patches/s for 1,000
objects, and watch event latency (write sent -> event received). Last line: one JSON object."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import aiohttp
from mailfleet_sandbox.kube import ApiServer

N = 1000
CM = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def main() -> dict[str, float]:
    async with ApiServer() as api, aiohttp.ClientSession(api.url) as session:
        sent: dict[str, float] = {}
        latencies: list[float] = []
        async with session.get(CM) as resp:
            rv = (await resp.json())["metadata"]["resourceVersion"]
        ready = asyncio.Event()

        async def watcher() -> None:
            async with session.get(f"{CM}?watch=true&resourceVersion={rv}") as resp:
                ready.set()
                async for line in resp.content:
                    ev = json.loads(line)
                    key = f"{ev['object']['metadata']['name']}/{ev['type']}"
                    if key in sent:
                        latencies.append(time.perf_counter() - sent[key])
                    if len(latencies) >= 2 * N:
                        return

        watch_task = asyncio.create_task(watcher())
        await ready.wait()
        sem = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with sem:
                name = f"bench-{i}"
                sent[f"{name}/ADDED"] = time.perf_counter()
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                        "data": {"i": str(i)}}
                async with session.post(CM, json=body) as resp:
                    assert resp.status == 201

        async def patch(i: int) -> None:
            async with sem:
                name = f"bench-{i}"
                sent[f"{name}/MODIFIED"] = time.perf_counter()
                async with session.patch(f"{CM}/{name}", data=json.dumps(
                        {"data": {"p": "1"}}), headers=MERGE) as resp:
                    assert resp.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(N)))
        t1 = time.perf_counter()
        await asyncio.gather(*(patch(i) for i in range(N)))
        t2 = time.perf_counter()
        await asyncio.wait_for(watch_task, 30)
    latencies.sort()
    return {
        "objects": N,
        "creates_per_s": round(N / (t1 - t0), 1),
        "patches_per_s": round(N / (t2 - t1), 1),
        "watch_latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "watch_latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    print(f"creates/s {result['creates_per_s']}, patches/s {result['patches_per_s']}, "
          f"watch latency p50 {result['watch_latency_ms_p50']} ms "
          f"p99 {result['watch_latency_ms_p99']} ms")
    print(json.dumps(result))
