"""Several intake processes per pod (`submission.processes`): the main process starts that many
intake workers (`intake_worker`), which take SMTP and HTTP submissions on the pod's ports
(SO_REUSEPORT: the kernel spreads connections over them) and hand every checked message back
here. This process stays the only writer of the spool (group commit, fsync before the answer)
and the only holder of leases, quotas, rates and delivery, so those stay exact; it takes no
submissions itself, and keeps the admin, public and feedback listeners.

Why one writer and not a spool insert in each worker: the engine's window on the spool
(`paging`) must learn of every new row the moment it is committed, and SQLite's lock between
writer processes is a sleep-and-retry; forwarding the message costs one socket round trip.

- Ports: this process binds each submission port with SO_REUSEPORT but never listens on it,
  which keeps the port (also a port 0 picked by the kernel) while workers come and go; only
  the workers' listening sockets take connections.
- Drain, undrain and stop: `Intake.accepting` goes to every worker (`accepting_changed`);
  `in_step` waits for their acknowledgements, so a drain answered by the admin API is in force
  on every process. This process's own state is the one that counts for storage (`store`).
- A worker that exits without being asked is started again (backing off while it keeps
  dying): what it had accepted was on disk before its client heard 250, and what it had not
  is the client's to retry. Workers die with this process (`intake_worker.die_with_parent`).
- Counters: the workers' rejection counts arrive every half second and are added to this
  process's `mailfleet_sender_rejected_submissions`; accepted mail is counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import sys
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from mailfleet_sender import config, intake, intake_channel, messages, metrics

log = logging.getLogger(__name__)

CGROUP = Path("/sys/fs/cgroup")
START_TIMEOUT = 30.0
"""Seconds a worker has to import, bind and say it is ready."""
IN_STEP_TIMEOUT = 5.0
"""Seconds `in_step` waits for the workers' acknowledgements (a stuck one is restarted)."""
RESTART_FIRST = 0.1
RESTART_MAX = 5.0
STOP_MARGIN = 5.0
"""Seconds past the grace period a worker has to exit before it is killed."""
STORE_FAILED = messages.Rejection(451, "4.3.0", "Temporary local problem, try again later", 503)


def cpu_limit(root: Path = CGROUP) -> float | None:
    """The container's CPU limit in CPUs (cgroup v2 `cpu.max`, else v1 CFS quota); None when
    it has none."""
    with contextlib.suppress(OSError, ValueError):
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or "100000")
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def process_count(setting: int | None, root: Path = CGROUP) -> int:
    """`submission.processes`, else the CPU limit rounded up; 1 without a limit (a pod
    without one has no known share of the node: set the setting)."""
    if setting is not None:
        return max(1, setting)
    limit = cpu_limit(root)
    return 1 if limit is None else max(1, math.ceil(limit))


def hold_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) with SO_REUSEPORT: the port stays this pod's, and the workers'
    listening sockets join it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((host, port))
    except OSError:
        held.close()
        raise
    return held


@dataclasses.dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    acked: int = 0
    pid: int = 0


