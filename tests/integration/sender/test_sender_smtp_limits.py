"""Per-client session caps and a total DATA deadline on both SMTP listeners (issue 16,
slowloris): over real loopback sockets, from two client addresses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import SenderFactory, base_config
from sandbox_fixtures.waiting import eventually

DATA_TIMEOUT = 2.0
SLACK = 15.0
"""Generous: the cut must come near the deadline, not at the 5-minute idle timer."""


class Client:
    """A raw SMTP client over loopback, bound to a chosen source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self) -> str:
        """One whole reply (continuation lines joined); "" at end of stream."""
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode()
            if not line:
                return "".join(lines)
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "".join(lines)

    async def command(self, text: str) -> str:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 30) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def _sender(tmp: Path, dns: DNSServer, fleet: ProviderFleet,
                  factory: SenderFactory) -> Any:
    cfg = base_config(tmp, dns=dns, destination_port=fleet.port)
    cfg["submission"].update(maxConnectionsPerClient=3, dataTimeout=f"{DATA_TIMEOUT}s")
    cfg["deliverability"] = {"feedbackPort": 0, "feedbackMaxConnectionsPerClient": 3,
                             "feedbackDataTimeout": f"{DATA_TIMEOUT}s",
                             "bounceDomain": "bounces.example.test"}
    return await factory(cfg)


async def _cap_per_client(port: int) -> None:
    first = [await Client.connect(port) for _ in range(3)]
    for client in first:
        assert (await client.reply()).startswith("220 ")
    over = await Client.connect(port)
    assert (await over.reply()).startswith("421 4.7.0")
    assert await over.closed()
    other = await Client.connect(port, source="127.0.0.2")  # another client is not affected
    assert (await other.reply()).startswith("220 ")
    await first[0].close()  # a closed session frees its place

    async def admitted() -> bool:
        again = await Client.connect(port)
        greeting = await again.reply()
        await again.close()
        return greeting.startswith("220 ")

    await eventually(admitted, "a new session once one of the client's sessions ended")
    for client in (*first[1:], other):
        await client.close()


async def _trickle(port: int, recipient: str) -> float:
    client = await Client.connect(port, source="127.0.0.3")
    assert (await client.reply()).startswith("220 ")
    assert (await client.command("EHLO slow.test")).startswith("250")
    assert (await client.command("MAIL FROM:<a@example.test>")).startswith("250")
    assert (await client.command(f"RCPT TO:<{recipient}>")).startswith("250")
    assert (await client.command("DATA")).startswith("354")
    started = time.monotonic()
    body = b"Subject: slow\r\nFrom: a@example.test\r\n\r\n" + b"x" * 10_000
    answer = ""
    for byte in body:
        if time.monotonic() - started > DATA_TIMEOUT + SLACK:
            break
        client.writer.write(bytes([byte]))
        try:
            answer = await asyncio.wait_for(client.reader.readline(), 0.25)
        except TimeoutError:
            continue
        break
    elapsed = time.monotonic() - started
    assert answer.decode().startswith("421 4.4.2"), answer
    assert await client.closed()
    return elapsed


async def test_submission_caps_sessions_per_client_and_cuts_a_trickling_data(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _sender(tmp_path, dns_server, provider_fleet, sender_factory)
    await _cap_per_client(sender.smtp_port)

    elapsed = await _trickle(sender.smtp_port, "r@gmail.test")
    assert DATA_TIMEOUT * 0.5 <= elapsed < DATA_TIMEOUT + SLACK
    stats = await sender.client.stats()
    assert stats["totals"]["accepted"] == 0  # the partial message was never queued
    assert sum(q["depth"] for q in stats["queues"].values()) == 0

    # A message sent at normal speed is not cut.
    client = await Client.connect(sender.smtp_port)
    await client.reply()
    await client.command("EHLO fast.test")
    await client.command("MAIL FROM:<a@example.test>")
    await client.command("RCPT TO:<r@gmail.test>")
    await client.command("DATA")
    reply = await client.command(
        "From: a@example.test\r\nTo: r@gmail.test\r\nSubject: fast\r\n\r\nhello\r\n.")
    assert reply.startswith("250 "), reply
    await client.close()


async def test_the_feedback_port_caps_sessions_per_client_and_cuts_a_trickling_data(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _sender(tmp_path, dns_server, provider_fleet, sender_factory)
    port = sender.service.feedback_port
    await _cap_per_client(port)
    elapsed = await _trickle(port, "b-anything@bounces.example.test")
    assert DATA_TIMEOUT * 0.5 <= elapsed < DATA_TIMEOUT + SLACK
    _, metrics = await sender.client.request("GET", "/metrics", admin=True)
    assert "mailfleet_sender_feedback_reports_total{" not in metrics  # nothing was read
