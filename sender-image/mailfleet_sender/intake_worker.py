"""An intake worker process (`python -m mailfleet_sender.intake_worker`, started by the main
process's `intake_workers.Supervisor`): SMTP and HTTP submission on the pod's ports, shared
with the other workers through SO_REUSEPORT, with the same checks as the main process
(`intake`, `from_domains`, AUTH, API keys, limits). A message that passes them is handed to
the main process, which puts it in the spool (fsync) and only then answers; the worker says
250 (202) after that answer, never before. So the main process stays the one writer of the
spool and the one holder of leases, quotas and rates, and a worker that dies loses nothing
that was accepted.

It dies with the main process: PR_SET_PDEATHSIG (SIGTERM) and the end of the socket pair both
stop it. SIGTERM (or `Stop`) closes the listeners and gives open transactions the grace
period. Its rejection counters go to the main process (`Counts`, every COUNTS_INTERVAL and at
stop), which serves /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from mailfleet_sender import (
    cli,
    clock,
    config,
    event_loops,
    http_submission,
    intake,
    intake_channel,
    messages,
    metrics,
    spool,
    submission_smtp,
)

log = logging.getLogger(__name__)

COUNTS_INTERVAL = 0.5
"""Seconds between two `Counts` to the main process."""
PR_SET_PDEATHSIG = 1
MAIN_GONE = messages.Rejection(451, "4.3.0", "Temporary local problem, try again later", 503)


class ForwardingIntake(intake.Intake):
    """Checks here, storage in the main process."""

    def __init__(
        self, link: Link, *, cfg: config.SenderConfig, metric_set: metrics.Metrics,
        hostname: str,
    ) -> None:
        super().__init__(cfg=cfg, metric_set=metric_set, clock_=clock.Clock(), hostname=hostname)
        self.link = link

    async def handoff_stored(self, key: str) -> int | None:
        found = await self.link.request(lambda n: intake_channel.Lookup(n, key))
        return found if isinstance(found, int) else None

    async def store(
        self, new: spool.NewMessage, *, via: str, started: bool
    ) -> intake.Queued | messages.Rejection:
        result = await self.link.request(
            lambda n: intake_channel.Store(n, new, via, started)
        )
        if isinstance(result, intake.Queued | messages.Rejection):
            return result
        self.metrics.rejected.labels(via, "spool").inc()
        return MAIN_GONE


class Link:
    """The worker's end of the socket pair: requests and their replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[object]] = {}
        self.closed = False

    async def request(self, make: Callable[[int], object]) -> object:
        """Send `make(id)` and wait for its reply; None when the main process is gone."""
        if self.closed:
            return None
        n = next(self._ids)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[n] = future
        try:
            intake_channel.send(self.writer, make(n))
            return await future
        finally:
            self._waiting.pop(n, None)

    def answered(self, reply: intake_channel.Reply) -> None:
        future = self._waiting.get(reply.id)
        if future is not None and not future.done():
            future.set_result(reply.result)

    def close(self) -> None:
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)
        self.writer.close()


