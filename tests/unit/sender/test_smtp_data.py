"""The block DATA reader: whatever the chunking of the stream, it returns the message aiosmtpd's
line reader would (dot-unstuffed, ended only by <CRLF>.<CRLF>), never consumes what follows
the final dot, and refuses too many bytes or a line too long only once the data has ended."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_sender import smtp_data

LINE_LIMIT = 1001
LINE = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def stuffed(lines: list[bytes]) -> bytes:
    """What a client sends for these lines: dot-stuffed, then the terminator."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


async def read(stream: bytes, chunks: list[int], *, size_limit: int | None = None,
               ) -> tuple[smtp_data.Data, bytes]:
    """Feed `stream` in pieces of the given sizes (then the rest) to a reader with aiosmtpd's
    limit; return what the reader made of it and what it left unread."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        at = 0
        for size in chunks:
            reader.feed_data(stream[at:at + size])
            at += size
            await asyncio.sleep(0)
        reader.feed_data(stream[at:])
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    data = await smtp_data.read_data(reader, size_limit=size_limit, line_limit=LINE_LIMIT)
    await feeder
    return data, await reader.read()


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(LINE, max_size=40), chunks=st.lists(st.integers(1, 300), max_size=60))
def test_any_chunking_gives_the_message_and_leaves_the_next_command(
    lines: list[bytes], chunks: list[int]
) -> None:
    after = b"MAIL FROM:<next@example.test>\r\n"
    data, rest = asyncio.run(read(stuffed(lines) + after, chunks))
    assert data.refusal is None
    assert data.content == b"".join(line + b"\r\n" for line in lines)
    assert rest == after


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...x\r\n.\r\n", b"..x\r\n"),
        (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a.\r\n.\r\n", b"a.\r\n"),
    ],
    ids=[
        "a dot alone right after DATA is an empty message",
        "an empty line then the dot is one empty line",
        "one line then the dot",
        "a stuffed lone dot is a line holding a dot",
        "only the first dot of a line is removed",
        "a line that began with a dot loses it",
        "a dot ending a line does not end the data",
    ],
)
def test_edges_of_the_terminator(stream: bytes, content: bytes) -> None:
    for size in (1, 2, 3, 5, len(stream)):
        data, rest = asyncio.run(read(stream + b"QUIT\r\n", [size] * len(stream)))
        assert data.content == content
        assert rest == b"QUIT\r\n"


def test_too_many_bytes_is_refused_after_the_dot_without_keeping_them() -> None:
    stream = b"x" * 100 + b"\r\n"
    data, rest = asyncio.run(read(stream * 50 + b".\r\nQUIT\r\n", [700] * 10, size_limit=1000))
    assert data == smtp_data.Data(None, smtp_data.TOO_MUCH)
    assert rest == b"QUIT\r\n"


def test_the_size_limit_counts_the_message_as_sent() -> None:
    line = b"y" * 98 + b"\r\n"  # 100 bytes
    ok, _ = asyncio.run(read(line * 10 + b".\r\n", [], size_limit=1000))
    assert ok.content == line * 10
    over, _ = asyncio.run(read(line * 10 + b"z\r\n.\r\n", [], size_limit=1000))
    assert over.refusal == smtp_data.TOO_MUCH


def test_a_line_over_the_limit_is_refused_and_one_at_it_passes() -> None:
    at_limit = b"a" * (LINE_LIMIT - 2) + b"\r\n"
    ok, _ = asyncio.run(read(at_limit + b".\r\n", [400] * 5))
    assert ok.content == at_limit
    over, rest = asyncio.run(read(b"b" + at_limit + b".\r\nQUIT\r\n", [400] * 5))
    assert over.refusal == smtp_data.TOO_LONG
    assert rest == b"QUIT\r\n"


def test_a_closed_connection_ends_the_read_without_a_message() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(read(b"Subject: cut\r\nhalf a bo", []))


def test_a_session_has_the_command_and_auth_tables_aiosmtpd_would_build() -> None:
    from aiosmtpd.smtp import SMTP
    from mailfleet_sender import feedback_smtp, session_limits, submission_smtp

    class Plain(SMTP):  # type: ignore[misc]
        """The same methods, introspected the way aiosmtpd does by default."""

    async def build() -> None:
        limits = session_limits.Limits(
            clients=session_limits.ClientCounter(), per_client=1, data_timeout=1.0)
        for cls in (submission_smtp.SubmissionSMTP, feedback_smtp.FeedbackSMTP):
            full = set(object.__dir__(cls)) | {n for c in cls.__mro__ for n in vars(c)}
            expected = sorted(n for n in full if n.startswith(("smtp_", "auth_")))
            session = session_limits.LimitedSMTP.__new__(cls)
            session_limits.LimitedSMTP.__init__(session, object(), limits=limits)
            assert sorted(session._smtp_methods) == sorted(
                n.removeprefix("smtp_") for n in expected if n.startswith("smtp_"))
            assert sorted(session._auth_methods) == sorted(Plain(object())._auth_methods)

    asyncio.run(build())
