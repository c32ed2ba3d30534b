"""Container probes for the sandbox node agent: httpGet, tcpSocket and exec, with the
kubelet's thresholds (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold,
failureThreshold).

A `ProbeRunner` is one probe of one running container: `run()` loops until cancelled and calls
`on_change(healthy)` when the thresholded result flips. Durations are real seconds multiplied
by the agent's `time_scale`, so tests can shrink a 10 s period without editing pod specs.
Like the kubelet, an httpGet probe succeeds on 200 <= status < 400 and does not follow
redirects to other hosts; the host defaults to the pod IP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

JSON = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSpec:
    """One probe as the pod spec gives it, with the API's defaults filled in."""

    kind: str  # httpGet | tcpSocket | exec
    host: str
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


class ProbeSpecError(ValueError):
    """A probe the sandbox cannot run (e.g. a named port the container does not declare)."""


def resolve_port(port: Any, container: JSON) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ProbeSpecError(f"port {port!r} is not a named port of container "
                         f"{container.get('name')!r}")


def parse_probe(probe: JSON | None, container: JSON, pod_ip: str) -> ProbeSpec | None:
    """The pod spec's probe as a ProbeSpec (None when the container has no such probe)."""
    if not probe:
        return None
    spec: ProbeSpec
    if "httpGet" in probe:
        http = probe["httpGet"] or {}
        headers = tuple((h.get("name", ""), h.get("value", ""))
                        for h in http.get("httpHeaders") or [])
        spec = ProbeSpec("httpGet", http.get("host") or pod_ip,
                         resolve_port(http.get("port"), container), http.get("path") or "/",
                         str(http.get("scheme") or "HTTP").upper(), headers)
    elif "tcpSocket" in probe:
        tcp = probe["tcpSocket"] or {}
        spec = ProbeSpec("tcpSocket", tcp.get("host") or pod_ip,
                         resolve_port(tcp.get("port"), container))
    elif "exec" in probe:
        spec = ProbeSpec("exec", pod_ip, 0,
                         command=tuple((probe["exec"] or {}).get("command") or ()))
    else:
        raise ProbeSpecError("the sandbox runs httpGet, tcpSocket and exec probes only")
    return dataclasses.replace(
        spec, initial_delay=float(probe.get("initialDelaySeconds", 0)),
        period=float(probe.get("periodSeconds", 10)),
        timeout=float(probe.get("timeoutSeconds", 1)),
        success_threshold=int(probe.get("successThreshold", 1)),
        failure_threshold=int(probe.get("failureThreshold", 3)))


async def check_once(spec: ProbeSpec, session: aiohttp.ClientSession,
                     exec_prefix: Sequence[str] = (), timeout_scale: float = 1.0) -> bool:
    """One probe attempt: True for success."""
    timeout = max(spec.timeout * timeout_scale, 0.05)
    try:
        if spec.kind == "httpGet":
            url = f"{spec.scheme.lower()}://{spec.host}:{spec.port}{spec.path}"
            async with session.get(url, headers=dict(spec.headers), allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=timeout),
                                   ssl=False) as resp:
                return 200 <= resp.status < 400
        if spec.kind == "tcpSocket":
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(spec.host, spec.port), timeout)
            writer.close()
            return True
        proc = await asyncio.create_subprocess_exec(
            *exec_prefix, *spec.command, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            return await asyncio.wait_for(proc.wait(), timeout) == 0
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False
    except (TimeoutError, OSError, aiohttp.ClientError):
        return False


class ProbeRunner:
    """Runs one probe periodically and reports threshold crossings through `on_change`."""

    def __init__(self, spec: ProbeSpec, session: aiohttp.ClientSession,
                 on_change: Callable[[bool], None], *, initial: bool,
                 time_scale: float = 1.0, exec_prefix: Sequence[str] = (),
                 paused: Callable[[], bool] = lambda: False) -> None:
        self.spec = spec
        self.session = session
        self.on_change = on_change
        self.healthy = initial
        self.time_scale = time_scale
        self.exec_prefix = list(exec_prefix)
        self.paused = paused
        self._successes = 0
        self._failures = 0

    async def run(self) -> None:
        await asyncio.sleep(self.spec.initial_delay * self.time_scale)
        while True:
            if not self.paused():
                ok = await check_once(self.spec, self.session, self.exec_prefix,
                                      self.time_scale)
                self._record(ok)
            await asyncio.sleep(max(self.spec.period * self.time_scale, 0.02))

    def _record(self, ok: bool) -> None:
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            if not self.healthy and self._successes >= self.spec.success_threshold:
                self.healthy = True
                self.on_change(True)
        else:
            self._failures, self._successes = self._failures + 1, 0
            if self.healthy and self._failures >= self.spec.failure_threshold:
                self.healthy = False
                self.on_change(False)
