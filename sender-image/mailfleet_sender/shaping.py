"""Reactive shaping: providers that answer "slow down" get slowed down, then recover.
Pure (no I/O): the caller passes `now` (monotonic seconds) to every call, so tests and the
sandbox's scaled clock drive it directly.

Why: a provider's 421 4.7.x or "rate limited" reply is a request to send less; ignoring it
turns deferrals into blocks. Like KumoMTA's automation rules and PowerMTA's backoff mode:

- `threshold` throttled replies within `window` multiply the provider's rate factor by
  `backoff_factor` (never below `min_factor`); replies within `cooldown` after a backoff do not
  count, because they answer mail sent before it.
- `suspend_after` backoffs in a row without full recovery suspend the provider for
  `suspend_for` (factor 0); it resumes at `min_factor`.
- Every quiet `recover_every` adds `recover_step` to the factor, up to 1.0 (the configured
  rate); a full recovery forgets past backoffs.

The scheduler multiplies its per-provider token bucket rate by `Shaper.rate_factor`.
Only Throttled replies count by default: blocks are reputation, handled by the circuit breaker,
and slowing down does not cure them.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailfleet_sender import bounces, units

__all__ = [
    "DEFAULT_PROVIDER_RULES",
    "ProviderState",
    "Shaper",
    "ShapingEvent",
    "ShapingRule",
    "ShapingRules",
    "Transition",
]


class ShapingRule(BaseModel):
    """How one provider is slowed down and recovered; durations as "30s", "10m"."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    threshold: int = Field(default=3, ge=1, description="Throttled replies that trigger a backoff.")
    window: units.Duration = Field(default="1m", description="Window the replies are counted in.")
    cooldown: units.Duration = Field(
        default="10s", description="After a backoff, replies are not counted for this long."
    )
    backoff_factor: float = Field(default=0.5, gt=0.0, lt=1.0, alias="backoffFactor")
    min_factor: float = Field(default=0.05, gt=0.0, le=1.0, alias="minFactor")
    suspend_after: int = Field(
        default=4, ge=1, alias="suspendAfter",
        description="Backoffs in a row (without full recovery) that suspend the provider.",
    )
    suspend_for: units.Duration = Field(default="10m", alias="suspendFor")
    recover_every: units.Duration = Field(default="2m", alias="recoverEvery")
    recover_step: float = Field(default=0.1, gt=0.0, le=1.0, alias="recoverStep")
    triggers: frozenset[bounces.Category] = frozenset({bounces.Category.THROTTLED})

    @property
    def window_s(self) -> float:
        return units.duration_seconds(self.window)

    @property
    def cooldown_s(self) -> float:
        return units.duration_seconds(self.cooldown)

    @property
    def suspend_for_s(self) -> float:
        return units.duration_seconds(self.suspend_for)

    @property
    def recover_every_s(self) -> float:
        return units.duration_seconds(self.recover_every)

    @model_validator(mode="after")
    def _positive_intervals(self) -> Self:
        if self.window_s <= 0 or self.recover_every_s <= 0:
            raise ValueError("window and recoverEvery must be longer than zero")
        return self


# Defaults for the big providers, from their postmaster guidance: Gmail and Microsoft throttle
# hard and recover slowly; Yahoo's TSS04 deferrals want long pauses; the French providers cap
# connections tightly and answer 421 early, so they get a lower threshold.
DEFAULT_PROVIDER_RULES: dict[str, ShapingRule] = {
    "gmail": ShapingRule(threshold=3, window="1m", recover_every="5m", recover_step=0.1),
    "outlook": ShapingRule(threshold=3, window="1m", recover_every="5m", recover_step=0.1),
    "yahoo": ShapingRule(
        threshold=2, window="2m", backoff_factor=0.25, suspend_after=3, suspend_for="30m",
        recover_every="10m", recover_step=0.1,
    ),
    "apple": ShapingRule(threshold=3, window="1m", recover_every="5m"),
    "orange": ShapingRule(threshold=2, window="1m", recover_every="5m", recover_step=0.2),
    "free": ShapingRule(threshold=2, window="1m", recover_every="5m", recover_step=0.2),
    "sfr": ShapingRule(threshold=2, window="1m", recover_every="5m", recover_step=0.2),
    "laposte": ShapingRule(threshold=2, window="1m", recover_every="5m", recover_step=0.2),
    "gmx": ShapingRule(threshold=3, window="1m", recover_every="5m"),
}


class ShapingRules(BaseModel):
    """Rules per provider name; a name without an entry uses `default`.

    Entries given here replace the built-in entry of the same name as a whole (no field-wise
    merge, so what is written is what applies); the other built-in entries stay.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ShapingRule = ShapingRule()
    providers: dict[str, ShapingRule] = Field(default_factory=lambda: dict(DEFAULT_PROVIDER_RULES))

    @field_validator("providers", mode="after")
    @classmethod
    def _over_the_defaults(cls, given: dict[str, ShapingRule]) -> dict[str, ShapingRule]:
        """Listing one provider must not drop the built-in rules of the others."""
        return {**DEFAULT_PROVIDER_RULES, **{name.lower(): rule for name, rule in given.items()}}

    def for_provider(self, name: str) -> ShapingRule:
        return self.providers.get(name.lower(), self.default)


class Transition(enum.StrEnum):
    BACKOFF = "backoff"
    SUSPEND = "suspend"
    RESUME = "resume"
    RECOVER = "recover"
    RECOVERED = "recovered"


@dataclasses.dataclass(frozen=True)
class ShapingEvent:
    """A change of a provider's factor, for logs, events and metrics."""

    provider: str
    transition: Transition
    factor: float
    at: float


