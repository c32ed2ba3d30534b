"""Sender throughput, end to end: N messages of about 5 KB injected over SMTP (20 sessions) into
one sender process that DKIM-signs them (RSA-2048), spools them with fsync on, and delivers them
by MX lookup to a loopback sink. Prints accepted/s and delivered/s, then DKIM signs/s against
the raw OpenSSL RSA-2048 sign rate (through `cryptography`).

Reference: the same volume through a private Postfix instance (smtp-source in, relaying to
smtp-sink) when Postfix and its test tools are installed and the bench runs as root (else
null; nothing is installed by the bench). The instance lives in a temp dir (own queue, config,
maillog), listens on 127.0.0.1 only, keeps Postfix's default fsync durability, and is stopped
and removed even on error; a failure prints "postfix reference failed: <reason>".
Target: at least Postfix's end-to-end rate on the same machine (700-970 msg/s with 20 sessions,
one connection per message, on the shared 2-core reference VM), and DKIM signing at >= 80 % of
the raw sign rate.

The sender always runs as its own process (as in a pod), with `--processes` intake processes
(`submission.processes`; default this machine's CPU count, as a pod with that CPU limit). When
smtp-source and smtp-sink are installed, the sender run uses exactly the Postfix run's load:
smtp-source (20 sessions, same options) into the sender's SMTP submission, the sender delivering
to smtp-sink, so both sides pay for the same injector and sink. Without them (CI) a minimal
asyncio injector and sink in the bench process stand in. smtp-source's own message carries From,
To, Date and Message-Id, all the sender requires. Last line: one JSON object.

    python bench/sender_throughput.py --messages 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sender import dkim_signing

SESSIONS = 20
DOMAIN = "bench.test"
SINK_DOMAIN = "sink.test"


def make_message(n: int) -> bytes:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n"
    body = line * 64  # ~5 KB
    head = (
        f"From: Bench <bench@{DOMAIN}>\r\nTo: user{n}@{SINK_DOMAIN}\r\n"
        f"Subject: bench message {n}\r\nMessage-ID: <bench-{n}@{DOMAIN}>\r\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    return head + body


class Sink(asyncio.Protocol):
    """A minimal SMTP server that accepts everything (smtp-sink's job)."""

    delivered = 0
    last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.in_data = False
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                Sink.delivered += 1
                Sink.last = time.monotonic()
                self.transport.write(b"250 2.0.0 OK\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.transport.write(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # so an empty body still ends on CRLF.CRLF
                self.transport.write(b"354 go\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 OK\r\n")


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def inject(port: int, messages: list[bytes], stamps: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_reply(reader)
    writer.write(b"EHLO injector.test\r\n")
    await read_reply(reader)
    for data in messages:
        rcpt = data.split(b"To: ", 1)[1].split(b"\r\n", 1)[0]
        writer.write(b"MAIL FROM:<bench@" + DOMAIN.encode() + b">\r\n")
        await read_reply(reader)
        writer.write(b"RCPT TO:<" + rcpt + b">\r\n")
        await read_reply(reader)
        writer.write(b"DATA\r\n")
        await read_reply(reader)
        writer.write(data + b".\r\n")
        reply = await read_reply(reader)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"refused: {reply!r}")
        stamps.append(time.monotonic())
    writer.write(b"QUIT\r\n")
    writer.close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(root: int) -> float:
    """CPU seconds (user + system, reaped children included) of `root` and every process
    under it, from /proc: the sender is one process, Postfix a master and its daemons."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(f) for f in fields[11:15])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0) for pid in tree) / tick


def per_1000(cpu: float | None, n: int) -> float | None:
    return None if cpu is None else round(cpu / n * 1000, 3)


async def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])  # noqa: ASYNC240 - failure path
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("sender not ready")


def postfix_tools() -> bool:
    return all(shutil.which(tool) is not None for tool in POSTFIX_TOOLS)


def smtp_source_argv(n: int, port: int) -> list[str]:
    """The same injector for both runs: one connection per message, smtp-source's own ~5 KB
    message (From: <bench@bench.test>, To, Date, Message-Id, 80-column body lines)."""
    return ["smtp-source", "-s", str(SESSIONS), "-l", "5120", "-m", str(n),
            "-f", f"bench@{DOMAIN}", "-t", f"user@{SINK_DOMAIN}", f"127.0.0.1:{port}"]


def start_smtp_sink(port: int) -> subprocess.Popen[bytes]:
    """smtp-sink counting deliveries on stdout ("-c"); it drops to `postfix` when root."""
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    return subprocess.Popen(
        ["smtp-sink", "-c", *user, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_dkim_key(path: Path) -> Path:
    """A fresh RSA-2048 DKIM key in PEM at `path`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return path


def sender_config(workdir: Path, dns: DNSServer, *, sink_port: int, key_file: Path,
                  ports: tuple[int, int, int], **extra: object) -> dict[str, object]:
    """The benches' sender: fsync on, RSA signing, delivering to the sink on loopback.
    `extra`: more top-level settings; a `submission` dict is merged into the ports'."""
    smtp_port, http_port, admin_port = ports
    submission = {"listenAddress": "127.0.0.1", "smtpPort": smtp_port,
                  "httpPort": http_port, "adminPort": admin_port}
    submission.update(extra.pop("submission", {}))  # type: ignore[call-overload]
    return {
        "spoolDir": str(workdir / "spool"),
        "spoolSync": "full",
        "submission": submission,
        "delivery": {"smtpPort": sink_port, "requireLease": False,
                     "messagesPerConnection": 10000, "connectionIdle": "5s"},
        "throttles": {"defaults": {"maxConnections": 20}},
        "dns": {"nameservers": [{"address": dns.host, "port": dns.port}]},
        "dkim": {"domains": [{"domain": DOMAIN, "keys": [
            {"selector": "bench", "algorithm": "rsa", "keyFile": str(key_file)}]}]},
        **extra,
    }


def start_sender(workdir: Path, cfg: dict[str, object]) -> tuple[subprocess.Popen[bytes], Path]:
    """The sender as its own process, as in a pod; its output goes to the returned log."""
    config_file = workdir / "sender.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    log = workdir / "sender.log"
    with log.open("wb") as log_handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailfleet_sender", "--config", str(config_file),
             "--log-level", "warning"],
            stdout=log_handle, stderr=log_handle,
            env={**os.environ, "POD_NAME": "bench", "POD_IP": "127.0.0.1"},
        )
    return proc, log


