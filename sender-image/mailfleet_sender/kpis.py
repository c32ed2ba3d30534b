"""Campaign KPIs of one sender: what the people sending campaigns judge the platform on. Pure
(no I/O): events come in as plain dicts (the event schema, docs/events.md), `now` from the
caller; `export`/`restore` give plain JSON data the sender keeps in its spool.

What is counted, per event (docs/kpis.md has every definition):
- `accepted` -> sent (one per recipient); `delivered` -> delivered and its `delay_s` into the
  time-to-deliver histogram; `bounced` -> hard or soft by `bounce.kind`; `complained`,
  `unsubscribed`, `deferred`, `suppressed`, `expired` -> their counts;
- `opened`/`clicked` -> the raw counts (`opens_human_total`...) and, the first time a
  (message, recipient) pair is seen, the unique counts (`opened_human`...) that `open_rate`
  and `click_rate` divide: a reader who opens a message ten times is one open. Human and
  machine (a prefetching proxy, `machine: true`) are kept apart; a null `machine` is human.

Breakouts: the pool total, and per class, provider, IP and tag value of the allowed tag keys
(`events.tagMetricsAllow`); other tag keys are not broken out. An event without a class (or
provider, IP, tag) counts in the total only. Each breakout holds at most `max_values` values
(tags) or `max_dimension_values` (class, provider, IP); once full, a value not seen for the
whole retention frees its place, and new values are counted under `_other`: memory and
Prometheus label sets stay bounded whatever applications put in their tags.

Windows: 1 h in 5-minute slots, 24 h in 1-hour slots (a window is exact to one slot: the
current slot and the ones before it), and UTC days (the last `days`). Time to deliver is a
histogram with log-spaced bins (ratio 2^(1/4), from 10 ms): it merges exactly across slots
and breakouts (a reservoir would not: a window's sample is not the union of its slots'),
takes fixed memory per slot whatever the volume, and reads p50/p95 within 10 % (a bin's
geometric middle). Unique opens and clicks remember the last `unique_keys` pairs (8-byte
hashes, about 70 bytes each in memory): a pair seen again after that counts again.
"""

from __future__ import annotations

import array
import base64
import bisect
import collections
import datetime
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

COUNTS: tuple[str, ...] = (
    "sent", "delivered", "hard_bounced", "soft_bounced", "complained", "unsubscribed",
    "opened_human", "opened_machine", "clicked_human", "clicked_machine",
    "opens_human_total", "opens_machine_total", "clicks_human_total", "clicks_machine_total",
    "deferred", "suppressed", "expired",
)
_AT = {name: i for i, name in enumerate(COUNTS)}
_PLAIN = {"accepted": "sent", "delivered": "delivered", "complained": "complained",
          "unsubscribed": "unsubscribed", "deferred": "deferred", "suppressed": "suppressed",
          "expired": "expired"}

OTHER = "_other"
TOTAL = "total"
DIMENSIONS = ("class", "provider", "ip")
WINDOWS: Mapping[str, tuple[int, int]] = {"1h": (300, 12), "24h": (3600, 24)}
"""Window name -> (slot seconds, slots)."""
DAY = 86400

BIN_BASE = 0.01
BIN_RATIO: float = 2 ** 0.25
BINS = 114
"""Bin 0: under 10 ms; bin i: [BASE * r^(i-1), BASE * r^i); the last one reaches past 30 days."""
PROMETHEUS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400,
                      86400)
"""`le` bounds of the exported time-to-deliver histograms (the sender's latency buckets)."""

Key = tuple[str, str]
"""(breakout, value): ("total", ""), ("class", "bulk"), ("tag:campaign", "spring")..."""


def delay_bin(seconds: float) -> int:
    if seconds < BIN_BASE:
        return 0
    return min(BINS - 1, 1 + int(math.log(seconds / BIN_BASE) / math.log(BIN_RATIO)))


def bin_value(index: int) -> float:
    """The value a bin stands for: its geometric middle (within r^(1/2) of any member)."""
    if index == 0:
        return BIN_BASE
    return float(BIN_BASE * BIN_RATIO ** (index - 0.5))


