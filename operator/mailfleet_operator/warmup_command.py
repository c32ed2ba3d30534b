"""`mailfleet warmup plan`: preview an IP warm-up schedule day by day, before applying it.

Reads IPWarmup objects from a YAML file (multi-document files are fine: only the IPWarmup
documents are planned) or a schedule given as flags, and prints the daily quota table with the
per-provider caps and a small bar chart, or JSON for scripts. A schedule that can never work
exits with status 2 and the path of the field to fix, the same words the operator would put
in the object's condition.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import pydantic
import yaml

from mailfleet_operator.api import common, ipwarmup
from mailfleet_operator.logic import schedules

CHART_WIDTH = 40


class UsageError(Exception):
    """Bad input: printed on stderr, exit status 2."""


@dataclasses.dataclass(frozen=True)
class PlanInput:
    """One schedule to plan, from a file document or from flags."""

    name: str | None
    pool: str | None
    schedule: schedules.Schedule
    target: int
    shares: tuple[schedules.ProviderShare, ...]


@dataclasses.dataclass(frozen=True)
class PlanRow:
    day: int
    quota: int
    cumulative: int
    provider_caps: dict[str, int]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="warmup_command", metavar="COMMAND")
    plan = sub.add_parser(
        "plan",
        help="print the day-by-day quota table of a warm-up schedule",
        description=(
            "Print the daily quota of a warm-up schedule, day 1 to the day it reaches its "
            "target, from IPWarmup objects in a YAML file (-f) or from flags."
        ),
    )
    plan.add_argument(
        "-f", "--file", help="YAML file with IPWarmup object(s); '-' reads standard input"
    )
    plan.add_argument("--name", help="with -f: plan only the IPWarmup of this name")
    kind = plan.add_mutually_exclusive_group()
    kind.add_argument("--linear", metavar="START,INCREMENT", help="e.g. 500,500")
    kind.add_argument("--exponential", metavar="START,FACTOR", help="e.g. 200,1.5")
    kind.add_argument("--steps", metavar="A,B,C", help="e.g. 500,1000,2500,5000")
    plan.add_argument("--target", type=int, help="daily volume at which warm-up is complete")
    plan.add_argument(
        "--provider-share",
        action="append",
        default=[],
        metavar="PROVIDER=SHARE",
        help="cap a provider's share of each day's quota, e.g. gmail=0.4 (repeatable)",
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan.add_argument("--no-chart", action="store_true", help="leave out the text bar chart")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "warmup_command", None) != "plan":
        print("usage: mailfleet warmup plan [-h] ...  (see mailfleet warmup plan --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        inputs = _inputs_from_file(args) if args.file else [_input_from_flags(args)]
    except UsageError as exc:
        print(f"mailfleet warmup plan: {exc}", file=sys.stderr)
        return 2
    plans = [(item, build_plan(item)) for item in inputs]
    if args.json:
        json.dump([plan_json(item, rows) for item, rows in plans], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for index, (item, rows) in enumerate(plans):
            if index:
                sys.stdout.write("\n")
            write_plan(sys.stdout, item, rows, chart=not args.no_chart)
    return 0


# --- inputs ------------------------------------------------------------------------------------


def _numbers(flag: str, text: str, count: int | None) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if (count is not None and len(parts) != count) or not all(parts):
        shape = {2: "two numbers separated by a comma"}.get(
            count or 0, "numbers separated by commas"
        )
        raise UsageError(f"{flag} {text!r}: expected {shape}")
    return parts


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a whole number") from None


def _float(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag}: {text!r} is not a finite number")
    return value


def _input_from_flags(args: argparse.Namespace) -> PlanInput:
    schedule: schedules.Schedule
    if args.linear:
        start, increment = _numbers("--linear", args.linear, 2)
        schedule = schedules.LinearSchedule(
            start=_int("--linear", start), increment=_int("--linear", increment)
        )
    elif args.exponential:
        start, factor = _numbers("--exponential", args.exponential, 2)
        schedule = schedules.ExponentialSchedule(
            start=_int("--exponential", start), factor=_float("--exponential", factor)
        )
    elif args.steps:
        steps = _numbers("--steps", args.steps, None)
        schedule = schedules.StepsSchedule(steps=tuple(_int("--steps", s) for s in steps))
    else:
        raise UsageError("give -f FILE, or one of --linear, --exponential, --steps with --target")
    if args.target is None:
        raise UsageError("--target is required with a schedule given as flags")
    shares = tuple(_share(text) for text in args.provider_share)
    problems = schedules.validate_schedule(
        schedule, args.target
    ) + schedules.validate_provider_shares(shares)
    if problems:
        raise UsageError(_problem_lines("the schedule can never work", problems))
    return PlanInput(name=None, pool=None, schedule=schedule, target=args.target, shares=shares)


def _share(text: str) -> schedules.ProviderShare:
    provider, sep, share = text.partition("=")
    if not sep or not provider.strip():
        raise UsageError(f"--provider-share {text!r}: expected PROVIDER=SHARE, e.g. gmail=0.4")
    return schedules.ProviderShare(
        provider=provider.strip(), max_share=_float("--provider-share", share)
    )


def _problem_lines(header: str, lines: Sequence[object]) -> str:
    return header + ":\n" + "\n".join(f"  {line}" for line in lines)


def _inputs_from_file(args: argparse.Namespace) -> list[PlanInput]:
    if args.linear or args.exponential or args.steps or args.target is not None:
        raise UsageError("give either -f FILE or a schedule as flags, not both")
    if args.provider_share:
        raise UsageError("--provider-share applies to flags; with -f set spec.providerShares")
    source = args.file
    try:
        if source == "-":
            documents = list(yaml.safe_load_all(sys.stdin))
        else:
            with open(source, encoding="utf-8") as handle:
                documents = list(yaml.safe_load_all(handle))
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source} is not valid YAML: {exc}") from None
    found = [
        (index, doc)
        for index, doc in enumerate(documents)
        if isinstance(doc, dict) and doc.get("kind") == ipwarmup.KIND
    ]
    if args.name is not None:
        found = [(i, doc) for i, doc in found if _doc_name(doc) == args.name]
    if not found:
        which = f" named {args.name!r}" if args.name is not None else ""
        raise UsageError(f"{source}: no IPWarmup{which} in the file")
    inputs: list[PlanInput] = []
    errors: list[str] = []
    for index, doc in found:
        label = f"{source}: IPWarmup {_doc_name(doc) or f'(document {index + 1})'}"
        try:
            item = _input_from_document(doc)
        except UsageError as exc:
            errors.append(f"{label}: {exc}")
            continue
        inputs.append(item)
    if errors:
        raise UsageError("\n".join(errors))
    return inputs


def _doc_name(doc: dict[str, Any]) -> str | None:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _input_from_document(doc: dict[str, Any]) -> PlanInput:
    try:
        warmup = ipwarmup.IPWarmup.model_validate(doc)
    except pydantic.ValidationError as exc:
        raise UsageError(_problem_lines("invalid", common.describe_errors(exc))) from None
    spec = warmup.spec
    problems = schedules.validate_spec(spec)
    if problems:
        raise UsageError(_problem_lines("the schedule can never work", problems))
    return PlanInput(
        name=_doc_name(doc),
        pool=spec.pool_ref.name,
        schedule=schedules.schedule_from_spec(spec.schedule),
        target=spec.target,
        shares=tuple(schedules.shares_from_spec(spec.provider_shares)),
    )


# --- output ------------------------------------------------------------------------------------


def build_plan(item: PlanInput) -> list[PlanRow]:
    """Day 1 to the day the target is reached, with running totals and provider caps."""
    rows: list[PlanRow] = []
    cumulative = 0
    for day, quota in enumerate(schedules.plan_quotas(item.schedule, item.target), start=1):
        cumulative += quota
        caps = schedules.provider_caps(quota, item.shares)
        rows.append(PlanRow(day=day, quota=quota, cumulative=cumulative, provider_caps=caps))
    return rows


def _schedule_json(schedule: schedules.Schedule) -> dict[str, Any]:
    if isinstance(schedule, schedules.LinearSchedule):
        return {"linear": {"start": schedule.start, "increment": schedule.increment}}
    if isinstance(schedule, schedules.ExponentialSchedule):
        return {"exponential": {"start": schedule.start, "factor": schedule.factor}}
    return {"steps": list(schedule.steps)}


def plan_json(item: PlanInput, rows: Sequence[PlanRow]) -> dict[str, Any]:
    return {
        "name": item.name,
        "poolRef": item.pool,
        "schedule": _schedule_json(item.schedule),
        "target": item.target,
        "providerShares": {share.provider: share.max_share for share in item.shares},
        "daysToTarget": len(rows),
        "totalMessages": rows[-1].cumulative if rows else 0,
        "days": [
            {
                "day": row.day,
                "quota": row.quota,
                "cumulative": row.cumulative,
                "providerCaps": row.provider_caps,
            }
            for row in rows
        ],
    }


def write_plan(out: TextIO, item: PlanInput, rows: Sequence[PlanRow], *, chart: bool) -> None:
    """The table, then the chart, as plain text that reads well in a terminal and in docs."""
    title = "IPWarmup " + (item.name or "(from flags)")
    if item.pool:
        title += f" for pool {item.pool}"
    out.write(f"{title}\n")
    out.write(
        f"schedule {schedules.describe_schedule(item.schedule)}; target {item.target}/day, "
        f"reached on day {len(rows)}\n"
    )
    providers = [share.provider for share in item.shares]
    headers = ["day", "quota", "cumulative", *providers]
    table = [
        [str(row.day), str(row.quota), str(row.cumulative)]
        + [str(row.provider_caps[name]) for name in providers]
        for row in rows
    ]
    widths = [max(len(h), *(len(cells[i]) for cells in table)) for i, h in enumerate(headers)]
    out.write("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for cells in table:
        out.write("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + "\n")
    if providers:
        shares = ", ".join(f"{s.provider} {s.max_share * 100:g} %" for s in item.shares)
        out.write(f"(provider columns: the most each may receive that day; {shares})\n")
    if chart:
        out.write("\n")
        out.write(render_chart(rows, target=item.target))


def render_chart(rows: Sequence[PlanRow], *, target: int) -> str:
    """One bar per day, full width at the target."""
    day_width = len(str(len(rows)))
    lines = []
    for row in rows:
        length = round(row.quota / target * CHART_WIDTH) if target > 0 else 0
        if row.quota > 0:
            length = max(1, length)
        bar = "#" * length
        lines.append(f"day {row.day:>{day_width}} |{bar.ljust(CHART_WIDTH)}| {row.quota}\n")
    return "".join(lines)