async def run_sender(
    n: int, workdir: Path, tools: bool, processes: int = 1
) -> tuple[float, float, float]:
    """accepted/s, delivered/s, and the sender's CPU seconds over the load (its intake
    workers included: they are its children)."""
    key_file = write_dkim_key(workdir / "dkim.pem")
    loop = asyncio.get_running_loop()
    sink: asyncio.AbstractServer | None = None
    sink_proc: subprocess.Popen[bytes] | None = None
    if tools:
        sink_port = free_port()
        sink_proc = start_smtp_sink(sink_port)
    else:
        sink = await loop.create_server(Sink, "127.0.0.1", 0)
        sink_port = int(sink.sockets[0].getsockname()[1])
    async with DNSServer("127.0.0.1") as dns:
        dns.set_records(SINK_DOMAIN, "MX", [f"10 mx.{SINK_DOMAIN}."])
        dns.set_records(f"mx.{SINK_DOMAIN}", "A", ["127.0.0.1"])
        smtp_port, http_port, admin_port = free_port(), free_port(), free_port()
        cfg = sender_config(
            workdir, dns, sink_port=sink_port, key_file=key_file,
            ports=(smtp_port, http_port, admin_port),
            submission={"allowUnauthenticated": True,  # loopback injector, no AUTH
                        "processes": processes},
        )
        proc, log = start_sender(workdir, cfg)
        try:
            await wait_ready(admin_port, proc, log)  # /readyz is on the admin listener
            cpu_before = cpu_seconds(proc.pid)
            if sink_proc is not None:
                start, accepted_at, delivered_at = await _load_with_tools(
                    n, smtp_port, sink_proc, proc, log)
            else:
                start, accepted_at, delivered_at = await _load_in_process(n, smtp_port)
            cpu = cpu_seconds(proc.pid) - cpu_before
        finally:
            stop(proc)
            if sink is not None:
                sink.close()
            if sink_proc is not None:
                stop(sink_proc)
    return n / (accepted_at - start), n / (delivered_at - start), cpu


