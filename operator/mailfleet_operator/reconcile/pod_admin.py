"""Talking to the sender pods' authenticated admin endpoints (I/O): assignment, stats, drain
and its cancellation.

The operator reaches each pod directly at `podIP:httpPort` (the headless Service publishes
unready pods too, but an IP is what the pod object carries). Every call has a short timeout:
an unreachable pod must not hold up the reconcile of the pool, and a lease the pod did not
acknowledge is handled by the caller as "maybe held" (see `logic.assigning.record_intent`).
The bearer token is never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from mailfleet_sender import wire
from pydantic import ValidationError

log = logging.getLogger(__name__)


class PodUnreachable(ConnectionError):
    """The pod did not answer, or answered with an error; the message says which.

    `delivered` is False only when the request certainly never reached the pod (the
    connection could not be opened: refused, no route); a lease sent that way holds nothing."""

    def __init__(self, message: str, *, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


@dataclass(frozen=True)
class PodEndpoint:
    name: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class PodAdmin:
    """One aiohttp session shared by every pool's calls; use `async with PodAdmin(...)`."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PodAdmin:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=200)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, pod: PodEndpoint, path: str, *, token: str, body: Any = None
    ) -> Any:
        if self._session is None:
            await self.open()
        assert self._session is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._session.request(
                method, pod.base_url + path, json=body, headers=headers
            ) as response:
                if response.status >= 400:
                    text = (await response.text())[:200]
                    raise PodUnreachable(f"{pod.name}: {method} {path} -> {response.status} {text}")
                return await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            raise PodUnreachable(
                f"{pod.name}: {method} {path} failed: {exc!r}", delivered=False
            ) from exc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PodUnreachable(f"{pod.name}: {method} {path} failed: {exc!r}") from exc

    async def put_assignment(
        self, pod: PodEndpoint, assignment: wire.Assignment, *, token: str
    ) -> wire.AssignmentStatus:
        body = assignment.model_dump(mode="json", by_alias=True)
        data = await self._call("PUT", pod, "/v1/assignment", token=token, body=body)
        try:
            return wire.AssignmentStatus.model_validate(data)
        except ValidationError as exc:
            raise PodUnreachable(f"{pod.name}: bad assignment answer: {exc}") from exc

    async def get_stats(self, pod: PodEndpoint, *, token: str) -> wire.Stats:
        stats, _ = await self.get_stats_and_kpis(pod, token=token)
        return stats

    async def get_stats_and_kpis(
        self, pod: PodEndpoint, *, token: str
    ) -> tuple[wire.Stats, dict[str, Any] | None]:
        """The stats, and their `kpis` object as sent (None from a sender without KPIs): the
        pool's status sums it (`logic.kpi_summary`)."""
        data = await self._call("GET", pod, "/v1/stats", token=token)
        try:
            stats = wire.Stats.model_validate(data)
        except ValidationError as exc:
            raise PodUnreachable(f"{pod.name}: bad stats answer: {exc}") from exc
        kpis = data.get("kpis") if isinstance(data, dict) else None
        return stats, kpis if isinstance(kpis, dict) else None

    async def drain(
        self,
        pod: PodEndpoint,
        *,
        token: str,
        handoff: bool = True,
        target: wire.HandoffTarget | None = None,
    ) -> None:
        """Refuse new mail; with `handoff`, pass the queue to the pool's other pods, or to
        `target` (another pool's pods). The sender reads the flag from the query string (the
        body repeats it for older senders, with the target)."""
        path = f"/v1/drain?handoff={'true' if handoff else 'false'}"
        body = wire.DrainRequest(handoff=handoff, target=target if handoff else None)
        await self._call(
            "POST", pod, path, token=token,
            body=body.model_dump(mode="json", by_alias=True, exclude_none=True),
        )

    async def undrain(self, pod: PodEndpoint, *, token: str) -> None:
        """Cancel a drain (`DELETE /v1/drain`, idempotent): the pod takes mail again and
        reports ready, so a pod drained after a failover becomes a spare once it is healthy."""
        await self._call("DELETE", pod, "/v1/drain", token=token)
