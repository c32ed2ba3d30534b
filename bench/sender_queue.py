"""A large queue in bounded memory: fill a spool with `--pending` deliveries (written through
the spool's own API, in batches), start the sender on it as its own process (as in a pod),
delivering to a loopback sink by MX lookup with DKIM signing and fsync on, and print one JSON
line:

  pending           deliveries in the spool at start
  rss_mb            the sender's peak resident memory (VmHWM) over the run
  ready_s           process start to /readyz answering 200
  first_delivery_s  process start to the first message at the sink
  delivered_per_s   deliveries per second over `--measure` seconds after the first one

Usage: python bench/sender_queue.py --pending 1000000 [--window 50000] [--measure 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sender import spool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sender_throughput import (
    DOMAIN,
    SINK_DOMAIN,
    Sink,
    free_port,
    sender_config,
    start_sender,
    stop,
    wait_ready,
    write_dkim_key,
)

BATCH = 5000
BODY = (
    f"From: bench@{DOMAIN}\r\nSubject: queued\r\nMessage-ID: <{{n}}@{DOMAIN}>\r\n\r\n"
    + "a queued campaign message\r\n" * 8
)


async def fill(directory: Path, pending: int) -> float:
    """Write `pending` one-recipient messages, all due now; returns the seconds it took."""
    store = spool.Spool.open(directory, sync="normal")
    store.start()
    began = time.monotonic()
    now = time.time() - 60
    try:
        for first in range(0, pending, BATCH):
            await store.submit_many([
                spool.NewMessage(
                    sender=f"bench@{DOMAIN}", recipients=(f"r{n}@{SINK_DOMAIN}",),
                    data=BODY.format(n=n).encode(), from_domain=DOMAIN,
                    message_id=f"<{n}@{DOMAIN}>", class_name="marketing", tier=None,
                    created=now,
                )
                for n in range(first, min(first + BATCH, pending))
            ])
        await store.flush()
    finally:
        store.close()
    return time.monotonic() - began


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(workdir: Path, pending: int, window: int, measure: float) -> dict[str, float]:
    key_file = write_dkim_key(workdir / "dkim.pem")
    fill_s = await fill(workdir / "spool", pending)
    print(f"filled {pending} in {fill_s:.1f}s", file=sys.stderr)
    loop = asyncio.get_running_loop()
    sink = await loop.create_server(Sink, "127.0.0.1", 0)
    sink_port = int(sink.sockets[0].getsockname()[1])
    Sink.delivered = 0
    async with DNSServer("127.0.0.1") as dns:
        dns.set_records(SINK_DOMAIN, "MX", [f"10 mx.{SINK_DOMAIN}."])
        dns.set_records(f"mx.{SINK_DOMAIN}", "A", ["127.0.0.1"])
        smtp_port, http_port, admin_port = free_port(), free_port(), free_port()
        cfg = sender_config(workdir, dns, sink_port=sink_port, key_file=key_file,
                            ports=(smtp_port, http_port, admin_port), spoolWindow=window)
        started = time.monotonic()
        proc, log = start_sender(workdir, cfg)
        try:
            try:
                await wait_ready(admin_port, proc, log)
            except TimeoutError:
                raise RuntimeError(log.read_text()[-3000:]) from None
            ready_s = time.monotonic() - started
            while Sink.delivered == 0:
                if proc.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError(log.read_text()[-3000:])
                await asyncio.sleep(0.01)
            first_s = time.monotonic() - started
            base, t0 = Sink.delivered, time.monotonic()
            await asyncio.sleep(measure)
            rate = (Sink.delivered - base) / (time.monotonic() - t0)
            rss = peak_rss_mb(proc.pid)
        finally:
            stop(proc)
            sink.close()
    return {
        "pending": pending, "rss_mb": round(rss, 1), "ready_s": round(ready_s, 2),
        "first_delivery_s": round(first_s, 2), "delivered_per_s": round(rate, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=50_000)
    parser.add_argument("--measure", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailfleet-queue-") as tmp:
        print(json.dumps(asyncio.run(run(Path(tmp), args.pending, args.window, args.measure))))


if __name__ == "__main__":
    main()
