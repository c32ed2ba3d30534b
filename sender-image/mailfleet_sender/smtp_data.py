"""The DATA phase read in blocks, not line by line: aiosmtpd's own `smtp_DATA` awaits one
`readuntil(CRLF)` per line (~70 for a 5 KB message), the largest share of the sender's CPU per
message after connection setup (docs/sender.md "Performance"). `BlockDataSMTP` overrides
`smtp_DATA`, the method aiosmtpd dispatches DATA to, and keeps its replies and checks: HELO
and AUTH first, 503 without RCPT, 501 with an argument, 354, then 552 over `data_size_limit`
or 500 for a line over `line_length_limit` (both only after the final dot, as RFC 5321
4.2.5 implies), dot-unstuffing (RFC 5321 4.5.2), and the handler's `handle_DATA`.

Ending: only <CRLF>.<CRLF> ends the data, the CRLF that ends the DATA command included (an
empty message is "." alone), exactly as aiosmtpd; `intake` refuses bare CR and LF anyway.
Nothing after the final dot is consumed: a pipelining client's next command stays in the
reader. The reader searches its own buffer for the terminator (`readuntil`) and, where the
terminator may straddle what was already taken, takes only the bytes that could complete it
(`overlap`), so the read never runs past the end of the message.

Difference: when a message has both a line too long and too many bytes, the reply is 552
(aiosmtpd answers for whichever it met first); either way nothing is queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from aiosmtpd.smtp import MISSING, SMTP, syntax

log = logging.getLogger(__name__)

TERMINATOR = b"\r\n.\r\n"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"


def overlap(tail: bytes) -> int:
    """Length of the longest end of `tail` that begins the terminator (0 to 4): so many of
    its bytes may already have been taken."""
    for k in range(min(len(TERMINATOR) - 1, len(tail)), 0, -1):
        if tail.endswith(TERMINATOR[:k]):
            return k
    return 0


def unstuff(content: bytes) -> bytes:
    """Remove the leading dot of every line (RFC 5321 4.5.2 transparency)."""
    if b"\r\n." not in content and not content.startswith(b"."):
        return content
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]


def longest_line(content: bytes) -> int:
    """Longest line with its CRLF, as aiosmtpd measures it (before unstuffing)."""
    return max(map(len, content.split(b"\r\n"))) + 2


@dataclasses.dataclass(frozen=True)
class Data:
    content: bytes | None
    """The message (unstuffed); None when refused."""
    refusal: str | None = None


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> Data:
    """Read up to and including the terminator; keep at most `size_limit` bytes."""
    kept = bytearray(b"\r\n")  # the DATA command's own CRLF: a first line "." ends the data
    tail = b"\r\n"
    total = 0
    too_much = False
    while True:
        k = overlap(tail)
        if k:
            piece = await reader.readexactly(len(TERMINATOR) - k)
            done = piece == TERMINATOR[k:]
        else:
            try:
                piece = await reader.readuntil(TERMINATOR)
                done = True
            except asyncio.LimitOverrunError as error:  # the reader's limit: take a block
                piece = await reader.readexactly(error.consumed)
                done = False
        total += len(piece)
        tail = (tail + piece)[-(len(TERMINATOR) - 1):]
        if not too_much:
            if size_limit and total > size_limit + 3:  # 3: the final ".\r\n"
                too_much = True
                kept = bytearray()  # not kept past the limit: memory stays bounded
            else:
                kept += piece
        if done:
            break
    if too_much:
        return Data(None, TOO_MUCH)
    content = bytes(kept[2 : len(kept) - 3])
    if longest_line(content) > line_limit:
        return Data(None, TOO_LONG)
    return Data(unstuff(content))


class BlockDataSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's session with `smtp_DATA` reading blocks (module docstring)."""

    @syntax("DATA")  # type: ignore[misc]
    async def smtp_DATA(self, arg: str) -> None:
        if self._decode_data:  # not how mailfleet runs: aiosmtpd's reader decodes
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(
                self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            return  # the client closed the connection: nothing is handed on
        if data.content is None or data.refusal is not None:
            await self.push(data.refusal or TOO_MUCH)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = data.content
        self.envelope.original_content = data.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)