async def _load_with_tools(
    n: int, smtp_port: int, sink: subprocess.Popen[bytes],
    proc: subprocess.Popen[bytes], log: Path,
) -> tuple[float, float, float]:
    """smtp-source in, smtp-sink out; the same processes and options as the Postfix run."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    counting = loop.run_in_executor(None, _sink_count, sink, n, 600.0)
    source = await asyncio.create_subprocess_exec(
        *smtp_source_argv(n, smtp_port),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await source.communicate()
    accepted_at = time.monotonic()
    if source.returncode != 0:
        raise RuntimeError(f"smtp-source exited {source.returncode}: {err.decode()[-500:]} "
                           f"{log.read_text()[-1000:]}")  # noqa: ASYNC240 - failure path
    counted = await counting
    delivered_at = time.monotonic()
    if counted < n:
        raise RuntimeError(f"smtp-sink counted {counted} of {n}")
    return start, accepted_at, delivered_at


async def _load_in_process(n: int, smtp_port: int) -> tuple[float, float, float]:
    """The fallback without Postfix's tools: the asyncio injector and sink of this module."""
    messages = [make_message(i) for i in range(n)]
    chunks = [messages[i::SESSIONS] for i in range(SESSIONS)]
    stamps: list[float] = []
    Sink.delivered = 0
    start = time.monotonic()
    await asyncio.gather(*(inject(smtp_port, c, stamps) for c in chunks if c))
    accepted_at = max(stamps)
    deadline = time.monotonic() + 600
    while Sink.delivered < n and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if Sink.delivered < n:
        raise RuntimeError(f"only {Sink.delivered} of {n} delivered")
    return start, accepted_at, Sink.last


