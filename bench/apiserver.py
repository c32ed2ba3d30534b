"""API server benchmark: the sandbox's API emulator against the real control plane (etcd +
kube-apiserver + controller-manager + scheduler, built by `make kube`), to show how far the
emulator's speed and footprint are from what the operator meets in a cluster.

Same workload for both, over HTTP from this process: N ConfigMaps created, then each merge
patched (16 requests in flight), with a watch recording, per write, the time from the request
being sent to its watch event. Also start time (spawn to readyz) and RSS (VmRSS after the
workload). The emulator runs in its own process, as `mailfleet sandbox api`, so its RSS is its
own. Without the real binaries "kubernetes" is null. Last line: one JSON object.

    python bench/apiserver.py --objects 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import signal
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from mailfleet_sandbox import control_plane
from mailfleet_sandbox.kube import ApiServer

CM = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
IN_FLIGHT = 16


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


async def workload(url: str, n: int, context: ssl.SSLContext | None) -> dict[str, float]:
    """Create n ConfigMaps, then merge patch each, timing both phases and the watch events."""
    connector = aiohttp.TCPConnector(ssl=context if context is not None else True)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        sent: dict[str, float] = {}
        latencies: list[float] = []
        done = asyncio.Event()
        async with session.get(CM) as resp:
            resp.raise_for_status()
            rv = (await resp.json())["metadata"]["resourceVersion"]
        ready = asyncio.Event()

        async def watcher() -> None:
            async with session.get(CM, params={"watch": "true", "resourceVersion": rv}) as resp:
                resp.raise_for_status()
                ready.set()
                async for line in resp.content:
                    now = time.perf_counter()
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    key = f"{ev['object']['metadata'].get('name')}/{ev['type']}"
                    start = sent.pop(key, None)
                    if start is not None:
                        latencies.append(now - start)
                    if len(latencies) >= 2 * n:
                        done.set()
                        return

        watch_task = asyncio.create_task(watcher())
        await asyncio.wait_for(ready.wait(), 10)
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def create(i: int) -> None:
            name = f"bench-{i}"
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": {"i": str(i)}}
            async with sem:
                sent[f"{name}/ADDED"] = time.perf_counter()
                async with session.post(CM, json=body) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"create {name}: {resp.status} {await resp.text()}")

        async def patch(i: int) -> None:
            name = f"bench-{i}"
            async with sem:
                sent[f"{name}/MODIFIED"] = time.perf_counter()
                async with session.patch(f"{CM}/{name}", data=json.dumps({"data": {"p": "1"}}),
                                         headers=MERGE) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"patch {name}: {resp.status} {await resp.text()}")

        try:
            t0 = time.perf_counter()
            await asyncio.gather(*(create(i) for i in range(n)))
            t1 = time.perf_counter()
            await asyncio.gather(*(patch(i) for i in range(n)))
            t2 = time.perf_counter()
            await asyncio.wait_for(watch_task, 60)
        finally:
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch_task
    latencies.sort()
    return {
        "create_per_s": round(n / (t1 - t0), 1),
        "patch_per_s": round(n / (t2 - t1), 1),
        "watch_latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "watch_latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def wait_ready(url: str, context: ssl.SSLContext | None, within: float = 30) -> None:
    connector = aiohttp.TCPConnector(ssl=context if context is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/readyz not ready within {within:.0f}s")
            await asyncio.sleep(0.01)


async def bench_emulator(n: int, tmp: Path) -> dict[str, Any]:
    # start(): the emulator's own start, in this process, before anything else runs here
    t0 = time.perf_counter()
    api = await ApiServer().start()
    start_seconds = time.perf_counter() - t0
    await api.stop()
    # the measured emulator: its own process, as `mailfleet sandbox api` runs it
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailfleet_cli", "sandbox", "api", "--port", "0",
        "--kubeconfig", str(tmp / "emulator.kubeconfig"),
        stdout=asyncio.subprocess.PIPE, stderr=(tmp / "emulator.log").open("wb"),
        stdin=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.search(r"listening on (\S+?);", line)
        if match is None:
            raise RuntimeError(f"emulator printed no URL: {line!r} "
                               f"{(tmp / 'emulator.log').read_text()[-2000:]}")
        url = match.group(1)
        await wait_ready(url, None)
        spawn_to_ready = time.perf_counter() - t0
        result = await workload(url, n, None)
        result["start_seconds"] = round(start_seconds, 3)
        result["spawn_to_ready_seconds"] = round(spawn_to_ready, 3)
        result["rss_mb"] = rss_mb(proc.pid)
        return result
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def bench_kubernetes(n: int, tmp: Path) -> dict[str, Any]:
    cp = control_plane.ControlPlane(root=tmp / "kubernetes")
    t0 = time.perf_counter()
    async with cp:
        full_start = time.perf_counter() - t0
        result = await workload(cp.url, n, cp.ssl_context())
        by_process = {name: rss_mb(pid) for name, pid in cp.pids().items()}
    # ControlPlane.started_seconds: spawn to healthy for etcd, spawn to readyz for the API
    # server; the API server is spawned as soon as etcd is healthy
    ready = {name: round(cp.started_seconds[name], 3) for name in ("etcd", "kube-apiserver")}
    result["start_seconds"] = round(sum(ready.values()), 3)
    result["start_seconds_by_process"] = ready
    result["control_plane_start_seconds"] = round(full_start, 3)
    result["rss_mb"] = round(sum(by_process.values()), 1)
    result["rss_mb_by_process"] = by_process
    return result


def summary(name: str, r: dict[str, Any]) -> str:
    return (f"{name}: creates/s {r['create_per_s']}, patches/s {r['patch_per_s']}, "
            f"watch latency p50 {r['watch_latency_ms_p50']} ms p99 "
            f"{r['watch_latency_ms_p99']} ms, start {r['start_seconds']} s, "
            f"RSS {r['rss_mb']} MiB")


async def main(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mailfleet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        out["emulator"] = await bench_emulator(n, tmp)
        print(summary("emulator", out["emulator"]), flush=True)
        if not control_plane.binaries_built():
            out["kubernetes"] = None
            out["note"] = (f"real control plane not built in {control_plane.binaries_dir()} "
                           "(run `make kube`)")
        else:
            try:
                out["kubernetes"] = await bench_kubernetes(n, tmp)
                print(summary("kubernetes", out["kubernetes"]), flush=True)
            except Exception as exc:  # a reference that fails is reported, not fatal
                out["kubernetes"] = None
                out["note"] = f"real control plane failed: {exc!r}"[:2000]
        if out["kubernetes"] is None:
            print(f"kubernetes: null ({out['note']})", flush=True)
    out["objects"] = n
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000,
                        help="ConfigMaps to create and then patch (default 1000)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.objects))))
