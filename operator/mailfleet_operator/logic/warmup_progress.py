"""One IPWarmup's progress between reconciles: per-IP day figures, the combined decision, the
phase and the conditions. Pure (no I/O): the controller gathers, these functions decide.

Day figures. The senders count per IP and per *quota day* (`/v1/stats`: `day` is the index of
the sender's day): calendar days of the warm-up's timezone, which the operator renders into
their config, or with the time scale on days of `dayLength` seconds from the epoch, as the
operator's scaled clock counts them. Either way a warm-up day is exactly one sender day
(`warmup_clock.sender_day`). The senders also report the persisted counters of the days
before today (`days`): a day is judged only once every pod's figures of it are known
(`missing_figures`), so an operator down across midnight never judges a day blind.

Counters reset when the sender's day rolls over, and a day is judged just after it ended, so
the figures of a day are the highest counts seen per pod (by name: a StatefulSet pod that is
recreated keeps its spool, and the sender reloads the day's counters from it) while that day
ran, kept in the operator's memory and summed over pods. A pod that disappears still counts
with what it last reported, so an IP that moved mid-day is judged on everything it sent, and
the quota that remains is quota minus that sum. The same figures are persisted in the
IPWarmup's status (`ips[].usage`, `usage_entries`) and read back after a restart
(`readings_from_usage`), so a restart forgets nothing the operator had seen.

Several IPs in one IPWarmup share its schedule day: each IP is judged on its own figures and
the most severe verdict wins (Pause, then Rollback, then Hold, then Advance/Complete), so one
bad IP holds the group rather than hiding in a good average.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Mapping, Sequence, Set

from mailfleet_sender import wire

from mailfleet_operator.api import ipwarmup
from mailfleet_operator.logic import conditions, warmup_gates

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
"""Origin of the scaled day clock: the senders count their quota days from it too."""

DEFAULT_SENDER_DAY = 86400.0

SEVERITY = {
    warmup_gates.Action.PAUSE: 4,
    warmup_gates.Action.ROLLBACK: 3,
    warmup_gates.Action.HOLD: 2,
    warmup_gates.Action.ADVANCE: 1,
    warmup_gates.Action.COMPLETE: 0,
}

PHASE_OF_ACTION: dict[warmup_gates.Action, ipwarmup.Phase] = {
    warmup_gates.Action.ADVANCE: "WarmingUp",
    warmup_gates.Action.HOLD: "Held",
    warmup_gates.Action.ROLLBACK: "RolledBack",
    warmup_gates.Action.PAUSE: "Paused",
    warmup_gates.Action.COMPLETE: "Completed",
}

# --- day figures ----------------------------------------------------------------------------


def sender_day_of(
    day_start: datetime.datetime, day_end: datetime.datetime, *, sender_day_seconds: float
) -> int:
    """The sender quota day (index from the epoch) whose counters hold this warm-up day."""
    middle = day_start + (day_end - day_start) / 2
    return math.floor((middle - EPOCH).total_seconds() / sender_day_seconds)


@dataclasses.dataclass(frozen=True)
class PodReading:
    """One pod's `/v1/stats` counts for one IP on one sender day."""

    pod: str
    address: str
    sender_day: int
    figures: warmup_gates.DayFigures


DayCounts = dict[tuple[str, int], dict[str, warmup_gates.DayFigures]]
"""(address, sender day) -> pod uid -> highest figures seen."""


def _max_figures(a: warmup_gates.DayFigures, b: warmup_gates.DayFigures) -> warmup_gates.DayFigures:
    return warmup_gates.DayFigures(
        sent=max(a.sent, b.sent),
        delivered=max(a.delivered, b.delivered),
        hard_bounces=max(a.hard_bounces, b.hard_bounces),
        complaints=max(a.complaints, b.complaints),
        deferrals=max(a.deferrals, b.deferrals),
    )


def merge_readings(
    known: Mapping[tuple[str, int], Mapping[str, warmup_gates.DayFigures]],
    readings: Iterable[PodReading],
    *,
    keep_from_day: int,
) -> DayCounts:
    """Fold fresh readings into the high-water marks; days before `keep_from_day` are dropped."""
    merged: DayCounts = {key: dict(pods) for key, pods in known.items() if key[1] >= keep_from_day}
    for reading in readings:
        if reading.sender_day < keep_from_day:
            continue
        pods = merged.setdefault((reading.address, reading.sender_day), {})
        old = pods.get(reading.pod)
        pods[reading.pod] = (
            reading.figures if old is None else _max_figures(old, reading.figures)
        )
    return merged


