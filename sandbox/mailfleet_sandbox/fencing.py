"""A healed pod's fence, asked of the pod itself rather than read off timing at the receivers.

The claim (docs/sendingpool.md): a pod cut off from the operator (frozen, partitioned) while
its IP moved to another pod never sends from that IP again, because its own lease table
refuses: the lease ran out on its monotonic clock, and a renewal of it arriving late is not
taken. The pod's admin API shows both sides of that: `/v1/assignment` its lease table, and
`/v1/stats` `ips[].egress` its outbound connections, transactions and messages written per
source IP and lease epoch, counted on the network side of the lease check, which runs before
the connection and before each write of a transaction (a refused one is `fenced`, never sent;
see `mailfleet_sender.egress_counts`). So: once the pod lost the lease, its counters for the
IP under that lease's epoch (and older ones) stay still and its last connection, transaction
and message were before that moment (a transaction begun under the lease must not finish
after it either), while the new holder writes messages under a newer epoch. The IP may come
back to the pod later under a newer epoch still: a new lease, counted apart. No window, no
attribution of received copies: the receivers may not be able to tell the pods apart, the
pod always can.

The times compared are wall-clock readings of processes on one host (the sandbox's), one
clock for all.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mailfleet_sandbox.world import SandboxWorld, wait_until

JSON = dict[str, Any]
ADMIN_PORT = 8081
"""`spec.submission.adminPort` when the pool does not set it (the CRD's default)."""


@dataclass(frozen=True)
class Admin:
    """Where one pod's admin API answers, and its bearer token."""

    pod: str
    url: str
    token: str


@dataclass(frozen=True)
class Egress:
    """One pod's view of one IP under a range of lease epochs: its egress counters summed
    over those epochs (the last times the latest), and whether it holds a valid lease of one
    of them."""

    pod: str
    ip: str
    epochs: str
    """The range read, e.g. "<=3", ">3", "any"."""
    connections: int
    transactions: int
    messages: int
    fenced: int
    last_connection_at: float | None
    last_transaction_at: float | None
    last_message_at: float | None
    lease_valid: bool
    epoch: int | None
    """Of the pod's lease entry for the IP (whatever its epoch); None when it lists none."""

    def describe(self) -> str:
        return (f"{self.pod} {self.ip} epochs {self.epochs}: {self.connections} connections, "
                f"{self.transactions} transactions, {self.messages} messages, "
                f"{self.fenced} fenced, {'a' if self.lease_valid else 'no'} valid lease of "
                f"these epochs (its table: epoch {self.epoch})")


def admin(world: SandboxWorld, pod: str, *, pool: str) -> Admin:
    """A pod's admin endpoint as an administrator finds it: the pod's IP, the pool's
    `adminPort`, the token in the pool's `<pool>-admin` Secret (API reads: blocking)."""
    ns = world.settings.namespace
    obj = world.api.get("v1", "Pod", pod, ns)
    spec = world.pool(pool).get("spec") or {}
    port = int((spec.get("submission") or {}).get("adminPort") or ADMIN_PORT)
    secret = world.api.get("v1", "Secret", f"{pool}-admin", ns)
    raw = (secret.get("data") or {}).get("token")
    token = base64.b64decode(raw).decode().strip() if raw else ""
    return Admin(pod, f"http://{obj['status']['podIP']}:{port}", token)


async def read(endpoint: Admin, ip: str, *, upto: int | None = None,
               above: int | None = None) -> Egress:
    """The pod's counters and lease for `ip`, for the lease epochs `above` < epoch <= `upto`
    (either bound left out: open). OSError, aiohttp.ClientError or TimeoutError while the pod
    does not answer."""
    headers = {"Authorization": f"Bearer {endpoint.token}"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        async with session.get(f"{endpoint.url}/v1/stats") as resp:
            resp.raise_for_status()
            stats = await resp.json()
        async with session.get(f"{endpoint.url}/v1/assignment") as resp:
            resp.raise_for_status()
            held = await resp.json()
    return egress_of(endpoint.pod, ip, stats, held, upto=upto, above=above)


def egress_of(pod: str, ip: str, stats: JSON, held: JSON, *, upto: int | None = None,
              above: int | None = None) -> Egress:
    """`read`'s result from the bodies of `/v1/stats` and `/v1/assignment`."""
    def wanted(epoch: int) -> bool:
        return (upto is None or epoch <= upto) and (above is None or epoch > above)

    activity = [e for i in stats.get("ips") or [] if i.get("address") == ip
                for e in i.get("egress") or [] if wanted(int(e.get("epoch") or 0))]
    lease = next((entry for entry in held.get("leases") or [] if entry.get("address") == ip),
                 None)
    epoch = None if lease is None else int(lease.get("epoch") or 0)
    bounds = [f"<={upto}" if upto is not None else "", f">{above}" if above is not None else ""]
    return Egress(
        pod=pod, ip=ip, epochs=",".join(b for b in bounds if b) or "any",
        connections=sum(int(e.get("connections") or 0) for e in activity),
        transactions=sum(int(e.get("transactions") or 0) for e in activity),
        messages=sum(int(e.get("messages") or 0) for e in activity),
        fenced=sum(int(e.get("fenced") or 0) for e in activity),
        last_connection_at=_latest(activity, "lastConnectionAt"),
        last_transaction_at=_latest(activity, "lastTransactionAt"),
        last_message_at=_latest(activity, "lastMessageAt"),
        lease_valid=bool(lease and lease.get("valid")) and epoch is not None and wanted(epoch),
        epoch=epoch,
    )


async def read_when_answering(endpoint: Admin, ip: str, *, within: float,
                              upto: int | None = None) -> Egress:
    """`read` once the pod answers (a thawed process, a healed node's pod)."""
    errors: list[str] = []

    async def attempt() -> Egress | None:
        try:
            return await read(endpoint, ip, upto=upto)
        except (OSError, aiohttp.ClientError, TimeoutError) as error:
            errors[:] = [f"{type(error).__name__}: {error}"]
            return None

    try:
        result: Egress = await wait_until(attempt, within=within, interval=0.2,
                                          what=f"{endpoint.pod}'s admin API answering")
    except TimeoutError as timeout:
        raise TimeoutError(f"{timeout} at {endpoint.url}: {errors}") from None
    return result


async def read_pod(world: SandboxWorld, pod: str, pids: list[int], first: Admin, ip: str, *,
                   pool: str, within: float, upto: int | None = None) -> tuple[Egress, bool]:
    """`read` of a pod whose process `pids` at `first` was frozen: that process while it runs;
    once it is gone (the pod deleted and made again while its node was out, so with a new
    IP; or its container restarted) the pod's process of now, which holds no lease. Also
    says whether the frozen process was gone (API reads: blocking)."""
    async def attempt() -> tuple[Egress, bool] | None:
        was_gone = gone(pids)
        try:
            endpoint = admin(world, pod, pool=pool) if was_gone else first
            return await read(endpoint, ip, upto=upto), was_gone
        except (OSError, aiohttp.ClientError, TimeoutError, LookupError, KeyError):
            return None

    result: tuple[Egress, bool] = await wait_until(attempt, within=within, interval=0.2,
                                                   what=f"{pod}'s admin API answering")
    return result


def problems(*, lost_at: float, baseline: Egress, final: Egress) -> list[str]:
    """Why the pod broke its fence, having lost the IP's lease by `lost_at` (when it was
    seen frozen, or when another pod's mail from the IP arrived); `baseline` is the pod read
    after that (once it answers again), `final` after more of the new holder's mail flowed,
    both over the epochs up to the lost lease's (the IP granted back to the pod later, under
    a higher epoch, is a new lease). Empty: the fence held."""
    out = []
    for reading in (baseline, final):
        if reading.lease_valid:
            out.append(f"{reading.pod} holds a valid lease for {reading.ip} "
                       f"(epoch {reading.epoch}) after another pod got it")
    for what, grown in (("connections", final.connections - baseline.connections),
                        ("transactions", final.transactions - baseline.transactions),
                        ("messages", final.messages - baseline.messages)):
        if grown:
            out.append(f"{final.pod} began {grown} more {what} from {final.ip} after it "
                       "lost the lease")
    for what, at in (("began a connection", final.last_connection_at),
                     ("began a transaction", final.last_transaction_at),
                     ("wrote a message", final.last_message_at)):
        if at is not None and at > lost_at:
            out.append(f"{final.pod} {what} from {final.ip} {at - lost_at:.3f}s after it "
                       "lost the lease")
    return out


def carried(new: Egress) -> list[str]:
    """Why the new holder's reading (over the epochs above the lost lease's) does not show
    it sending from the IP; empty: it wrote messages from it."""
    if new.messages > 0:
        return []
    return [f"the new holder did not carry {new.ip}: {new.describe()}"]


def stopped(pids: list[int]) -> bool:
    """Every thread of every process in `pids` has stopped (SIGSTOP taken: state T in
    /proc), or is gone: from then on none of them can begin anything."""
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                state = stat.read_text().rpartition(")")[2].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if state not in ("T", "t", "Z", "X"):
                return False
    return True


def gone(pids: list[int]) -> bool:
    """None of `pids` runs any more (killed and reaped)."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _latest(activity: list[JSON], field: str) -> float | None:
    times = [datetime.datetime.fromisoformat(str(e[field])).timestamp() for e in activity
             if e.get(field)]
    return max(times, default=None)