def dkim_rates(seconds: float = 2.0) -> tuple[float, float]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = dkim_signing.SigningKey(domain=DOMAIN, selector="bench", key=key)
    message = make_message(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dkim_signing.sign_message(message, [signer], timestamp=1700000000)
        count += 1
    ours = count / (time.perf_counter() - start)
    data = b"x" * 600  # about the size of the canonical signed headers
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    raw = count / (time.perf_counter() - start)
    return ours, raw


POSTFIX_TOOLS = ("postfix", "postconf", "smtp-sink", "smtp-source")


def postfix_rate(n: int) -> tuple[float | None, float | None, str]:
    """The Postfix reference: smtp-source (20 sessions, ~5 KB) into a private Postfix instance
    relaying to smtp-sink, timed until smtp-sink has counted every message. Returns the rate
    (None when there is none), Postfix's CPU seconds over the run (master and daemons) and a
    one-line status, so a failed run is never reported as
    "not installed". Nothing is installed here: `apt-get install postfix` on the bench machine.
    """
    if not postfix_tools():
        return None, None, "postfix + smtp-sink: not installed"
    if os.geteuid() != 0:
        return None, None, "postfix + smtp-sink: skipped (Postfix's master must start as root)"
    try:
        with tempfile.TemporaryDirectory(prefix="mailfleet-postfix-") as tmp:
            rate, cpu = _run_postfix(n, Path(tmp))
    except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as exc:
        return None, None, f"postfix reference failed: {exc}"
    return rate, cpu, f"postfix + smtp-sink: {n} messages, delivered {rate:.0f}/s end to end"


def _master_cf(stock: str, smtpd_port: int) -> str:
    """The stock master.cf with chroot off everywhere (the temp queue has no chroot jail: no
    resolv.conf, no libraries) and smtpd moved to 127.0.0.1:<free port>."""
    out = []
    for line in stock.splitlines():
        fields = line.split()
        if line[:1].strip() and not line.startswith("#") and len(fields) >= 8:
            fields[4] = "n"  # chroot column
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{smtpd_port}"
            line = "  ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


def _main_cf(tmp: Path, sink_port: int) -> str:
    """A relay-only instance living in `tmp`: loopback only, no local delivery, logging to a
    file (there is no syslog in containers). Durability is Postfix's default: cleanup fsyncs
    the queue file before smtpd answers 250, the same promise as the sender's spoolSync=full.
    myhostname differs from smtp-sink's greeting name, or the smtp client would see a mail
    loop."""
    return "\n".join([
        "compatibility_level = 3.6",
        f"queue_directory = {tmp / 'queue'}",
        f"data_directory = {tmp / 'data'}",
        f"maillog_file = {tmp / 'maillog'}",
        f"maillog_file_prefixes = {tmp}",
        "mail_owner = postfix",
        "setgid_group = postdrop",
        "myhostname = mailfleet-bench.localdomain",
        "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4",
        "mydestination =",
        "local_transport = error:local delivery disabled",
        "alias_maps =",
        "alias_database =",
        "mynetworks = 127.0.0.0/8",
        f"relayhost = [127.0.0.1]:{sink_port}",
        f"default_destination_concurrency_limit = {SESSIONS}",
        "",
    ])


def _maillog_tail(tmp: Path, lines: int = 5) -> str:
    """The last problems Postfix logged: errors, and deliveries that did not go through."""
    try:
        text = (tmp / "maillog").read_text(errors="replace")
    except OSError:
        return ""
    bad = [line for line in text.splitlines()
           if any(word in line for word in ("fatal:", "error:", "panic:", "warning:"))
           or ("status=" in line and "status=sent" not in line)]
    return " | ".join(bad[-lines:])


def _on_tty(argv: list[str]) -> str:
    """Run argv with stderr on a pseudo-terminal and return what it wrote: Postfix commands
    print their diagnostics to stderr only when it is a tty (else to the log, which may be
    what is broken)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower,
                                stderr=follower)
        os.close(follower)
        follower = -1
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the command exited and closed the tty
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=60)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return b"".join(chunks).decode(errors="replace").strip()


def _postfix(conf: Path, tmp: Path, command: str) -> None:
    """Run `postfix -c conf <command>`; on failure, say why (from the log, else from the same
    command rerun on a tty)."""
    done = subprocess.run(["postfix", "-c", str(conf), command], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        reason = (done.stderr.strip() or _maillog_tail(tmp)
                  or _on_tty(["postfix", "-c", str(conf), command]) or "no diagnostics")
        raise RuntimeError(f"postfix {command} exited {done.returncode}: {reason}")


def _postfix_running(conf: Path) -> bool:
    return subprocess.run(["postfix", "-c", str(conf), "status"], capture_output=True,
                          timeout=30).returncode == 0


def _stop_postfix(conf: Path) -> None:
    """Stop the instance whatever state it is in: `stop` (which itself kills the process group
    after 5 s), then `abort`, then wait for the master to be gone before the temp dir goes."""
    for command in ("stop", "abort"):
        if not _postfix_running(conf):
            return
        subprocess.run(["postfix", "-c", str(conf), command], capture_output=True, timeout=60)
    deadline = time.monotonic() + 10
    while _postfix_running(conf) and time.monotonic() < deadline:
        time.sleep(0.1)


def _sink_count(sink: subprocess.Popen[bytes], n: int, seconds: float) -> int:
    """Follow smtp-sink's -c counters ("sess=.. quit=.. mesg=N" + CR) until N messages or the
    deadline; select() keeps a silent sink from blocking past the deadline."""
    assert sink.stdout is not None
    fd, tail, counted = sink.stdout.fileno(), b"", 0
    deadline = time.monotonic() + seconds
    while counted < n and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # smtp-sink died
        tail = (tail + chunk)[-256:]
        found = re.findall(rb"mesg=(\d+)", tail)
        if found:
            counted = max(counted, int(found[-1]))
    return counted


def _master_pid(tmp: Path) -> int:
    return int((tmp / "queue" / "pid" / "master.pid").read_text().split()[0])


def _run_postfix(n: int, tmp: Path) -> tuple[float, float]:
    tmp.chmod(0o755)  # the postfix user must reach data_directory inside it
    sink_port, smtpd_port = free_port(), free_port()
    conf = tmp / "etc"
    conf.mkdir()
    (tmp / "queue").mkdir(mode=0o755)  # `postfix start` creates the rest inside it
    # -d: the built-in default, readable even when the package was installed with "No
    # configuration" (no /etc/postfix/main.cf, on which plain `postconf` fails).
    stock = subprocess.run(["postconf", "-d", "-h", "config_directory"], check=True,
                           capture_output=True, text=True).stdout.strip()
    (conf / "master.cf").write_text(_master_cf((Path(stock) / "master.cf").read_text(),
                                               smtpd_port))
    (conf / "main.cf").write_text(_main_cf(tmp, sink_port))
    sink = start_smtp_sink(sink_port)
    try:
        _postfix(conf, tmp, "check")
        try:
            _postfix(conf, tmp, "start")
            master = _master_pid(tmp)
            cpu_before = cpu_seconds(master)
            start = time.monotonic()
            source = subprocess.run(
                smtp_source_argv(n, smtpd_port),
                capture_output=True, text=True, timeout=600,
            )
            if source.returncode != 0:
                raise RuntimeError(f"smtp-source exited {source.returncode}: "
                                   f"{source.stderr.strip()[-500:]} {_maillog_tail(tmp)}")
            counted = _sink_count(sink, n, 600)
            if counted < n:
                raise RuntimeError(f"smtp-sink counted {counted} of {n}: {_maillog_tail(tmp)}")
            rate = n / (time.monotonic() - start)
            return rate, cpu_seconds(master) - cpu_before
        finally:
            _stop_postfix(conf)
    finally:
        sink.terminate()
        try:
            sink.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1,
        help="the sender's submission.processes: what a pod with a CPU limit of this many "
             "CPUs runs (default: this machine's CPUs, as Postfix uses them all)",
    )
    args = parser.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="mailfleet-bench-") as tmp:
        tools = postfix_tools()
        accepted, delivered, cpu = asyncio.run(run_sender(n, Path(tmp), tools, args.processes))
    load = "smtp-source -> sender -> smtp-sink" if tools else "asyncio injector and sink"
    print(f"sender: {n} messages, accepted {accepted:.0f}/s, delivered {delivered:.0f}/s "
          f"end to end (RSA-2048 DKIM, fsync on, {SESSIONS} sessions, {load}, "
          f"{args.processes} intake processes)")
    reference, postfix_cpu, status = postfix_rate(n)
    print(status)
    ours, raw = dkim_rates()
    print(f"dkim: {ours:.0f} signs/s vs raw RSA-2048 {raw:.0f} signs/s ({ours / raw:.0%})")
    print(json.dumps({
        "messages": n,
        "accepted_per_s": round(accepted, 1),
        "delivered_per_s": round(delivered, 1),
        "load": "smtp-source/smtp-sink" if tools else "asyncio",
        "processes": args.processes,
        "postfix_delivered_per_s": None if reference is None else round(reference, 1),
        "cpu_s_per_1000": per_1000(cpu, n),
        "postfix_cpu_s_per_1000": per_1000(postfix_cpu, n),
        "dkim_signs_per_s": round(ours, 1),
        "openssl_signs_per_s": round(raw, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
