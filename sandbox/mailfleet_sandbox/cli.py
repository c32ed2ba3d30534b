"""`mailfleet sandbox ...`: run pieces of the local world from the command line.

Each piece is a sub-subcommand registered in SANDBOX_COMMANDS, so later pieces (`up`,
`down`, the node agent) add an entry and a `configure_<name>` function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path


def configure_api(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--kubeconfig", type=Path, default=Path(".sandbox/kubeconfig"),
                        help="where to write a kubeconfig for kubectl")
    parser.add_argument("--db", type=Path, default=None,
                        help="SQLite file to keep objects across restarts (default: memory)")
    parser.set_defaults(func=run_api)


def run_api(args: argparse.Namespace) -> int:
    from mailfleet_sandbox.kube import ApiServer

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with ApiServer(host=args.host, port=args.port, db_path=args.db) as api:
            path = api.write_kubeconfig(args.kubeconfig)
            print(f"sandbox API listening on {api.url}; kubeconfig: {path}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


SANDBOX_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {
    "api": (configure_api, "run the Kubernetes API emulator"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sandbox_command", metavar="SANDBOX_COMMAND")
    for name, (configure_one, help_text) in SANDBOX_COMMANDS.items():
        configure_one(sub.add_parser(name, help=help_text))
