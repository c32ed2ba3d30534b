"""Failover of an egress IP in the whole sandbox, one failure at a time (issue 14 item 5).

    bench/failover.py --scenario killed|frozen|partitioned|api-blip|leader-killed
                      [--settings default|aggressive] [--rate 25] [--control-plane ...]

Starts the sandbox world (the real control plane when `make kube` built it, else the
emulator) with two operator replicas behind the operator fault proxy, a SendingPool with two
egress IPs, two active pods and a standby, and mail submitted at `--rate` per second for the
whole run; causes the failure to the holder of one IP (see
`mailfleet_sandbox.failover_scenarios`) and keeps mail flowing until the IP serves again from
another pod (api-blip: for an observation window) and everything accepted is delivered.

Last line, one JSON object: scenario, control_plane, settings (lease_duration,
renew_interval, skew, pod_admin_timeout, unhealthy_after, leader timings), `failover_s`
(failure to the first message from the IP sent by another pod, as the receivers recorded it;
null when no failover happened, `failover_note` says whether one was expected), `pause_s`
(longest silence of the IP), `overlap_s` (longest time two pods sent from one IP) and `lost`
(accepted messages neither delivered nor bounced by the end). Goals with the default
settings: killed and frozen under 10 s, api-blip no failover, overlap_s 0 and lost 0 always.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

from mailfleet_sandbox import control_plane, failover_scenarios, scenes
from mailfleet_sandbox.world import SandboxWorld


async def measure(scenario: str, settings: str, rate: float, plane: str) -> dict[str, object]:
    prof = failover_scenarios.profile(settings)
    root = Path(tempfile.mkdtemp(prefix="mailfleet-failover-"))
    async with SandboxWorld(failover_scenarios.world_settings(root, prof, plane)) as world:
        print(f"sandbox on {world.control_plane} at {root}", file=sys.stderr)
        await failover_scenarios.start_pool(world, prof)
        outcome = await failover_scenarios.run_scenario(world, scenes.Ledger(), scenario, prof,
                                                        rate=rate)
    for line in failover_scenarios.summary_lines(outcome):
        print(line)
    return outcome.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", required=True, choices=failover_scenarios.SCENARIOS)
    parser.add_argument("--settings", default="default", choices=("default", "aggressive"))
    parser.add_argument("--rate", type=float, default=25.0, help="submissions per second")
    parser.add_argument("--control-plane", default="", choices=("", "kubernetes", "emulator"),
                        help="default: kubernetes when built (make kube), else emulator")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    plane = args.control_plane or ("kubernetes" if control_plane.binaries_built()
                                   else "emulator")
    result = asyncio.run(measure(args.scenario, args.settings, args.rate, plane))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