@dataclasses.dataclass
class ProviderState:
    """Mutable per-provider state; exposed read-only through `Shaper.state`."""

    factor: float = 1.0
    backoffs: int = 0
    last_change: float = 0.0
    cooldown_until: float = 0.0
    suspended_until: float | None = None
    recent: collections.deque[float] = dataclasses.field(default_factory=collections.deque)


MAX_TRACKED = 1000
"""Providers and sites with shaping state at once. A site no provider entry names is shaped on
its own (by its MX host set), and recipients' domains are chosen by whoever submits mail, so
beyond the cap the states that are back to normal (factor 1.0, not suspended: the same as no
state) are forgotten first, then the least recently used."""


class Shaper:
    """The reactive shaping state of one sender, for every provider it talks to."""

    def __init__(self, rules: ShapingRules | None = None, *, max_tracked: int = MAX_TRACKED
                 ) -> None:
        self.max_tracked = max_tracked
        self._rules = rules or ShapingRules()
        self._states: dict[str, ProviderState] = {}
        self._events: list[ShapingEvent] = []

    @property
    def rules(self) -> ShapingRules:
        return self._rules

    def update_rules(self, rules: ShapingRules) -> None:
        """Take new rules (config reload) keeping each provider's current factor."""
        self._rules = rules

    def _state(self, provider: str) -> ProviderState:
        key = provider.lower()
        state = self._states.pop(key, None)  # re-inserted last: dicts keep insertion order
        if state is None:
            state = ProviderState()
            if len(self._states) >= self.max_tracked:
                self._forget_some()
        self._states[key] = state
        return state

    def _forget_some(self) -> None:
        normal = [k for k, s in self._states.items()
                  if s.factor >= 1.0 and s.suspended_until is None]
        for key in normal[: max(1, len(self._states) - self.max_tracked + 1)]:
            del self._states[key]
        while len(self._states) >= self.max_tracked:
            del self._states[next(iter(self._states))]

    def _emit(self, provider: str, transition: Transition, factor: float, at: float) -> None:
        self._events.append(ShapingEvent(provider.lower(), transition, factor, at))

    def _advance(self, provider: str, now: float) -> ProviderState:
        """Apply the passage of time: end a suspension, recover one step per quiet interval."""
        state = self._state(provider)
        rule = self._rules.for_provider(provider)
        if state.suspended_until is not None:
            if now < state.suspended_until:
                return state
            state.last_change = state.suspended_until
            state.suspended_until = None
            state.factor = rule.min_factor
            self._emit(provider, Transition.RESUME, state.factor, state.last_change)
        step = rule.recover_every_s
        # The epsilon keeps float sums of intervals from missing a step that is due.
        while state.factor < 1.0 and now - state.last_change >= step - 1e-9:
            state.last_change += step
            state.factor = min(1.0, round(state.factor + rule.recover_step, 6))
            if state.factor >= 1.0:
                state.backoffs = 0
                self._emit(provider, Transition.RECOVERED, state.factor, state.last_change)
            else:
                self._emit(provider, Transition.RECOVER, state.factor, state.last_change)
        return state

    def observe(
        self, provider: str, classification: bounces.Classification, now: float
    ) -> ShapingEvent | None:
        """Feed one reply's classification; returns the backoff/suspension it caused, if any."""
        state = self._advance(provider, now)
        rule = self._rules.for_provider(provider)
        if classification.category not in rule.triggers:
            return None
        if state.suspended_until is not None or now < state.cooldown_until:
            return None
        state.recent.append(now)
        while state.recent and now - state.recent[0] > rule.window_s:
            state.recent.popleft()
        if len(state.recent) < rule.threshold:
            # A throttle also postpones recovery: the provider is not quiet.
            if state.factor < 1.0:
                state.last_change = now
            return None
        state.recent.clear()
        state.backoffs += 1
        state.last_change = now
        state.cooldown_until = now + rule.cooldown_s
        if state.backoffs >= rule.suspend_after:
            state.suspended_until = now + rule.suspend_for_s
            state.factor = 0.0
            transition = Transition.SUSPEND
        else:
            state.factor = max(rule.min_factor, round(state.factor * rule.backoff_factor, 6))
            transition = Transition.BACKOFF
        event = ShapingEvent(provider.lower(), transition, state.factor, now)
        self._events.append(event)
        return event

    def rate_factor(self, provider: str, now: float) -> float:
        """Multiplier for the provider's configured rate: 1.0 normal, 0.0 suspended."""
        state = self._advance(provider, now)
        return 0.0 if state.suspended_until is not None else state.factor

    def suspended_until(self, provider: str) -> float | None:
        """When a suspension ends (same clock as `now`), or None when not suspended."""
        state = self._states.get(provider.lower())
        return state.suspended_until if state is not None else None

    def state(self, provider: str, now: float) -> ProviderState:
        """A copy of the provider's state after applying `now`, for /v1/stats."""
        return dataclasses.replace(self._advance(provider, now))

    def providers(self) -> list[str]:
        """Providers with shaping state (every one that was ever observed)."""
        return sorted(self._states)

    def drain_events(self) -> list[ShapingEvent]:
        """Transitions since the last call (backoffs, suspensions, resumes, recovery steps)."""
        events, self._events = self._events, []
        return events
