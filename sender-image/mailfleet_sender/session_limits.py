"""Limits aiosmtpd does not have, for both SMTP listeners: sessions per client address and a
total deadline for one DATA phase (slowloris).

aiosmtpd bounds a command line, a message's size, calls per command and the time between two
commands (`timeout`), but one client may open any number of sessions, and a DATA phase that
trickles a byte a second holds its session (and its buffer) until the idle timer, which also
runs during DATA, ends it silently. Both limits here use only documented extension points: the
asyncio protocol callbacks (`connection_made`, `connection_lost`) and an `smtp_DATA` override
that calls aiosmtpd's own. The handler's `handle_DATA` calls `data_complete(server)` first: once
the message has been read, the deadline no longer applies (storing it takes what it takes, and
a 421 after the spool accepted it would make the client send it twice).

A session over its client's cap hears `421 4.7.0` before the greeting and never starts; a DATA
phase past the deadline hears `421 4.4.2` and the connection closes, so its partial message is
never handed to the handler (nothing is queued).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aiosmtpd.smtp import SMTP

from mailfleet_sender import smtp_data

log = logging.getLogger(__name__)

TOO_MANY_FROM_CLIENT = b"421 4.7.0 Too many connections from your address, try again later\r\n"
DATA_TOO_SLOW = b"421 4.4.2 Message not received in time, closing connection\r\n"


class ClientCounter:
    """Open sessions per remote address; an address leaves the map with its last session, so
    its size is bounded by the open sessions (which the listener's total cap bounds)."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def admit(self, address: str, limit: int) -> bool:
        n = self._open.get(address, 0)
        if n >= limit:
            return False
        self._open[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self._open.get(address, 0) - 1
        if n > 0:
            self._open[address] = n
        else:
            self._open.pop(address, None)

    def __len__(self) -> int:
        return len(self._open)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one new session is held to (read from the config when the session starts)."""

    clients: ClientCounter
    per_client: int
    data_timeout: float
    """Seconds from the DATA command to the end of the message."""


_COMMAND_NAMES: dict[type, list[str]] = {}
"""Session class -> its command and AUTH method names (`LimitedSMTP.__dir__`)."""


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


class LimitedSMTP(smtp_data.BlockDataSMTP):
    """aiosmtpd's SMTP session with a per-client cap and a total DATA deadline (and DATA read
    in blocks: `smtp_data`)."""

    def __init__(self, handler: Any, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._client: str | None = None
        self._refused = False
        self._data_timer: asyncio.TimerHandle | None = None

    def __dir__(self) -> list[str]:
        """Only the `smtp_*` and `auth_*` names. aiosmtpd builds a session's command and AUTH
        tables from `dir(self)` with `inspect.getmembers`, which also reads every other
        attribute and property of the session: about half of the CPU of setting one up,
        paid once per connection (and submission clients often send one message per
        connection). The tables come out the same (tests/unit/sender/test_smtp_data.py)."""
        names = _COMMAND_NAMES.get(type(self))
        if names is None:
            names = [n for n in super().__dir__() if n.startswith(("smtp_", "auth_"))]
            _COMMAND_NAMES[type(self)] = names
        return names

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._client is None and not self._refused:  # not the STARTTLS re-entry
            address = _address(transport)
            if not self._limits.clients.admit(address, self._limits.per_client):
                self._refused = True
                log.info("smtp session refused: too many from one client",
                         extra={"client": address, "limit": self._limits.per_client})
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(TOO_MANY_FROM_CLIENT)
                transport.close()
                return  # aiosmtpd never starts this session
            self._client = address
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.data_complete()
        if self._client is not None:
            self._limits.clients.release(self._client)
            self._client = None
        super().connection_lost(error)

    @property
    def refused(self) -> bool:
        """Turned away at connect (over its client's cap): no session was started."""
        return self._refused

    async def smtp_DATA(self, arg: str) -> None:
        loop = asyncio.get_running_loop()
        self._data_timer = loop.call_later(self._limits.data_timeout, self._data_too_slow)
        try:
            await super().smtp_DATA(arg)
        finally:
            self.data_complete()

    def data_complete(self) -> None:
        """The message is read (or the phase ended): the deadline no longer applies."""
        if self._data_timer is not None:
            self._data_timer.cancel()
            self._data_timer = None

    def _data_too_slow(self) -> None:
        self._data_timer = None
        log.info("smtp DATA deadline passed: closing the session",
                 extra={"client": self._client, "seconds": self._limits.data_timeout})
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(DATA_TOO_SLOW)
        if transport is not None:
            transport.close()  # connection_lost cancels the DATA reader: nothing is handed on


def data_complete(server: SMTP) -> None:
    """Called first in a handler's `handle_DATA` (see the module docstring)."""
    if isinstance(server, LimitedSMTP):
        server.data_complete()
