"""Several intake processes per pod (`submission.processes: 2`): a sender run as its own process,
as in a pod, with two intake workers sharing its SMTP port. Both take connections; mail one of
them accepted is delivered exactly once, also when the worker is killed right after its 250;
a drain is refused on every process; quotas and class priority hold as with one process; the
workers exit with the main process, whether it stops or is killed."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    SenderProcess,
    base_config,
    lease,
    make_dkim_keys,
)
from sandbox_fixtures.waiting import eventually as _until


def _config(tmp_path: Path, dns: DNSServer, fleet: ProviderFleet) -> dict[str, Any]:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns)
    cfg = base_config(tmp_path, dns=dns, destination_port=fleet.port, keys=keys)
    cfg["submission"]["processes"] = 2
    cfg["submission"]["maxConnectionsPerClient"] = 200  # each process counts its own
    return cfg


async def _started(tmp_path: Path, cfg: dict[str, Any], reaper: list[SenderProcess],
                   ) -> SenderProcess:
    sender = SenderProcess(tmp_path / "pod", cfg)
    reaper.append(sender)
    await sender.start()
    return sender


def _workers(parent: int) -> set[int]:
    """The intake workers the sender process started (its children running intake_worker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"intake_worker" in command:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _owners(server_port: int, client_ports: set[int], pids: set[int]) -> dict[int, int]:
    """client port -> pid of the process holding the server side of that connection."""
    inodes: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) in client_ports):
            inodes[inode] = int(remote.split(":")[1], 16)
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners[inodes[target[8:-1]]] = pid
    return owners


Session = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), 20)
        if line[3:4] != b"-":
            return line


async def _open(port: int) -> tuple[Session, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return (reader, writer), await _reply(reader)


async def _send(session: Session, rcpt: str, *, headers: str = "",
                sender: str = "a@example.test") -> bytes:
    """One transaction on an open session; the reply to the final dot."""
    reader, writer = session
    data = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: s\r\n{headers}"
            f"Message-ID: <{rcpt}>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n.\r\n")
    for command in (b"EHLO client.test\r\n", f"MAIL FROM:<{sender}>\r\n".encode(),
                    f"RCPT TO:<{rcpt}>\r\n".encode(), b"DATA\r\n"):
        writer.write(command)
        await _reply(reader)
    writer.write(data.encode())
    return await _reply(reader)


async def _close(session: Session) -> None:
    session[1].close()


async def _delivered(sender: SenderProcess, n: int) -> bool:
    stats = await sender.client.stats()
    return bool(stats["totals"]["delivered"] == n
                and all(q["depth"] == 0 for q in stats["queues"].values()))


