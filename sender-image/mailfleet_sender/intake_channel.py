"""What the main process and an intake worker (`intake_workers`, `intake_worker`) say to each
other over the Unix socket pair that joins them: length-prefixed pickles of the dataclasses
below. Pickle is safe here: both ends are the same program, started by each other, and the
socket pair exists in those two processes only (nothing listens on a path or a port).

Main to worker: `Setup` once, then `Reply` to each request, `Accepting` (drain and undrain,
acknowledged with `Ack`), `Reconfigure` and `Stop`. Worker to main: `Ready` once, `Store` (a
checked message to put on disk), `Lookup` (a hand-off key while draining), `Counts` (its
counter increments since the last ones).
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import struct

from mailfleet_sender import config, intake, messages, spool

HEADER = struct.Struct("!I")


@dataclasses.dataclass(frozen=True)
class Setup:
    index: int
    cfg: config.SenderConfig
    hostname: str
    host: str
    smtp_port: int
    http_port: int
    accepting: bool
    grace: float
    share: int
    """Processes that share the listeners (the per-process part of `maxConnections`)."""


@dataclasses.dataclass(frozen=True)
class Ready:
    pid: int


@dataclasses.dataclass(frozen=True)
class Store:
    id: int
    message: spool.NewMessage
    via: str
    started: bool


@dataclasses.dataclass(frozen=True)
class Lookup:
    id: int
    key: str


@dataclasses.dataclass(frozen=True)
class Reply:
    id: int
    result: intake.Queued | messages.Rejection | int | None


@dataclasses.dataclass(frozen=True)
class Accepting:
    seq: int
    accepting: bool


@dataclasses.dataclass(frozen=True)
class Ack:
    seq: int


@dataclasses.dataclass(frozen=True)
class Reconfigure:
    cfg: config.SenderConfig


@dataclasses.dataclass(frozen=True)
class Stop:
    grace: float


@dataclasses.dataclass(frozen=True)
class Counts:
    rejected: dict[tuple[str, str], float]
    """(via, reason) -> submissions refused in the worker since its last `Counts`."""


def send(writer: asyncio.StreamWriter, item: object) -> None:
    body = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(HEADER.pack(len(body)) + body)


async def receive(reader: asyncio.StreamReader) -> object | None:
    """The next item; None once the other end has closed (or died)."""
    try:
        head = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    item: object = pickle.loads(body)
    return item
