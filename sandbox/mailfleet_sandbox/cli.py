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


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so a long-running command can shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


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
        stop = _stop_on_signals()
        async with ApiServer(host=args.host, port=args.port, db_path=args.db) as api:
            path = api.write_kubeconfig(args.kubeconfig)
            print(f"sandbox API listening on {api.url}; kubeconfig: {path}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


def configure_up(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path(".sandbox"),
                        help="directory for state.json, kubeconfig, records and pod logs")
    parser.add_argument("--samples", action="store_true",
                        help="also apply crds/ and the sandbox samples with kubectl")
    parser.add_argument("--warmup-day-seconds", type=float, default=12.0,
                        help="length of a warm-up day in the sandbox")
    parser.add_argument("--control-plane", choices=("kubernetes", "emulator"), default=None,
                        help="the real kube-apiserver and controllers `make kube` built, or "
                             "the embedded API emulator (default: kubernetes when built)")
    parser.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    """Run the whole world until SIGINT/SIGTERM (or `mailfleet sandbox down`)."""
    import logging

    from mailfleet_sandbox import world

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    from mailfleet_sandbox import control_plane

    chosen = args.control_plane or control_plane.default_control_plane()
    if chosen == "emulator" and args.control_plane is None:
        print(control_plane.NOT_BUILT_NOTICE, flush=True)

    async def serve() -> None:
        stop = _stop_on_signals()
        settings = world.WorldSettings(root=args.root, control_plane=chosen,
                                       warmup_day_seconds=args.warmup_day_seconds)
        async with world.SandboxWorld(settings) as sandbox:
            if args.samples:
                await sandbox.apply_samples()
            state = sandbox.root / "state.json"
            print(f"sandbox up on the {sandbox.control_plane} control plane; "
                  f"kubeconfig: {sandbox.kubeconfig}\n"
                  f"  kubectl --kubeconfig {sandbox.kubeconfig} get sp,ipw,da,pods\n"
                  f"  state: {state} (DNS {sandbox.dns.address}, providers on port "
                  f"{sandbox.fleet.port}); stop with `mailfleet sandbox down` or Ctrl-C",
                  flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


def configure_down(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path(".sandbox"),
                        help="the directory `sandbox up` was given")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds to wait for the sandbox to stop")
    parser.set_defaults(func=run_down)


def run_down(args: argparse.Namespace) -> int:
    """Stop the sandbox whose state.json is under --root (SIGTERM to its process)."""
    import json
    import os
    import time

    state_file = args.root / "state.json"
    try:
        pid = int(json.loads(state_file.read_text())["pid"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"no sandbox running under {args.root} ({exc})")
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state_file.unlink(missing_ok=True)
        print(f"sandbox process {pid} was already gone; removed {state_file}")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            print("sandbox stopped")
            return 0
        time.sleep(0.2)
    print(f"sandbox process {pid} did not stop within {args.timeout:.0f}s")
    return 1


def _alive(pid: int) -> bool:
    """Whether `pid` still runs: an exited process its parent has not reaped yet (a zombie,
    e.g. `up` started by a test or a supervisor) has stopped."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


SANDBOX_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {
    "api": (configure_api, "run the Kubernetes API emulator"),
    "up": (configure_up, "run the whole sandbox world (API, nodes, DNS, providers, operator)"),
    "down": (configure_down, "stop the sandbox started by `up`"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sandbox_command", metavar="SANDBOX_COMMAND")
    for name, (configure_one, help_text) in SANDBOX_COMMANDS.items():
        configure_one(sub.add_parser(name, help=help_text))
