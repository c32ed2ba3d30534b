"""DNS answers from every authoritative nameserver of a zone, and what they mean together.

Pure (no I/O). `reconcile.verifying` asks each nameserver of a record's zone directly; a
DKIM record counts as published only when all of them return it, since a receiver's resolver
may ask any of them (and a resolver's one answer may come from a single server or a cache).
"""

from __future__ import annotations

import dataclasses

from mailfleet_operator.logic import domainauths, records


@dataclasses.dataclass(frozen=True)
class ServerAnswer:
    """One authoritative nameserver's answer; `server` names it for messages."""

    server: str
    answer: domainauths.Answer


@dataclasses.dataclass(frozen=True)
class AtServers:
    """What every authoritative nameserver of the record's zone answered for it."""

    answers: tuple[ServerAnswer, ...] = ()
    error: str | None = None
    """Why the zone's nameservers are not known (no SOA, no NS): no verdict on the record."""


def check_at_servers(record: records.DnsRecord, at: AtServers | None) -> domainauths.RecordCheck:
    """Published only when every authoritative nameserver of the zone returns exactly the
    record: a resolver's answer may come from one server, or from a cache, and receivers'
    resolvers may ask any of them. The worst answer is reported, naming its server."""
    if at is None:
        return domainauths.RecordCheck(record, False, "not checked yet")
    if at.error is not None or not at.answers:
        why = at.error or "the zone has no NS records"
        return domainauths.RecordCheck(
            record, False, f"authoritative nameservers unknown: {why}", failed=True
        )
    checks = [(a.server, domainauths.check_record(record, a.answer)) for a in at.answers]
    if all(c.published for _, c in checks):
        ttls = [c.ttl for _, c in checks if c.ttl is not None]
        return domainauths.RecordCheck(record, True, None, ttl=max(ttls) if ttls else None)

    def rank(check: domainauths.RecordCheck) -> int:
        return 2 if check.failed else (1 if check.absent else 0)

    server, worst = min(((s, c) for s, c in checks if not c.published),
                        key=lambda pair: rank(pair[1]))
    missing = sum(1 for _, c in checks if not c.published)
    return dataclasses.replace(
        worst,
        problem=f"{worst.problem} at {server} ({missing} of {len(checks)} nameservers)",
    )
