"""The DKIM rotation state machine: one pure step from what exists to what should change.

No I/O. The reconciler gathers the key generations (from their Secrets), what the zone's
authoritative nameservers answer for each selector (and with which TTL), what the SendingPools
signing for the domain report they sign with, the time and the rotate annotation;
`plan_rotation` returns at most one transition (each one an event and a status change, so a
rotation can be followed in `kubectl describe` and resumed after a restart at any point), plus
housekeeping.

A *generation* is the set of keys created together: one key, or two for `dual` (RSA and
Ed25519, which rotate together because the sender signs with both). Its life:

    Pending    key stored in its Secret, record not yet emitted
    Published  record emitted (DNSEndpoint written or listed in status for manual publishing)
    Verified   every authoritative nameserver of the zone returns exactly its key, for every
               selector of the generation, and has done so for one TTL of the record (so no
               resolver still holds an older answer)
    Active     the pools sign with it (the switch happens on the reconcile after Verified,
               and only if DNS still returns the key). The Active key it replaces stays
               Active, as the pods' fallback, until every pool reports signing with the new one
    Retiring   no pool signs with it any more; still published for the overlap (at least one
               TTL of its record) so that mail signed with it still verifies at receivers
    Retired    record withdrawn; its Secret is kept for `revisionHistoryLimit` generations

Why retirement waits for the pools: a pool whose pods never got the new key (paused, frozen,
unreachable) keeps signing with the old one, and a key whose record is withdrawn fails every
message signed with it. Time since the switch proves nothing; only the pods' reports do.

Triggers for a new generation: none is Active and none is on its way, the
Active one is older than `rotateEvery`, the `mailfleet.io/rotate` annotation holds a value no
generation was created for, or the algorithm in the spec changed. At most one generation is
on its way (Pending/Published/Verified) at a time.

A generation whose Secret does not hold a usable key is frozen where it is: it never
advances, and the plan reports it, because overwriting a key by hand-edit or accident is
exactly what must not happen silently.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Callable, Mapping, Sequence

from mailfleet_operator.logic import keys


class KeyState(enum.StrEnum):
    PENDING = "Pending"
    PUBLISHED = "Published"
    VERIFIED = "Verified"
    ACTIVE = "Active"
    RETIRING = "Retiring"
    RETIRED = "Retired"


IN_PROGRESS = (KeyState.PENDING, KeyState.PUBLISHED, KeyState.VERIFIED)
PUBLISHED_STATES = (KeyState.PUBLISHED, KeyState.VERIFIED, KeyState.ACTIVE, KeyState.RETIRING)
"""States whose records are in DNS (a Pending key's record goes out with its first step)."""


class DnsCheck(enum.StrEnum):
    """What DNS answered for one selector."""

    MATCH = "Match"
    ABSENT = "Absent"
    MISMATCH = "Mismatch"
    """A record exists but carries another key (or two records answer)."""
    FAILED = "Failed"
    """The query failed (timeout, SERVFAIL): no conclusion."""


@dataclasses.dataclass(frozen=True)
class Generation:
    number: int
    algorithms: tuple[keys.KeyAlgorithm, ...]
    selectors: tuple[str, ...]
    """Selectors present (one per algorithm when complete)."""
    state: KeyState
    created_at: datetime.datetime
    state_since: datetime.datetime
    trigger: str = ""
    """The rotate-annotation value this generation was created for."""
    problem: str | None = None
    """Why the generation's key material cannot be used (unreadable Secret, ...)."""
    seen_at: datetime.datetime | None = None
    """When every authoritative nameserver first returned every selector's record (the TTL
    wait before Verified counts from here); None while not seen everywhere."""

    @property
    def complete(self) -> bool:
        return len(self.selectors) == len(self.algorithms)

    @property
    def usable(self) -> bool:
        return self.problem is None and self.complete


@dataclasses.dataclass(frozen=True)
class Policy:
    algorithms: tuple[keys.KeyAlgorithm, ...]
    selector_prefix: str
    rotate_every: datetime.timedelta
    overlap: datetime.timedelta
    history_limit: int
    stall_after: datetime.timedelta
    """How long a generation may sit in Published before the rotation is reported stalled."""
    default_ttl: datetime.timedelta = datetime.timedelta(seconds=300)
    """The records' TTL when DNS did not tell (the TTL the spec publishes with)."""


@dataclasses.dataclass(frozen=True)
class PoolSigning:
    """What one SendingPool that signs for the domain reports its pods sign with."""

    pool: str
    selectors: frozenset[str]
    """Selectors reported for the domain; empty when the pool reports none (no pod running,
    no report yet, or mail held), which proves nothing and so holds retirement."""


class TransitionKind(enum.StrEnum):
    CREATE = "Create"
    ADVANCE = "Advance"
    SWITCH = "Switch"
    RETIRE = "Retire"


@dataclasses.dataclass(frozen=True)
class NewGeneration:
    number: int
    algorithms: tuple[keys.KeyAlgorithm, ...]
    selectors: tuple[str, ...]
    trigger: str


@dataclasses.dataclass(frozen=True)
class Transition:
    kind: TransitionKind
    reason: str
    """CamelCase event reason."""
    message: str
    changes: tuple[tuple[int, KeyState], ...] = ()
    """(generation number, new state) pairs, applied together."""
    create: NewGeneration | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    transition: Transition | None
    prune: tuple[int, ...]
    """Retired generations beyond the history limit: delete their Secrets."""
    next_check: datetime.datetime | None
    """The next moment a timed transition becomes due (retirement, rotation, stall)."""
    stalled: Generation | None
    """A generation Published for longer than `stall_after` without DNS showing it."""
    rotation_due_at: datetime.datetime | None
    seen: tuple[int, ...] = ()
    """Generations now seen at every authoritative nameserver: record the moment (seen_at)."""
    unseen: tuple[int, ...] = ()
    """Generations seen before that a nameserver no longer returns: forget seen_at, so the
    TTL wait starts again once they are back."""
    waiting_for: tuple[str, ...] = ()
    """Why a replaced Active key is not Retiring yet: one line per pool still to switch."""


def selectors_for(
    *, prefix: str, number: int, algorithms: Sequence[keys.KeyAlgorithm]
) -> tuple[str, ...]:
    """Deterministic selectors: `<prefix>-<n>`, and `<prefix>-<n>-ed` for the Ed25519 half of dual.

    Deterministic so that a restart between creating a Secret and recording the step finds
    the same names again instead of generating a second key; numbered (not dated) so two
    rotations on one day never collide.
    """
    if len(algorithms) == 1:
        return (f"{prefix}-{number}",)
    return tuple(
        f"{prefix}-{number}-ed" if algorithm == "ed25519" else f"{prefix}-{number}"
        for algorithm in algorithms
    )


def apply_transition(
    generations: Sequence[Generation], transition: Transition, *, now: datetime.datetime
) -> list[Generation]:
    """The generations as they are once `transition` is applied (for the status to show)."""
    result = list(generations)
    if transition.create is not None:
        new = transition.create
        existing = {g.number for g in result}
        if new.number not in existing:
            result.append(
                Generation(
                    number=new.number,
                    algorithms=new.algorithms,
                    selectors=new.selectors,
                    state=KeyState.PENDING,
                    created_at=now,
                    state_since=now,
                    trigger=new.trigger,
                )
            )
        else:
            result = [
                dataclasses.replace(g, selectors=new.selectors) if g.number == new.number else g
                for g in result
            ]
    changes = dict(transition.changes)
    return [
        dataclasses.replace(g, state=changes[g.number], state_since=now)
        if g.number in changes
        else g
        for g in result
    ]


def plan_rotation(
    *,
    generations: Sequence[Generation],
    policy: Policy,
    now: datetime.datetime,
    rotate_annotation: str,
    dns: Mapping[str, DnsCheck],
    ttls: Mapping[str, datetime.timedelta] | None = None,
    pools: Sequence[PoolSigning] = (),
    taken: int = 0,
) -> Plan:
    """The next step of the rotation; see the module docstring for the rules.

    `dns` is what the zone's authoritative nameservers answer per selector (MATCH only when
    every one of them returns exactly the key), `ttls` the longest TTL they serve each
    selector's record with, `pools` what every SendingPool signing for the domain reports,
    `taken` the highest generation number other Secrets of the same name already use.
    """
    ordered = sorted(generations, key=lambda g: g.number)
    active = [g for g in ordered if g.state == KeyState.ACTIVE]
    in_progress = [g for g in ordered if g.state in IN_PROGRESS]
    newest = ordered[-1] if ordered else None
    current = active[-1] if active else None
    rotation_due_at = current.created_at + policy.rotate_every if current else None
    observed = ttls or {}

    def verified(generation: Generation) -> bool:
        return all(dns.get(s) == DnsCheck.MATCH for s in generation.selectors)

    def ttl(generation: Generation) -> datetime.timedelta:
        return max(
            (observed.get(s, policy.default_ttl) for s in generation.selectors),
            default=policy.default_ttl,
        )

    def lost(generation: Generation) -> bool:
        """A nameserver answers without the key (a failed lookup concludes nothing)."""
        return any(
            dns.get(s) in (DnsCheck.ABSENT, DnsCheck.MISMATCH) for s in generation.selectors
        )

    waiting = _pools_still_signing(current, pools) if len(active) > 1 else ()
    transition = _next_transition(
        ordered=ordered,
        active=active,
        in_progress=in_progress,
        newest=newest,
        policy=policy,
        now=now,
        rotate_annotation=rotate_annotation,
        verified=verified,
        ttl=ttl,
        rotation_due_at=rotation_due_at,
        waiting=waiting,
        taken=taken,
    )

    retired = [g for g in ordered if g.state == KeyState.RETIRED]
    keep = max(policy.history_limit, 0)
    prune = tuple(g.number for g in (retired[:-keep] if keep else retired))

    published = [g for g in in_progress if g.state == KeyState.PUBLISHED and g.usable]
    seen = tuple(g.number for g in published if g.seen_at is None and verified(g))
    unseen = tuple(g.number for g in published if g.seen_at is not None and lost(g))

    stalled = next(
        (
            g
            for g in in_progress
            if g.state == KeyState.PUBLISHED
            and g.seen_at is None
            and now - g.state_since >= policy.stall_after
        ),
        None,
    )
    deadlines = [
        g.state_since + max(policy.overlap, ttl(g))
        for g in ordered
        if g.state == KeyState.RETIRING
    ]
    deadlines += [
        g.state_since + policy.stall_after
        for g in in_progress
        if g.state == KeyState.PUBLISHED and now - g.state_since < policy.stall_after
    ]
    deadlines += [
        g.seen_at + ttl(g)
        for g in published
        if g.seen_at is not None and g.number not in unseen
    ]
    if rotation_due_at is not None and not in_progress:
        deadlines.append(rotation_due_at)
    return Plan(
        transition=transition,
        prune=prune,
        next_check=min(deadlines) if deadlines else None,
        stalled=stalled,
        rotation_due_at=rotation_due_at,
        seen=seen,
        unseen=unseen,
        waiting_for=waiting,
    )


def _pools_still_signing(
    current: Generation | None, pools: Sequence[PoolSigning]
) -> tuple[str, ...]:
    """Pools that do not (yet) report signing with the current key alone, each with why."""
    if current is None:
        return ()
    wanted = set(current.selectors)
    out = []
    for report in sorted(pools, key=lambda p: p.pool):
        if not report.selectors:
            out.append(f"SendingPool {report.pool} reports no selector for the domain")
        elif not report.selectors <= wanted:
            others = ", ".join(sorted(report.selectors - wanted))
            out.append(f"SendingPool {report.pool} still signs with {others}")
    return tuple(out)


def _next_transition(
    *,
    ordered: list[Generation],
    active: list[Generation],
    in_progress: list[Generation],
    newest: Generation | None,
    policy: Policy,
    now: datetime.datetime,
    rotate_annotation: str,
    verified: Callable[[Generation], bool],
    ttl: Callable[[Generation], datetime.timedelta],
    rotation_due_at: datetime.datetime | None,
    waiting: tuple[str, ...],
    taken: int,
) -> Transition | None:
    # An interrupted creation (a dual generation with one Secret): finish it, same names.
    for generation in in_progress:
        if generation.state == KeyState.PENDING and not generation.complete:
            return Transition(
                kind=TransitionKind.CREATE,
                reason="KeyGenerated",
                message=f"completing key generation {generation.number}",
                create=NewGeneration(
                    number=generation.number,
                    algorithms=generation.algorithms,
                    selectors=selectors_for(
                        prefix=policy.selector_prefix,
                        number=generation.number,
                        algorithms=generation.algorithms,
                    ),
                    trigger=generation.trigger,
                ),
            )

    # Switch: a verified generation becomes Active; the one it replaces keeps signing (it
    # stays Active, after the new one) until every pool reports the new selector.
    for generation in in_progress:
        if generation.state == KeyState.VERIFIED and generation.usable and verified(generation):
            old = ", ".join(_names(g) for g in active)
            return Transition(
                kind=TransitionKind.SWITCH,
                reason="KeyActivated",
                message=(
                    f"selector {_names(generation)} is now Active"
                    + (
                        f"; {old} stays published and retires once every SendingPool signs "
                        f"with {_names(generation)}"
                        if active
                        else ""
                    )
                ),
                changes=((generation.number, KeyState.ACTIVE),),
            )

    # Retire the replaced keys once every pool signs with the current one.
    if len(active) > 1 and not waiting:
        replaced = active[:-1]
        return Transition(
            kind=TransitionKind.RETIRE,
            reason="KeyRetiring",
            message=(
                f"every SendingPool signs with {_names(active[-1])}: "
                f"{', '.join(_names(g) for g in replaced)} stays published for "
                f"{_human(max([policy.overlap, *(ttl(g) for g in replaced)]))}, then retires"
            ),
            changes=tuple((g.number, KeyState.RETIRING) for g in replaced),
        )

    for generation in in_progress:
        if not generation.usable:
            continue
        if (
            generation.state == KeyState.PUBLISHED
            and verified(generation)
            and generation.seen_at is not None
            and now >= generation.seen_at + ttl(generation)
        ):
            return Transition(
                kind=TransitionKind.ADVANCE,
                reason="KeyVerified",
                message=(
                    f"every authoritative nameserver has returned the key of selector "
                    f"{_names(generation)} for one TTL ({_human(ttl(generation))})"
                ),
                changes=((generation.number, KeyState.VERIFIED),),
            )
        if generation.state == KeyState.PENDING:
            return Transition(
                kind=TransitionKind.ADVANCE,
                reason="KeyPublished",
                message=f"record for selector {_names(generation)} published",
                changes=((generation.number, KeyState.PUBLISHED),),
            )

    for generation in ordered:
        overlap = max(policy.overlap, ttl(generation))
        if generation.state == KeyState.RETIRING and now >= generation.state_since + overlap:
            return Transition(
                kind=TransitionKind.ADVANCE,
                reason="KeyRetired",
                message=(
                    f"selector {_names(generation)} retired after an overlap of "
                    f"{_human(overlap)} with no pool signing with it; its record is withdrawn"
                ),
                changes=((generation.number, KeyState.RETIRED),),
            )

    if in_progress:
        return None
    number = max((newest.number + 1) if newest else 1, taken + 1)
    reason: str | None = None
    message = ""
    current = active[-1] if active else None
    if current is None:
        reason, message = "KeyGenerated", "no Active key: generating one"
    elif rotate_annotation and rotate_annotation != (newest.trigger if newest else ""):
        reason = "RotationRequested"
        message = f"annotation mailfleet.io/rotate={rotate_annotation!r}: rotating"
    elif current.algorithms != policy.algorithms:
        reason = "AlgorithmChanged"
        message = (
            f"spec asks for {'+'.join(policy.algorithms)}, Active key is "
            f"{'+'.join(current.algorithms)}: rotating"
        )
    elif rotation_due_at is not None and now >= rotation_due_at:
        reason = "RotationDue"
        message = f"Active key is older than {_human(policy.rotate_every)}: rotating"
    if reason is None:
        return None
    selectors = selectors_for(
        prefix=policy.selector_prefix, number=number, algorithms=policy.algorithms
    )
    return Transition(
        kind=TransitionKind.CREATE,
        reason=reason,
        message=f"{message}; new key generation {number}, selector {', '.join(selectors)}",
        create=NewGeneration(
            number=number,
            algorithms=policy.algorithms,
            selectors=selectors,
            trigger=rotate_annotation,
        ),
    )


def _names(generation: Generation) -> str:
    return "+".join(generation.selectors)


def _human(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