async def test_both_processes_take_connections_and_each_message_is_delivered_once(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    sender = await _started(tmp_path, _config(tmp_path, dns_server, provider_fleet),
                            process_reaper)
    assert sender.process is not None
    workers = _workers(sender.process.pid)
    assert len(workers) == 2

    opened = [await _open(sender.smtp_port) for _ in range(40)]
    assert all(greeting.startswith(b"220") for _, greeting in opened)
    ports = {s[1].get_extra_info("sockname")[1]: s for s, _ in opened}
    owners = _owners(sender.smtp_port, set(ports), workers | {sender.process.pid})
    assert set(owners.values()) == workers  # spread over both workers, none in the main one

    replies = [await _send(session, f"r{i}@gmail.test") for i, (session, _) in
               enumerate(opened)]
    assert all(reply.startswith(b"250") for reply in replies), replies
    for session, _ in opened:
        await _close(session)
    await sender.client.assign([lease("127.0.0.81")])
    await _until(lambda: _delivered(sender, 40), "40 deliveries")
    received = [m.rcpt_to for m in provider_fleet["gmail"].messages]
    assert sorted(received) == sorted((f"r{i}@gmail.test",) for i in range(40))


async def test_a_worker_killed_after_its_250_loses_nothing_and_is_started_again(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    sender = await _started(tmp_path, _config(tmp_path, dns_server, provider_fleet),
                            process_reaper)
    assert sender.process is not None
    killed = _workers(sender.process.pid)
    for i in range(10):  # no lease yet: every message waits in the spool
        session, _ = await _open(sender.smtp_port)
        assert (await _send(session, f"k{i}@gmail.test")).startswith(b"250")
        await _close(session)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        assert sender.process is not None
        now = _workers(sender.process.pid)
        return len(now) == 2 and not now & killed

    await _until(restarted, "two new workers")
    await _until(lambda: _ready(sender), "ready again")
    session, greeting = await _open(sender.smtp_port)
    assert greeting.startswith(b"220")
    assert (await _send(session, "after@gmail.test")).startswith(b"250")
    await _close(session)
    await sender.client.assign([lease("127.0.0.82")])
    await _until(lambda: _delivered(sender, 11), "11 deliveries")
    received = sorted(m.rcpt_to[0] for m in provider_fleet["gmail"].messages)
    assert received == sorted([f"k{i}@gmail.test" for i in range(10)] + ["after@gmail.test"])

    async def both_serving() -> bool:
        _, text = await sender.client.request("GET", "/metrics")
        return "mailfleet_sender_intake_processes 2.0" in text

    await _until(both_serving, "both new workers serving")
    _, metrics_text = await sender.client.request("GET", "/metrics")
    assert "mailfleet_sender_intake_process_restarts 2.0" in metrics_text


async def _ready(sender: SenderProcess) -> bool:
    try:
        status, _ = await sender.client.request("GET", "/readyz")
    except (aiohttp.ClientError, OSError):
        return False
    return status == 200


async def test_a_drain_is_refused_on_every_process_and_rejections_reach_the_main_metrics(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    cfg["submission"]["smtpFromDomains"] = ["example.test"]
    sender = await _started(tmp_path, cfg, process_reaper)
    session, _ = await _open(sender.smtp_port)
    refused = await _send(session, "x@gmail.test", sender="y@other.test")
    await _close(session)
    status, _ = await sender.client.request("POST", "/v1/drain", admin=True, token=ADMIN_TOKEN)
    assert status == 202
    opened = [await _open(sender.smtp_port) for _ in range(30)]
    greetings = [greeting for _, greeting in opened]
    for session, _ in opened:
        await _close(session)
    http = [(await sender.client.submit({"from": "a@example.test", "to": [f"h{i}@gmail.test"],
                                         "subject": "s", "text": "t"}))[0] for i in range(6)]

    assert all(g.startswith(b"421 4.3.2") for g in greetings), greetings
    assert http == [503] * 6
    status, _ = await sender.client.request("DELETE", "/v1/drain", admin=True,
                                            token=ADMIN_TOKEN)
    assert status == 200
    opened = [await _open(sender.smtp_port) for _ in range(30)]
    assert all(greeting.startswith(b"220") for _, greeting in opened)
    for session, _ in opened:
        await _close(session)
    payload = {"from": "a@example.test", "to": ["back@gmail.test"], "subject": "s", "text": "t"}
    assert (await sender.client.submit(payload))[0] == 202  # a worker serves the HTTP port
    assert (await sender.client.submit(payload, key="not-the-key"))[0] == 401

    assert refused.startswith(b"5"), refused

    async def counted() -> bool:
        _, text = await sender.client.request("GET", "/metrics")
        return ('mailfleet_sender_rejected_submissions_total{reason="from_domain",via="smtp"} '
                '1.0') in text
    await _until(counted, "the worker's rejection in the main process's metrics")


async def test_quotas_and_class_priority_stay_exact_with_workers(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    sender = await _started(tmp_path, _config(tmp_path, dns_server, provider_fleet),
                            process_reaper)
    for i in range(6):
        session, _ = await _open(sender.smtp_port)
        reply = await _send(session, f"m{i}@gmail.test", headers="X-Mailfleet-Class: marketing\r\n")
        assert reply.startswith(b"250")
        await _close(session)
    for i in range(3):
        session, _ = await _open(sender.smtp_port)
        reply = await _send(session, f"t{i}@gmail.test",
                            headers="X-Mailfleet-Class: transactional\r\n")
        assert reply.startswith(b"250")
        await _close(session)
    await sender.client.assign([lease("127.0.0.83", quota=4, warmup=True)])
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(4, timeout=20)

    async def settled() -> bool:
        stats = await sender.client.stats()
        ip = next((i for i in stats["ips"] if i["address"] == "127.0.0.83"), None)
        return ip is not None and ip["sentToday"] == 4 and ip["quotaRemaining"] == 0

    await _until(settled, "the quota spent")
    stats = await sender.client.stats()
    assert gmail.received_by_ip() == {"127.0.0.83": 4}
    # The quota's 4 go to every transactional message first (they may arrive in any order:
    # several connections carry them), then to one marketing message.
    sent = sorted(m.rcpt_to[0] for m in gmail.messages)
    assert sent[1:] == ["t0@gmail.test", "t1@gmail.test", "t2@gmail.test"]
    assert sent[0].startswith("m")
    assert stats["queues"]["marketing"]["depth"] == 5  # waiting for quota, not dropped


async def test_workers_exit_with_the_main_process_whether_stopped_or_killed(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    stopped = await _started(tmp_path / "a", cfg, process_reaper)
    assert stopped.process is not None
    workers = _workers(stopped.process.pid)
    stopped.signal(signal.SIGTERM)
    assert await stopped.wait() == 0
    await _until(lambda: not any(_alive(p) for p in workers), "workers gone after SIGTERM")

    killed = await _started(tmp_path / "b", _config(tmp_path / "b", dns_server, provider_fleet),
                            process_reaper)
    assert killed.process is not None
    workers = _workers(killed.process.pid)
    assert len(workers) == 2
    killed.kill()
    await _until(lambda: not any(_alive(p) for p in workers), "workers gone after SIGKILL")


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_lets_a_worker_finish_its_open_transaction_and_the_mail_is_kept(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    sender = await _started(tmp_path, _config(tmp_path, dns_server, provider_fleet),
                            process_reaper)
    (reader, writer), _ = await _open(sender.smtp_port)
    for command in (b"EHLO client.test\r\n", b"MAIL FROM:<a@example.test>\r\n",
                    b"RCPT TO:<open@gmail.test>\r\n", b"DATA\r\n"):
        writer.write(command)
        await _reply(reader)
    writer.write(b"From: a@example.test\r\nTo: open@gmail.test\r\nSubject: open\r\n")

    sender.signal(signal.SIGTERM)
    await _until(lambda: _refused(sender.smtp_port), "no new sessions")
    writer.write(b"Message-ID: <open@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n.\r\n")
    assert (await _reply(reader)).startswith(b"250")  # stored by the main process meanwhile
    writer.close()
    assert await sender.wait(timeout=40) == 0

    await sender.start()
    await sender.client.assign([lease("127.0.0.84")])
    await _until(lambda: _delivered(sender, 1), "the open transaction's message delivered")
    assert [m.rcpt_to for m in provider_fleet["gmail"].messages] == [("open@gmail.test",)]