class Tally:
    """Counts and a sparse delay histogram of one breakout value in one slot."""

    __slots__ = ("counts", "delays")

    def __init__(self) -> None:
        self.counts = [0] * len(COUNTS)
        self.delays: dict[int, int] = {}

    def merge(self, other: Tally) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        for b, n in other.delays.items():
            self.delays[b] = self.delays.get(b, 0) + n

    def figures(self) -> dict[str, Any]:
        """The counts, the rates (None on a zero denominator) and p50/p95 of this tally."""
        c = dict(zip(COUNTS, self.counts, strict=True))
        sent, delivered = c["sent"], c["delivered"]
        final = delivered + c["hard_bounced"] + c["soft_bounced"]
        out: dict[str, Any] = dict(c)
        out.update(
            delivery_rate=_ratio(delivered, sent),
            hard_bounce_rate=_ratio(c["hard_bounced"], final),
            soft_bounce_rate=_ratio(c["soft_bounced"], final),
            complaint_rate=_ratio(c["complained"], delivered),
            unsubscribe_rate=_ratio(c["unsubscribed"], delivered),
            open_rate=_ratio(c["opened_human"], delivered),
            click_rate=_ratio(c["clicked_human"], delivered),
            deliver_p50_s=self.quantile(0.5),
            deliver_p95_s=self.quantile(0.95),
        )
        return out

    def quantile(self, q: float) -> float | None:
        total = sum(self.delays.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for b in sorted(self.delays):
            seen += self.delays[b]
            if seen >= rank:
                return float(f"{bin_value(b):.3g}")
        raise AssertionError("unreachable: rank <= total")


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


class Lifetime:
    """Counts since the book began (kept across restarts): Prometheus counters and histograms."""

    __slots__ = ("buckets", "counts", "delay_sum")

    def __init__(self) -> None:
        self.counts = [0] * len(COUNTS)
        self.buckets = [0] * (len(PROMETHEUS_BUCKETS) + 1)
        """Per `le` bound, not cumulative; the last is +Inf only."""
        self.delay_sum = 0.0


class _Slots:
    """Tallies per slot index (time // seconds); only the last `keep` slots are kept."""

    def __init__(self, seconds: int, keep: int) -> None:
        self.seconds = seconds
        self.keep = keep
        self.data: dict[int, dict[Key, Tally]] = {}
        self._pruned_at: int | None = None

    def tallies(self, at: float, now: float) -> dict[Key, Tally] | None:
        index, current = int(at // self.seconds), int(now // self.seconds)
        if index <= current - self.keep:
            return None  # older than anything reported
        if current != self._pruned_at:
            self.prune(current)
        found = self.data.get(index)
        if found is None:
            found = self.data[index] = {}
        return found

    def prune(self, current: int) -> None:
        for index in [i for i in self.data if i <= current - self.keep]:
            del self.data[index]
        self._pruned_at = current

    def merged(self, current: int) -> dict[Key, Tally]:
        out: dict[Key, Tally] = {}
        for index in range(current - self.keep + 1, current + 1):
            for key, tally in self.data.get(index, {}).items():
                out.setdefault(key, Tally()).merge(tally)
        return out

    def drop(self, keys: Callable[[Key], bool]) -> None:
        for tallies in self.data.values():
            for key in [k for k in tallies if keys(k)]:
                del tallies[key]


class _Seen:
    """The last `limit` (kind, message, recipient) hashes: a bounded memory of unique pairs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.order: collections.deque[int] = collections.deque()
        self.keys: set[int] = set()

    def first(self, *parts: str) -> bool:
        digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big")
        if key in self.keys:
            return False
        self.keys.add(key)
        self.order.append(key)
        while len(self.order) > self.limit:
            self.keys.discard(self.order.popleft())
        return True

    def export(self) -> str:
        return base64.b64encode(array.array("Q", self.order).tobytes()).decode()

    def restore(self, text: str) -> None:
        values = array.array("Q")
        values.frombytes(base64.b64decode(text))
        for key in values[-self.limit:]:
            if key not in self.keys:
                self.keys.add(key)
                self.order.append(key)


class KpiBook:
    """Observe events, read snapshots; one per sender (the pool's share on this pod)."""

    def __init__(
        self, *, tag_keys: Iterable[str] = (), max_values: int = 100,
        max_dimension_values: int = 256, days: int = 8, unique_keys: int = 100_000,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.max_values = max_values
        self.max_dimension_values = max_dimension_values
        self.days = days
        self._wall = wall
        self.tag_keys: tuple[str, ...] = ()
        self._slots = {name: _Slots(seconds, keep) for name, (seconds, keep) in WINDOWS.items()}
        self._days = _Slots(DAY, days)
        self._resolutions = (*self._slots.values(), self._days)
        self._next_sweep: dict[str, float] = {}
        """Per breakout, when its oldest admitted value can first go stale (no sweep before)."""
        self._lifetime: dict[Key, Lifetime] = {}
        self._values: dict[str, dict[str, float]] = {d: {} for d in DIMENSIONS}
        """Per breakout: admitted value -> last time seen (for the cap)."""
        self._seen = _Seen(unique_keys)
        self.ignored = 0
        """Events without a usable type or time."""
        self.changes = 0
        """Bumped on every counted event: the keeper saves only when it moved."""
        self.configure(tag_keys=tag_keys)

    def configure(self, *, tag_keys: Iterable[str]) -> None:
        """A new allow-list: a key no longer allowed loses its figures at once."""
        self.tag_keys = tuple(dict.fromkeys(tag_keys))
        dims = set(DIMENSIONS) | {f"tag:{k}" for k in self.tag_keys}
        for dim in [d for d in self._values if d not in dims]:
            del self._values[dim]
        for dim in dims:
            self._values.setdefault(dim, {})

        def gone(key: Key) -> bool:
            return key[0] != TOTAL and key[0] not in dims

        for slots in (*self._slots.values(), self._days):
            slots.drop(gone)
        for key in [k for k in self._lifetime if gone(k)]:
            del self._lifetime[key]

    # --- observing ------------------------------------------------------------------------

    def observe(self, event: Mapping[str, object]) -> None:
        """Count one event (a dict per the event schema); unusable ones are only counted in
        `ignored`, never raised: the KPIs must not stop the event stream."""
        figures = self._figures(event)
        at = _epoch(event.get("time"))
        if not figures or at is None:
            self.ignored += 1
            return
        now = self._wall()
        at = min(at, now)  # a producer's clock ahead of ours: counted now, in a reported slot
        keys = self._keys(event, at)
        delay = event.get("delay_s") if event.get("type") == "delivered" else None
        delay_s = float(delay) if isinstance(delay, int | float) and delay >= 0 else None
        b = delay_bin(delay_s) if delay_s is not None else -1
        at_ = [_AT[name] for name in figures]
        for slots in self._resolutions:
            tallies = slots.tallies(at, now)
            if tallies is None:
                continue
            for key in keys:
                tally = tallies.get(key)
                if tally is None:
                    tally = tallies[key] = Tally()
                for i in at_:
                    tally.counts[i] += 1
                if b >= 0:
                    tally.delays[b] = tally.delays.get(b, 0) + 1
        le = bisect.bisect_left(PROMETHEUS_BUCKETS, delay_s) if delay_s is not None else -1
        for key in keys:
            life = self._lifetime.get(key)
            if life is None:
                life = self._lifetime[key] = Lifetime()
            for i in at_:
                life.counts[i] += 1
            if delay_s is not None:
                life.buckets[le] += 1
                life.delay_sum += delay_s
        self.changes += 1

    def _figures(self, event: Mapping[str, object]) -> list[str]:
        kind = event.get("type")
        if kind in _PLAIN:
            return [_PLAIN[str(kind)]]
        if kind == "bounced":
            bounce = event.get("bounce")
            soft = isinstance(bounce, Mapping) and bounce.get("kind") == "soft"
            return ["soft_bounced" if soft else "hard_bounced"]
        if kind in ("opened", "clicked"):
            who = "machine" if event.get("machine") is True else "human"
            raw = f"{'opens' if kind == 'opened' else 'clicks'}_{who}_total"
            pair = (str(kind), who, str(event.get("message_id")), str(event.get("recipient")))
            if self._seen.first(*pair):
                return [raw, f"{kind}_{who}"]
            return [raw]
        return []

    def _keys(self, event: Mapping[str, object], at: float) -> list[Key]:
        keys: list[Key] = [(TOTAL, "")]
        for dim in DIMENSIONS:
            value = event.get(dim)
            if isinstance(value, str) and value:
                keys.append((dim, self._admit(dim, value, at, self.max_dimension_values)))
        tags = event.get("tags")
        if isinstance(tags, Mapping):
            for tag in self.tag_keys:
                value = tags.get(tag)
                if isinstance(value, str) and value:
                    keys.append((f"tag:{tag}", self._admit(f"tag:{tag}", value, at,
                                                           self.max_values)))
        return keys

    def _admit(self, dim: str, value: str, at: float, limit: int) -> str:
        """The value itself while there is room for it, else `_other`."""
        values = self._values[dim]
        if value in values:
            values[value] = max(values[value], at)
            return value
        if value == OTHER:
            return OTHER
        if len(values) >= limit and at >= self._next_sweep.get(dim, 0.0):
            retention = self.days * DAY
            for old in [v for v, seen in values.items() if seen < at - retention]:
                del values[old]
                self._lifetime.pop((dim, old), None)
            self._next_sweep[dim] = min(values.values(), default=at) + retention
        if len(values) >= limit:
            return OTHER
        values[value] = at
        return value

    # --- reading --------------------------------------------------------------------------

    def snapshot(self, now: datetime.datetime) -> dict[str, Any]:
        """{"windows": {"1h": slice, "24h": slice}, "days": {"YYYY-MM-DD": slice}} with
        slice = {"total": figures, "by": {"class": {value: figures}, "tag:campaign": ...}}."""
        t = now.timestamp()
        windows = {}
        for name, slots in self._slots.items():
            slots.prune(int(t // slots.seconds))
            windows[name] = self._slice(slots.merged(int(t // slots.seconds)))
        today = int(t // DAY)
        self._days.prune(today)
        days = {_date(index): self._slice(self._days.data[index])
                for index in sorted(self._days.data) if index <= today}
        return {"windows": windows, "days": days}

    def _slice(self, tallies: Mapping[Key, Tally]) -> dict[str, Any]:
        by: dict[str, dict[str, Any]] = {dim: {} for dim in self._values}
        for (dim, value), tally in sorted(tallies.items()):
            if dim != TOTAL and dim in by:
                by[dim][value] = tally.figures()
        total = tallies.get((TOTAL, "")) or Tally()
        return {"total": total.figures(), "by": by}

    def lifetime(self) -> dict[Key, Lifetime]:
        """Counts since the book began, per breakout value (the bounded label sets)."""
        return dict(self._lifetime)

    # --- persistence ----------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart, as JSON-able data sharing nothing
        with the book (another thread may encode it while events keep coming)."""
        resolutions = {}
        for slots in (*self._slots.values(), self._days):
            resolutions[str(slots.seconds)] = [
                [index, dim, value, _sparse(t.counts), {str(b): n for b, n in t.delays.items()}]
                for index, tallies in slots.data.items()
                for (dim, value), t in tallies.items()
            ]
        return {
            "v": 1,
            "resolutions": resolutions,
            "lifetime": [
                [dim, value, _sparse(life.counts), list(life.buckets), life.delay_sum]
                for (dim, value), life in self._lifetime.items()
            ],
            "values": {dim: dict(values) for dim, values in self._values.items()},
            "seen": self._seen.export(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Carry on from `export()`'s data; raises ValueError (and keeps nothing of it) when
        the data is not a state this version wrote."""
        try:
            fresh = KpiBook(
                tag_keys=self.tag_keys, max_values=self.max_values,
                max_dimension_values=self.max_dimension_values, days=self.days,
                unique_keys=self._seen.limit, wall=self._wall,
            )
            fresh._load(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a KPI state: {exc}") from exc
        fresh.configure(tag_keys=self.tag_keys)  # a key dropped while the pod was down
        self.__dict__.update(fresh.__dict__)

    def _load(self, state: Mapping[str, Any]) -> None:
        if state["v"] != 1:
            raise ValueError(f"version {state['v']!r}")
        by_seconds = {str(s.seconds): s for s in (*self._slots.values(), self._days)}
        for seconds, rows in state["resolutions"].items():
            slots = by_seconds[seconds]
            for index, dim, value, counts, delays in rows:
                tally = slots.data.setdefault(int(index), {}).setdefault(
                    (str(dim), str(value)), Tally())
                tally.counts = _dense(counts)
                tally.delays = {int(b): int(n) for b, n in delays.items()}
        for dim, value, counts, buckets, delay_sum in state["lifetime"]:
            life = self._lifetime[(str(dim), str(value))] = Lifetime()
            life.counts = _dense(counts)
            if len(buckets) != len(life.buckets):
                raise ValueError("histogram buckets changed")
            life.buckets = [int(n) for n in buckets]
            life.delay_sum = float(delay_sum)
        for dim, values in state["values"].items():
            self._values[str(dim)] = {str(v): float(at) for v, at in values.items()}
        self._seen.restore(state["seen"])


def _sparse(counts: list[int]) -> dict[str, int]:
    return {name: n for name, n in zip(COUNTS, counts, strict=True) if n}


def _dense(counts: Mapping[str, int]) -> list[int]:
    """Names this version does not know are dropped (a figure removed by an upgrade)."""
    return [int(counts.get(name, 0)) for name in COUNTS]


def _epoch(value: object) -> float | None:
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _date(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()