class Worker:
    def __init__(self, setup: intake_channel.Setup, link: Link) -> None:
        self.setup = setup
        self.link = link
        self.metrics = metrics.Metrics()
        self.intake = ForwardingIntake(
            link, cfg=setup.cfg, metric_set=self.metrics, hostname=setup.hostname,
        )
        self.intake.accepting = setup.accepting
        self.smtp = submission_smtp.SMTPServer(
            self._submission(setup.cfg), self.intake, setup.hostname, host=setup.host,
            reuse_port=True,
        )
        self._api_keys = http_submission.read_lines(setup.cfg.submission.api_key_file)
        self._runner: web.AppRunner | None = None
        self._sent: dict[tuple[str, str], float] = {}
        self._stop = asyncio.Event()
        self._grace = setup.grace

    # --- what the HTTP submission handlers need ---------------------------------------------

    def api_keys(self) -> list[str]:
        return self._api_keys

    def peer_tokens(self) -> list[str]:
        return []  # hand-offs between the pool's pods come to the main process's admin port

    # --- lifecycle --------------------------------------------------------------------------

    def _submission(self, cfg: config.SenderConfig) -> config.Submission:
        s = cfg.submission
        return s.model_copy(update={
            "smtp_port": self.setup.smtp_port,
            "max_connections": max(1, math.ceil(s.max_connections / self.setup.share)),
        })

    async def start(self) -> None:
        await self.smtp.start()
        s = self.setup.cfg.submission
        app = http_submission.Submission(self).submission_app(
            max_body=s.max_message_size * 2 + 64 * 1024
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.setup.host, self.setup.http_port,
                           reuse_address=True, reuse_port=True)
        await site.start()
        intake_channel.send(self.link.writer, intake_channel.Ready(pid=os.getpid()))
        log.info("intake worker serving", extra={"index": self.setup.index,
                                                 "pid": os.getpid()})

    def request_stop(self, grace: float | None = None) -> None:
        if grace is not None:
            self._grace = grace
        self._stop.set()

    async def run(self) -> None:
        listening = asyncio.create_task(self._listen())
        counting = asyncio.create_task(self._ship_counts())
        await self._stop.wait()
        self.intake.accepting = False
        await self.smtp.stop(grace=self._grace)
        if self._runner is not None:
            await self._runner.cleanup()
        counting.cancel()
        self._send_counts()
        with contextlib.suppress(ConnectionError):
            await self.link.writer.drain()
        listening.cancel()
        self.link.close()

    async def _listen(self) -> None:
        while True:
            item = await intake_channel.receive(self.link.reader)
            if item is None:  # the main process is gone: nothing can be stored any more
                log.warning("intake worker lost the main process; stopping")
                self.link.close()
                self.request_stop(0.0)
                return
            if isinstance(item, intake_channel.Reply):
                self.link.answered(item)
            elif isinstance(item, intake_channel.Accepting):
                self.intake.accepting = item.accepting
                intake_channel.send(self.link.writer, intake_channel.Ack(item.seq))
            elif isinstance(item, intake_channel.Reconfigure):
                self._reconfigure(item.cfg)
            elif isinstance(item, intake_channel.Stop):
                self.request_stop(item.grace)

    def _reconfigure(self, cfg: config.SenderConfig) -> None:
        """The main process applied a new config: the same checks, keys and credentials."""
        self.intake.cfg = cfg
        self.smtp.reload(self._submission(cfg))
        try:
            self._api_keys = http_submission.read_lines(cfg.submission.api_key_file)
        except OSError:
            log.exception("cannot reload the API keys; keeping the old ones")

    async def _ship_counts(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            self._send_counts()

    def _send_counts(self) -> None:
        totals: dict[tuple[str, str], float] = {}
        for family in self.metrics.rejected.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[(sample.labels["via"], sample.labels["reason"])] = sample.value
        changed = {key: n - self._sent.get(key, 0.0) for key, n in totals.items()
                   if n != self._sent.get(key, 0.0)}
        if changed and not self.link.closed:
            intake_channel.send(self.link.writer, intake_channel.Counts(changed))
            self._sent = totals


def _tag_logs(index: int) -> None:
    """Every record of this process says which worker wrote it (the pod's log interleaves
    all of its processes)."""

    def tag(record: logging.LogRecord) -> bool:
        record.intake_worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def die_with_parent(parent: int) -> None:
    """SIGTERM when the main process dies, whatever kills it (Linux); gone already: exit."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


async def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    setup = await intake_channel.receive(reader)
    if not isinstance(setup, intake_channel.Setup):
        return 2
    _tag_logs(setup.index)
    worker = Worker(setup, Link(reader, writer))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.start()
    await worker.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailfleet_sender.intake_worker")
    parser.add_argument("--fd", type=int, required=True, help="the socket pair's end")
    parser.add_argument("--parent", type=int, required=True, help="the main process's pid")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    cli.setup_logging(args.log_level)
    return event_loops.run(serve(args.fd))


if __name__ == "__main__":
    sys.exit(main())
