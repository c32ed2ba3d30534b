"""Running a process under strace and reading its log back: which write reached which file or
socket, and when a file was flushed to the disk (fsync, fdatasync).

Why strace: a SIGKILL test cannot see a missing fsync (the page cache outlives the process),
but the order of the syscalls can. strace follows every thread (`-f`) into one log, and its
order is causal: a thread stopped at the end of an fsync stays stopped until strace has
written that line, so whatever the thread causes afterwards (the reply to the client) comes
later in the log.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

WRITES = ("write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg")
SYNCS = ("fsync", "fdatasync")
TRACED = (*WRITES, *SYNCS, "sync_file_range")
MISSING = ("strace is missing: the durability tests need it (Debian package strace; "
           "`make test` installs it as root with apt-get)")


def strace_argv(log: Path) -> list[str]:
    """The wrapper that runs a command under strace, writing every traced call to `log`.
    Fails (never skips) when strace is not installed: durability would go unchecked."""
    found = shutil.which("strace") or ("/usr/bin/strace" if Path("/usr/bin/strace").exists()
                                       else None)
    assert found is not None, MISSING
    return [found, "-f", "--seccomp-bpf", "-y", "-s", "65536", "-qq",
            "-e", "trace=" + ",".join(TRACED), "-o", str(log), "--"]


@dataclasses.dataclass(frozen=True)
class Call:
    """One syscall: where its entry and its exit sit in the log (equal unless another
    thread's lines came between), the file or socket of its first argument, and the text of
    the arguments (strings as strace escapes them)."""

    name: str
    pid: int
    path: str
    arguments: str
    result: str
    entered: int
    exited: int


_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_START = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\w+)(?:\s+\w+\s+\([^()]*\))?$")
_FD = re.compile(r"^\d+<(.*?)>(?:,|\s*$)")


def _split(rest: str) -> tuple[str, str]:
    """`args) = result` into its two parts."""
    found = _RESULT.search(rest)
    if found is None:
        return rest, "?"
    return rest[: found.start()], found.group(1)


def parse(lines: Iterable[str]) -> list[Call]:
    """The completed calls of an `strace -f -y` log, in the order they were entered."""
    pending: dict[int, tuple[str, str, int]] = {}
    calls: list[Call] = []
    for index, raw in enumerate(lines):
        line = _LINE.match(raw.rstrip("\n"))
        if line is None:
            continue
        pid, rest = int(line.group(1)), line.group(2)
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            if pid not in pending:
                continue
            name, arguments, entered = pending.pop(pid)
            more, result = _split(resumed.group(2))
            calls.append(_call(name, pid, arguments + more, result, entered, index))
            continue
        start = _START.match(rest)
        if start is None:  # signals, exits
            continue
        name, tail = start.group(1), start.group(2)
        if tail.endswith("<unfinished ...>"):
            pending[pid] = (name, tail[: -len("<unfinished ...>")].rstrip(), index)
            continue
        arguments, result = _split(tail)
        calls.append(_call(name, pid, arguments, result, index, index))
    calls.sort(key=lambda call: call.entered)
    return calls


def _call(name: str, pid: int, arguments: str, result: str, entered: int, exited: int) -> Call:
    fd = _FD.match(arguments)
    return Call(name=name, pid=pid, path=fd.group(1) if fd else "", arguments=arguments,
                result=result, entered=entered, exited=exited)


def read(log: Path) -> list[Call]:
    return parse(log.read_text(errors="replace").splitlines())


def is_file(call: Call, database: str) -> bool:
    """A call on the SQLite database `database` (a file name) or its WAL or rollback journal."""
    name = Path(call.path).name
    return name in (database, f"{database}-wal", f"{database}-journal")


def unsynced_reply(
    calls: Sequence[Call], *, database: str, data: str, reply: str
) -> str | None:
    """Why the reply `reply` (text written on a socket) was not preceded by the data `data`
    reaching the disk: written to `database` (or its WAL) and then fsynced before the reply
    was written. None when it was. The reply is the first socket write containing `reply`
    after the first write of `data`; a sync must finish after that first write (the commit
    that stored the data) and before the reply. Later writes that contain `data` are pages
    of the stored row rewritten by other transactions (the dispatcher claiming the row):
    they may race the reply, the data was durable before them."""
    data_writes = [c for c in calls if c.name in WRITES and is_file(c, database)
                   and data in c.arguments]
    if not data_writes:
        return f"{data!r} was never written to {database}"
    first = data_writes[0]
    replies = [c for c in calls if c.name in WRITES and c.path.startswith("socket:")
               and reply in c.arguments and c.entered > first.entered]
    if not replies:
        return f"no reply {reply!r} was written after {data!r} reached {database}"
    answer = replies[0]
    synced = [c for c in calls if c.name in SYNCS and is_file(c, database) and c.result == "0"
              and first.exited < c.exited < answer.entered]
    if synced:
        return None
    return (f"{reply!r} was written (log line {answer.entered + 1}) without an fsync of "
            f"{database} after {data!r} was written to it (line {first.exited + 1})")