def figures_for(counts: DayCounts, *, address: str, sender_day: int) -> warmup_gates.DayFigures:
    """One IP's figures for one day, summed over every pod that sent from it."""
    total = warmup_gates.DayFigures()
    for figures in counts.get((address, sender_day), {}).values():
        total = warmup_gates.DayFigures(
            sent=total.sent + figures.sent,
            delivered=total.delivered + figures.delivered,
            hard_bounces=total.hard_bounces + figures.hard_bounces,
            complaints=total.complaints + figures.complaints,
            deferrals=total.deferrals + figures.deferrals,
        )
    return total


def usage_entries(
    counts: DayCounts, *, address: str, from_day: int
) -> list[ipwarmup.PodDayUsage]:
    """One IP's per-pod figures from `from_day` on, for `status.ips[].usage`."""
    return [
        ipwarmup.PodDayUsage(
            day=day,
            pod=pod,
            sent=figures.sent,
            delivered=figures.delivered,
            hard_bounces=figures.hard_bounces,
            complaints=figures.complaints,
            deferrals=figures.deferrals,
        )
        for (ip, day), pods in sorted(counts.items())
        if ip == address and day >= from_day
        for pod, figures in sorted(pods.items())
    ]


def readings_from_usage(ips: Iterable[ipwarmup.IPProgress]) -> list[PodReading]:
    """The figures persisted in status, as readings (merged like fresh ones: highest wins)."""
    return [
        PodReading(
            pod=entry.pod,
            address=ip.address,
            sender_day=entry.day,
            figures=warmup_gates.DayFigures(
                sent=entry.sent,
                delivered=entry.delivered,
                hard_bounces=entry.hard_bounces,
                complaints=entry.complaints,
                deferrals=entry.deferrals,
            ),
        )
        for ip in ips
        for entry in ip.usage
    ]


@dataclasses.dataclass(frozen=True)
class PodAnswer:
    """What one pod's stats say about which days' figures it has reported."""

    day: int
    """Its current quota day."""
    past: frozenset[int] | None
    """The past days it reported (`days`); None from a sender that does not report them."""


def answer_of(stats: wire.Stats) -> PodAnswer:
    """Which days a pod that answered has reported (for `missing_figures`)."""
    past = None if stats.days is None else frozenset(d.day for d in stats.days)
    return PodAnswer(day=stats.day, past=past)


def readings_from_stats(pod: str, stats: wire.Stats, *, wanted: Set[str]) -> list[PodReading]:
    """One pod's `/v1/stats` counts for the warm-up's IPs (`wanted`): the past days it
    reports, then today's."""
    readings = []
    for past_day in stats.days or ():
        for counted in past_day.ips:
            if counted.address in wanted:
                readings.append(
                    PodReading(
                        pod=pod,
                        address=counted.address,
                        sender_day=past_day.day,
                        figures=warmup_gates.DayFigures(
                            sent=counted.sent,
                            delivered=counted.delivered,
                            hard_bounces=counted.bounced,
                            complaints=counted.complained,
                            deferrals=counted.deferred,
                        ),
                    )
                )
    for ip in stats.ips:
        if ip.address not in wanted:
            continue
        readings.append(
            PodReading(
                pod=pod,
                address=ip.address,
                sender_day=stats.day,
                figures=warmup_gates.DayFigures(
                    sent=ip.sent_today,
                    delivered=ip.delivered_today,
                    hard_bounces=ip.bounced_today,
                    complaints=ip.complained_today,
                    deferrals=ip.deferred_today,
                ),
            )
        )
    return readings


def missing_figures(
    listed: Sequence[str], answers: Mapping[str, PodAnswer], *, day: int
) -> list[str]:
    """The pods whose figures of the ended sender `day` are not known yet: a pod that did not
    answer, or whose own day has not ended (clock skew). A sender without per-day counters, or
    a day older than it keeps, is judged on what was seen of it (nothing more can be had)."""
    missing = []
    for pod in listed:
        answer = answers.get(pod)
        if answer is None or answer.day <= day:
            missing.append(pod)
        elif answer.past is not None and day not in answer.past and day >= min(
            answer.past, default=day + 1
        ):
            missing.append(pod)
    return missing


