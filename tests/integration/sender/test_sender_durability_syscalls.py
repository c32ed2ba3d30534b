"""Durability at the syscall: a sender process runs under strace, and for every submission
(SMTP and HTTP) the log must show the message written to the spool's WAL and then fsynced
before the `250`/`202` was written on the client's socket; the same for a one-click
unsubscribe (the suppression list fsynced before the `200`).

A SIGKILL test cannot catch a missing fsync (the page cache outlives the process); this one
does: with `spoolSync: normal` (WAL commits without fsync) the spool check fails, which the
second case pins."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures import syscalls
from sandbox_fixtures.sender import SenderProcess, base_config, lease, make_dkim_keys

SPOOL = "spool.sqlite3"
SUPPRESSION = "suppression.sqlite3"


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in text.split()]
    return []


async def _stop(proc: SenderProcess) -> None:
    """SIGTERM the traced sender (strace's child), then wait for strace to finish its log."""
    assert proc.process is not None
    for child in _children(proc.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
    try:
        await proc.wait(timeout=60)
    finally:
        for child in _children(proc.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.kill()


async def _traced_sender(
    tmp: Path, dns: DNSServer, fleet: ProviderFleet, *, spool_sync: str
) -> tuple[SenderProcess, Path]:
    keys = make_dkim_keys(tmp / "keys", "example.test", dns)
    cfg: dict[str, Any] = base_config(tmp, dns=dns, destination_port=fleet.port, keys=keys)
    cfg["spoolSync"] = spool_sync
    proc = SenderProcess(tmp / "proc", cfg)
    proc.cfg["deliverability"]["unsubscribeBaseUrl"] = proc.public_url
    proc.rewrite_config()
    log = tmp / "strace.log"
    # A traced start is slower (every write stops the thread): a generous deadline.
    await proc.start(timeout=90, wrapper=syscalls.strace_argv(log))
    await proc.client.assign([lease("127.0.0.93")])
    return proc, log


async def _submit_both_ways(proc: SenderProcess, count: int) -> list[tuple[str, str]]:
    """`count` submissions over SMTP and `count` over HTTP, one after another (each waits
    for its answer). Returns (marker in the stored message, reply text) for each."""
    expected: list[tuple[str, str]] = []
    for _ in range(count):
        marker = f"smtp-durable-{uuid.uuid4().hex}"
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=proc.smtp_port,
                                   timeout=30) as client:
            _, reply = await client.sendmail(
                "news@example.test", ["reader@gmail.test"],
                f"From: news@example.test\r\nTo: reader@gmail.test\r\nSubject: {marker}\r\n"
                f"\r\nbody\r\n".encode())
        assert "OK queued as" in reply, reply
        expected.append((marker, "250 2.0.0 OK queued as"))
    for _ in range(count):
        marker = f"http-durable-{uuid.uuid4().hex}"
        status, body = await proc.client.submit(
            {"from": "news@example.test", "to": ["reader@gmail.test"], "subject": marker,
             "text": "body\n"})
        assert status == 202, body
        expected.append((marker, "HTTP/1.1 202"))
    return expected


@pytest.mark.parametrize("spool_sync", ["full", "normal"])
async def test_every_accepted_message_is_fsynced_before_its_reply_leaves(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess], spool_sync: str,
) -> None:
    """`full` (the default) must pass for every submission; `normal` is the bug this test
    exists to catch (a commit without fsync), so there the check must find it."""
    proc, log = await _traced_sender(tmp_path, dns_server, provider_fleet,
                                     spool_sync=spool_sync)
    process_reaper.append(proc)
    expected = await _submit_both_ways(proc, 3)
    await provider_fleet["gmail"].wait_for(len(expected), timeout=60)
    await _stop(proc)

    calls = syscalls.read(log)
    problems = [syscalls.unsynced_reply(calls, database=SPOOL, data=marker, reply=reply)
                for marker, reply in expected]
    if spool_sync == "full":
        assert problems == [None] * len(expected), problems
    else:
        assert all(problem is not None and "without an fsync" in problem
                   for problem in problems), problems


async def test_a_one_click_unsubscribe_is_fsynced_before_its_200_leaves(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    proc, log = await _traced_sender(tmp_path, dns_server, provider_fleet, spool_sync="full")
    process_reaper.append(proc)
    reader = f"reader-{uuid.uuid4().hex[:12]}@gmail.test"
    status, body = await proc.client.submit(
        {"from": "Shop <news@example.test>", "to": [reader], "subject": "news",
         "text": "body\n", "class": "marketing"})
    assert status == 202, body
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(1, timeout=60)
    url = re.search(r"<(http://[^>]+)>", gmail.messages[0].header("List-Unsubscribe") or "")
    assert url is not None
    async with aiohttp.ClientSession() as http, http.post(
        url.group(1), data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert (response.status, (await response.json())["result"]) == (200, "recorded")
    await _stop(proc)

    calls = syscalls.read(log)
    assert syscalls.unsynced_reply(calls, database=SUPPRESSION, data=reader,
                                   reply="HTTP/1.1 200") is None