class Supervisor:
    """The main process's side; used by `service` where a single process runs its
    `submission_smtp.SMTPServer` (`port`, `start`, `stop`, `reload`, `serving`)."""

    def __init__(
        self,
        *,
        count: int,
        intake_: intake.SpoolIntake,
        hostname: str,
        host: str,
        grace: float,
        metric_set: metrics.Metrics,
    ) -> None:
        self.count = count
        self.intake = intake_
        self.hostname = hostname
        self.host = host
        self.grace = grace
        self.metrics = metric_set
        self.port = 0
        self.http_port = 0
        self.restarts = 0
        self.stopping = False
        self._held: list[socket.socket] = []
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._answers: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._acks = asyncio.Condition()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.intake.cfg.submission
        smtp, http = hold_port(self.host, s.smtp_port), hold_port(self.host, s.http_port)
        self._held = [smtp, http]
        self.port = int(smtp.getsockname()[1])
        self.http_port = int(http.getsockname()[1])
        self.intake.follower = self
        self.metrics.attach(self._collect)
        loop = asyncio.get_running_loop()
        firsts: list[asyncio.Future[None]] = [loop.create_future() for _ in range(self.count)]
        for index, first in enumerate(firsts):
            self._spawn(self._tasks, self._keep(index, first))
        try:
            await asyncio.wait_for(asyncio.gather(*firsts), timeout=START_TIMEOUT)
        except BaseException:
            await self.stop(grace=0.0)
            raise
        log.info("intake workers serving", extra={"processes": self.count, "port": self.port,
                                                  "http_port": self.http_port})

    def serving(self) -> bool:
        return not self.stopping and any(w.ready.is_set() for w in self._workers.values())

    def reload(self, submission: config.Submission) -> None:
        """The intake's config (already the new one) goes to every worker."""
        del submission  # the worker needs the whole config: the intake holds it
        self._broadcast(intake_channel.Reconfigure(self.intake.cfg))

    async def stop(self, *, grace: float) -> None:
        """No new sessions anywhere; open transactions get `grace` seconds (their messages
        are still stored here meanwhile), then whatever is left is killed."""
        self.stopping = True
        self._broadcast(intake_channel.Stop(grace))
        processes = [w.process for w in self._workers.values()]
        if processes:
            done = asyncio.gather(*(p.wait() for p in processes))
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=grace + STOP_MARGIN)
            except TimeoutError:
                for p in processes:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                await done
        if self._answers:  # messages of the last transactions: let their commits answer
            await asyncio.wait(set(self._answers), timeout=STOP_MARGIN)
        for task in list(self._tasks | self._answers):
            task.cancel()
        if self._tasks or self._answers:
            await asyncio.wait(self._tasks | self._answers, timeout=2)
        for held in self._held:
            held.close()
        self._held = []

    # --- drain state ----------------------------------------------------------------------

    def accepting_changed(self, accepting: bool) -> None:
        self._seq += 1
        self._broadcast(intake_channel.Accepting(self._seq, accepting))

    async def in_step(self) -> None:
        seq = self._seq

        def caught_up() -> bool:
            return all(w.acked >= seq for w in self._workers.values() if w.ready.is_set())

        async with self._acks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks.wait_for(caught_up), IN_STEP_TIMEOUT)

    def _broadcast(self, item: object) -> None:
        for worker in self._workers.values():
            with contextlib.suppress(ConnectionError, RuntimeError):
                intake_channel.send(worker.writer, item)

    # --- one worker -------------------------------------------------------------------------

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _keep(self, index: int, first: asyncio.Future[None]) -> None:
        """Run worker `index`, and again whenever it exits unasked (not one that never
        became ready the first time: the pod's start fails instead)."""
        delay = RESTART_FIRST
        while not self.stopping:
            began = asyncio.get_running_loop().time()
            try:
                await self._run(index, first)
            except Exception as exc:  # a worker that cannot start is tried again
                log.exception("intake worker failed", extra={"index": index})
                if not first.done():
                    first.set_exception(exc)
                    return
            if not first.done():
                first.set_exception(RuntimeError(f"intake worker {index} exited at start"))
                return
            if self.stopping:
                return
            self.restarts += 1
            lived = asyncio.get_running_loop().time() - began
            delay = RESTART_FIRST if lived > 10 * RESTART_MAX else min(delay * 2, RESTART_MAX)
            log.warning("intake worker exited; starting it again",
                        extra={"index": index, "in_seconds": delay})
            await asyncio.sleep(delay)

    async def _run(self, index: int, first: asyncio.Future[None]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailfleet_sender.intake_worker",
                "--fd", str(theirs.fileno()), "--parent", str(os.getpid()),
                "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = _Worker(index=index, process=process, writer=writer)
        self._workers[index] = worker
        intake_channel.send(writer, intake_channel.Setup(
            index=index, cfg=self.intake.cfg, hostname=self.hostname, host=self.host,
            smtp_port=self.port, http_port=self.http_port, accepting=self.intake.accepting,
            grace=self.grace, share=self.count,
        ))
        worker.acked = self._seq  # the setup carried the current state
        try:
            await self._serve(worker, reader, first)
        finally:
            writer.close()
            with contextlib.suppress(ProcessLookupError):
                if process.returncode is None and not self.stopping:
                    process.kill()  # its socket closed: it cannot store anything any more
            await process.wait()
            async with self._acks:
                if self._workers.get(index) is worker:
                    del self._workers[index]
                self._acks.notify_all()

    async def _serve(
        self, worker: _Worker, reader: asyncio.StreamReader, first: asyncio.Future[None]
    ) -> None:
        while True:
            item = await intake_channel.receive(reader)
            if item is None:
                return
            if isinstance(item, intake_channel.Store | intake_channel.Lookup):
                self._spawn(self._answers, self._answer(worker, item))
            elif isinstance(item, intake_channel.Ack):
                async with self._acks:
                    worker.acked = max(worker.acked, item.seq)
                    self._acks.notify_all()
            elif isinstance(item, intake_channel.Counts):
                for (via, reason), n in item.rejected.items():
                    self.metrics.rejected.labels(via, reason).inc(n)
            elif isinstance(item, intake_channel.Ready):
                worker.pid = item.pid
                worker.ready.set()
                if not first.done():
                    first.set_result(None)

    async def _answer(
        self, worker: _Worker, item: intake_channel.Store | intake_channel.Lookup
    ) -> None:
        result: intake.Queued | messages.Rejection | int | None
        try:
            if isinstance(item, intake_channel.Lookup):
                result = await self.intake.handoff_stored(item.key)
            else:
                # Stamped with this process's clock: quota days and ages are counted by it.
                new = dataclasses.replace(item.message, created=self.intake.clock.wall())
                result = await self.intake.store(new, via=item.via, started=item.started)
        except Exception:
            log.exception("storing a worker's message failed")
            result = None if isinstance(item, intake_channel.Lookup) else STORE_FAILED
        with contextlib.suppress(ConnectionError, RuntimeError):
            intake_channel.send(worker.writer, intake_channel.Reply(item.id, result))

    # --- metrics ----------------------------------------------------------------------------

    def _collect(self) -> Iterable[GaugeMetricFamily]:
        live = metrics.gauge("intake_processes", "Intake worker processes serving the "
                             "submission ports (0: one process takes submissions itself).", [])
        live.add_metric([], sum(1 for w in self._workers.values() if w.ready.is_set()))
        restarts = metrics.gauge("intake_process_restarts", "Intake workers started again "
                                 "after they exited unasked (counter).", [])
        restarts.add_metric([], self.restarts)
        return [live, restarts]
