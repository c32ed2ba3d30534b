"""`python -m mailfleet_sandbox.demo` (what `make demo` runs): start the sandbox, apply the
CRDs and the sandbox samples with kubectl, send a campaign, run the failure scenes, and print
the report (also written to demo-report/: report.md, warmup.svg, summary.json).

Exit status 0 when every scene passed, 1 otherwise (the report says which check failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from mailfleet_sandbox import event_scenes, report, scenes, transport_scenes, world
from mailfleet_sandbox.kube.errors import ApiError

SceneStep = tuple[str, Callable[[], Awaitable[scenes.SceneResult]]]


class Progress:
    """One status line, refreshed while a scene runs (plain lines when not a terminal)."""

    def __init__(self, sandbox: world.SandboxWorld, ledger: scenes.Ledger,
                 out: TextIO = sys.stdout) -> None:
        self.sandbox, self.ledger, self.out = sandbox, ledger, out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.title = ""
        self.scene_started = 0.0

    def _line(self) -> str:
        received = len(self.sandbox.fleet.messages)
        accepted = len(self.ledger.accepted)
        holders = self.sandbox_ips()
        return (f"  … {self.title} {time.monotonic() - self.scene_started:5.1f}s | accepted "
                f"{accepted} received {received} | {holders}")

    def sandbox_ips(self) -> str:
        with contextlib.suppress(LookupError, ApiError):
            return " ".join(f"{ip.rsplit('.', 1)[1]}:{pod.rsplit('-', 1)[-1]}"
                            for ip, pod in sorted(self.sandbox.ip_holders().items()))
        return ""

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.tty:
                self.out.write("\r" + self._line()[:110].ljust(110))
                self.out.flush()

    def start_scene(self, title: str) -> None:
        self.title, self.scene_started = title, time.monotonic()
        if not self.tty:
            self.out.write(f"▶ {title}\n")
            self.out.flush()
        if self._task is None:
            self._task = asyncio.create_task(self._refresh())

    def end_scene(self, result: scenes.SceneResult) -> None:
        mark = "-" if result.outcome == "skipped" else "✔" if result.ok else "✘"
        timings = ", ".join(f"{k} {v}" for k, v in result.timings.items())
        extra = f"; {timings}" if timings else ""
        line = f"{mark} {result.title} ({result.duration_s:.1f}s{extra})"
        if self.tty:
            self.out.write("\r" + " " * 110 + "\r")
        self.out.write(line + "\n")
        for failure in result.failures():
            self.out.write(f"    ✘ {failure}\n")
        if result.skipped:
            self.out.write(f"    skipped: {result.skipped}\n")
        self.out.flush()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def run_demo(out_dir: Path, root: Path, day_seconds: float, count: int,
                   only: frozenset[str] = frozenset()) -> int:
    started = time.monotonic()
    from mailfleet_sandbox import control_plane

    chosen = control_plane.default_control_plane()
    if chosen == "emulator" and not control_plane.binaries_built():
        print(control_plane.NOT_BUILT_NOTICE, flush=True)
    plane = ("the real Kubernetes control plane " + control_plane.kubernetes_version()
             if chosen == "kubernetes" else "the API emulator")
    settings = world.WorldSettings(root=root, warmup_day_seconds=day_seconds,
                                   control_plane=chosen, webhook_receiver=True)
    print(f"mailfleet demo: starting the sandbox under {root} ({plane}, 3 nodes, DNS, "
          "4 simulated providers, the operator)", flush=True)
    async with world.SandboxWorld(settings) as sandbox:
        print(f"  kubeconfig: {sandbox.kubeconfig}  (kubectl --kubeconfig {sandbox.kubeconfig} "
              "get sp,ipw,da,pods -n mail)", flush=True)
        ledger = scenes.Ledger()
        watcher = asyncio.create_task(scenes.watch_quotas(sandbox, ledger))
        progress = Progress(sandbox, ledger)
        steps: list[SceneStep] = [
            ("The fleet comes up", lambda: scenes.fleet_up(sandbox)),
            ("Campaign", lambda: scenes.campaign(sandbox, ledger, count=count)),
            ("Warm-up", lambda: scenes.warmup_quotas(sandbox, ledger)),
            ("Sender killed", lambda: scenes.sender_killed(sandbox, ledger)),
            ("Node failed", lambda: scenes.node_failed(sandbox, ledger)),
            ("IP blocklisted", lambda: scenes.blocklisted(sandbox, ledger)),
            ("DKIM rotation", lambda: scenes.dkim_rotation(sandbox, ledger)),
            ("Suppression", lambda: scenes.suppression(sandbox, ledger)),
            ("Gateway mode", lambda: scenes.gateway_mode(sandbox, ledger)),
            ("MTA-STS enforce", lambda: transport_scenes.mta_sts_enforce(sandbox, ledger)),
            ("Events and engagement",
             lambda: event_scenes.events_and_engagement(sandbox, ledger)),
            ("Accounting", lambda: scenes.accounting(sandbox, ledger)),
        ]
        if only:  # the fleet always comes up first; then the scenes asked for, in order
            steps = [steps[0]] + [s for s in steps[1:] if s[0] in only]
        results: list[scenes.SceneResult] = []
        try:
            for title, step in steps:
                progress.start_scene(title)
                result = await step()
                progress.end_scene(result)
                results.append(result)
                if result.name == "fleet_up" and not result.ok:
                    break  # nothing else can run without a fleet
        finally:
            await progress.stop()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        figures = scenes.summarize(sandbox, ledger)
        summary = report.build_summary(results, figures, total_s=time.monotonic() - started,
                                       day_seconds=day_seconds, control_plane=plane)
        paths = report.write_report(out_dir, summary)
        ledger_file = out_dir / "submissions.jsonl"
        ledger_file.write_text("".join(json.dumps(dataclasses.asdict(s)) + "\n"
                                       for s in ledger.sent))
        paths.append(ledger_file)
        print(report.render_console(summary))
        print("report: " + ", ".join(str(p) for p in paths))
        if not summary["ok"]:
            print(f"logs of the pods and the operator: {sandbox.root / 'nodes' / 'logs'}")
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailfleet_sandbox.demo",
                                     description="run the mailfleet demo in the sandbox")
    parser.add_argument("--out", type=Path, default=Path("demo-report"),
                        help="where report.md, warmup.svg and summary.json go")
    parser.add_argument("--root", type=Path, default=Path(".sandbox"),
                        help="the sandbox's working directory (state.json, logs, records)")
    parser.add_argument("--day-seconds", type=float, default=12.0,
                        help="length of a warm-up day")
    parser.add_argument("--messages", type=int, default=150,
                        help="size of the campaign")
    parser.add_argument("--scenes", default="",
                        help="comma-separated scene titles to run after the fleet comes up "
                             "(default: all), e.g. 'Events and engagement,Accounting'")
    args = parser.parse_args(argv)
    only = frozenset(t.strip() for t in args.scenes.split(",") if t.strip())
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    return asyncio.run(run_demo(args.out, args.root, args.day_seconds, args.messages, only))


if __name__ == "__main__":
    sys.exit(main())
