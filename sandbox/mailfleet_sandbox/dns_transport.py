"""DNS over UDP and TCP on one loopback address and port, for the sandbox's name servers.

The authoritative server (`dns.DNSServer`) and the validating resolver
(`validating_resolver.ValidatingResolver`) differ only in how they answer a query; binding
both transports to the same port (RFC 7766: a client that got a truncated UDP answer retries
over TCP on that port), the length-prefixed TCP framing and shutting down open TCP clients
live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import struct
import typing
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Answer = Callable[[bytes, bool], "bytes | Awaitable[bytes | None] | None"]
"""`answer(query wire, over_udp)`: the reply's wire form (None: no reply). It may be a
coroutine; then each query is answered in its own task so a slow one blocks no other."""


class DnsListener:
    """UDP and TCP sockets on host:port (0: a free port, the same for both)."""

    def __init__(self, answer: Answer, host: str, port: int = 0) -> None:
        self._answer = answer
        self.host = host
        self.port = port
        self._requested_port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind both transports; the port bound."""
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _attempt in range(20):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(self.host, self._requested_port))
            port = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError as error:
                udp.close()
                last_error = error
                if self._requested_port:
                    raise
                continue
            self._udp, self.port = udp, port
            return port
        raise OSError(f"no port free for both UDP and TCP on {self.host}") from last_error

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()

    def _reply_later(self, wire: bytes, udp: bool,
                     send: Callable[[bytes], None]) -> None:
        """Answer `wire` and hand the reply to `send`: at once for a plain answer function,
        in a task for a coroutine. A failure is logged and leaves the socket serving."""
        try:
            result = self._answer(wire, udp)
        except Exception:  # a bug here must not kill the socket for every other client
            log.exception("dns answer failed")
            return
        if not inspect.isawaitable(result):
            if result is not None:
                send(result)
            return
        pending = result

        async def finish() -> None:
            try:
                reply = await pending
            except Exception:
                log.exception("dns answer failed")
                return
            if reply is not None:
                send(reply)

        task = asyncio.get_running_loop().create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                result = self._answer(wire, False)
                reply = await result if inspect.isawaitable(result) else result
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, listener: DnsListener) -> None:
        self._listener = listener
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        def send(reply: bytes) -> None:
            if self._transport is not None:
                with contextlib.suppress(OSError):
                    self._transport.sendto(reply, addr)

        self._listener._reply_later(data, True, send)