# --- the decision over several IPs ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupDecision:
    """The verdict on one day for every IP of the warm-up, and the IP that decided it."""

    decisive: warmup_gates.Decision
    address: str
    per_ip: tuple[tuple[str, warmup_gates.Decision], ...]

    @property
    def action(self) -> warmup_gates.Action:
        return self.decisive.action

    def history_row(self) -> ipwarmup.DayRecord:
        """The decisive IP's row: its figures are the ones that explain the decision."""
        return self.decisive.history_row()

    def message(self) -> str:
        """Every IP's verdict with its figures (event text)."""
        if len(self.per_ip) == 1:
            return f"IP {self.address}: {self.decisive.message}"
        return " | ".join(f"IP {address}: {d.message}" for address, d in self.per_ip)


def decide_group(per_ip: Sequence[tuple[str, warmup_gates.Decision]]) -> GroupDecision:
    """Most severe verdict wins; among passing IPs, the one with the least evidence (sent)."""
    if not per_ip:
        raise ValueError("a warm-up needs at least one IP to judge")
    address, decisive = max(
        per_ip,
        key=lambda item: (
            SEVERITY[item[1].action],
            # Most severe among equals: the deepest rollback, then the least sent.
            -item[1].next_day,
            -item[1].figures.sent,
        ),
    )
    return GroupDecision(decisive=decisive, address=address, per_ip=tuple(per_ip))


# --- phase and conditions -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why the warm-up cannot run (bad spec, missing pool, conflict): the Ready reason."""

    reason: str
    message: str


def phase_of(
    *,
    problem: Problem | None,
    started: bool,
    paused: bool,
    last_action: warmup_gates.Action | None,
) -> ipwarmup.Phase:
    if last_action is warmup_gates.Action.COMPLETE:
        return "Completed"
    if problem is not None or not started:
        return "Pending"
    if paused:
        return "Paused"
    if last_action is None or last_action is warmup_gates.Action.PAUSE:
        return "WarmingUp"  # a gate Pause a person lifted runs again
    return PHASE_OF_ACTION[last_action]


def verdicts(
    *,
    phase: ipwarmup.Phase,
    problem: Problem | None,
    day: int,
    quota: int,
    target: int,
    paused_by: str | None,
    last: ipwarmup.DayRecord | None,
    awaiting: str | None = None,
) -> list[conditions.Verdict]:
    """Ready (True once Completed), Progressing, Held and Completed for this state."""
    completed = phase == "Completed"
    if problem is not None and not completed:
        return [
            conditions.Verdict(ipwarmup.READY, False, problem.reason, problem.message),
            conditions.Verdict(ipwarmup.PROGRESSING, False, problem.reason, problem.message),
            conditions.Verdict(ipwarmup.HELD, False, "NotStarted", ""),
            conditions.Verdict(ipwarmup.COMPLETED, False, "NotStarted", ""),
        ]
    where = f"day {day}, quota {quota}/day per IP, target {target}"
    if completed:
        done = f"warm-up complete on day {day}: the IPs are warm and no longer limited"
        return [
            conditions.Verdict(ipwarmup.READY, True, "Completed", done),
            conditions.Verdict(ipwarmup.PROGRESSING, False, "Completed", done),
            conditions.Verdict(ipwarmup.HELD, False, "Completed", ""),
            conditions.Verdict(ipwarmup.COMPLETED, True, "TargetReached", done),
        ]
    if paused_by is not None:
        held = conditions.Verdict(ipwarmup.HELD, True, paused_by, f"paused on {where}")
        progressing = conditions.Verdict(
            ipwarmup.PROGRESSING, False, paused_by, f"paused on {where}"
        )
    elif awaiting is not None:
        held = conditions.Verdict(ipwarmup.HELD, True, "AwaitingFigures", awaiting)
        progressing = conditions.Verdict(ipwarmup.PROGRESSING, True, "AwaitingFigures", awaiting)
    elif last is not None and last.decision in ("Hold", "Rollback"):
        text = f"{last.decision} after day {last.day} ({last.reason}); now {where}"
        held = conditions.Verdict(ipwarmup.HELD, True, last.reason or last.decision, text)
        progressing = conditions.Verdict(ipwarmup.PROGRESSING, True, "WarmingUp", where)
    else:
        held = conditions.Verdict(ipwarmup.HELD, False, "GatesPassed", "")
        progressing = conditions.Verdict(ipwarmup.PROGRESSING, True, "WarmingUp", where)
    return [
        conditions.Verdict(ipwarmup.READY, False, phase, f"warming up: {where}"),
        progressing,
        held,
        conditions.Verdict(ipwarmup.COMPLETED, False, "WarmingUp", ""),
    ]
