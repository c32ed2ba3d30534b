"""What a DomainAuth should publish, and what DNS answers mean for its conditions and status.

Pure (no I/O). The reconciler hands in the spec, the keys read from Secrets (with their
rotation state), the pools' IPs and the DNS answers it collected; this module returns the
desired records, per-record verdicts, the conditions and the status. Only DNS answers count
as proof of publication: a DNSEndpoint's own status says what external-dns *intended*.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from mailfleet_operator.api import common, domainauth
from mailfleet_operator.logic import conditions, keys, records, rotating, spf_lookups

DKIM_ROTATION_STALLED = "DKIMRotationStalled"
BIMI_VALID = "BIMIValid"
DNSENDPOINT_API_VERSION = "externaldns.k8s.io/v1alpha1"


@dataclasses.dataclass(frozen=True)
class StoredKey:
    """One key as read from its Secret (public half only: the private PEM stays behind)."""

    selector: str
    algorithm: keys.KeyAlgorithm
    generation: int
    secret_name: str
    public_b64: str | None
    problem: str | None = None
    activated_at: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """What DNS returned for (name, type): values with TXT strings joined.

    `error` set means the query failed (timeout, SERVFAIL) and says nothing about the record;
    an empty `values` with no error means the name has no such record.
    """

    values: tuple[str, ...] = ()
    error: str | None = None
    ttl: int | None = None
    """Seconds the record may be cached, as an authoritative nameserver serves it."""


Answers = Mapping[tuple[str, str], Answer]


def answer_key(name: str, rtype: str) -> tuple[str, str]:
    return (name.lower().rstrip("."), rtype.upper())


@dataclasses.dataclass(frozen=True)
class RecordCheck:
    record: records.DnsRecord
    published: bool
    problem: str | None
    failed: bool = False
    """The lookup itself failed: no verdict on the record."""
    absent: bool = False
    """DNS answered that the record is not there (at some nameserver)."""
    ttl: int | None = None
    """The longest TTL the authoritative nameservers serve the record with."""


# --- desired records ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Desired:
    """Records to publish, and spec problems that kept a record from being built."""

    records: tuple[records.DnsRecord, ...]
    errors: Mapping[str, str]
    """Family ("dkim", "spf", "dmarc", "bimi") -> message naming the spec field."""


def desired_records(
    *,
    spec: domainauth.DomainAuthSpec,
    published_keys: Sequence[StoredKey],
    pool_ips: Sequence[str],
    flattened: spf_lookups.Flattened | None = None,
) -> Desired:
    """Every record the domain needs now; DKIM records only for keys in a published state."""
    out: list[records.DnsRecord] = []
    errors: dict[str, str] = {}
    try:
        domain = records.check_domain(spec.domain)
    except records.RecordSpecError as error:
        return Desired(records=(), errors={f: str(error) for f in ("dkim", "spf", "dmarc")})

    for key in sorted(published_keys, key=lambda k: (-k.generation, k.selector)):
        if key.public_b64 is None:
            continue
        try:
            out.append(
                records.build_dkim_record(
                    domain=domain,
                    selector=key.selector,
                    key_type=keys.key_type_of(key.algorithm),
                    public_key_b64=key.public_b64,
                )
            )
        except records.RecordSpecError as error:
            errors["dkim"] = str(error)

    include = list(spec.spf.include)
    extra = list(spec.spf.extra_ips)
    if flattened is not None:
        include = [t.removeprefix("include:") for t in flattened.kept_terms]
        extra += list(flattened.networks)
    spf_names = [domain]
    if spec.return_path and spec.return_path.lower() != domain:
        spf_names.append(spec.return_path.lower())
    for name in spf_names:
        try:
            spf = records.build_spf_record(
                domain=name,
                pool_ips=pool_ips,
                extra_ips=extra,
                include=include,
                all_qualifier=spec.spf.all,
            )
            out.append(spf)
        except records.RecordSpecError as error:
            errors["spf"] = str(error)

    dmarc = spec.dmarc
    try:
        out.append(
            records.build_dmarc_record(
                domain=domain,
                policy=dmarc.policy,
                subdomain_policy=dmarc.subdomain_policy,
                pct=dmarc.pct,
                rua=dmarc.rua,
                ruf=dmarc.ruf,
                adkim=dmarc.adkim,
                aspf=dmarc.aspf,
            )
        )
    except records.RecordSpecError as error:
        errors["dmarc"] = str(error)

    if spec.bimi is not None:
        try:
            out.append(
                records.build_bimi_record(
                    domain=domain,
                    logo_url=spec.bimi.logo_url,
                    authority_url=spec.bimi.authority_url,
                    dmarc_policy=dmarc.policy,
                    dmarc_pct=dmarc.pct,
                    dmarc_subdomain_policy=dmarc.subdomain_policy,
                )
            )
        except records.RecordSpecError as error:
            errors["bimi"] = str(error)
    if spec.tlsrpt is not None:
        try:
            out.append(records.build_tlsrpt_record(domain=domain, rua=spec.tlsrpt.rua))
        except records.RecordSpecError as error:
            errors["tlsrpt"] = str(error)
    return Desired(records=tuple(out), errors=errors)


def questions(desired: Desired) -> list[tuple[str, str]]:
    """(name, type) pairs to ask DNS, once each."""
    seen: dict[tuple[str, str], None] = {}
    for record in desired.records:
        seen[answer_key(record.name, record.type)] = None
    return list(seen)


# --- checking answers --------------------------------------------------------------------------


def check_record(record: records.DnsRecord, answer: Answer | None) -> RecordCheck:
    """Presence and exact value; duplicates of a record that must be unique are problems."""
    if answer is None or answer.error is not None:
        reason = answer.error if answer else "not checked yet"
        return RecordCheck(record, False, f"DNS lookup failed: {reason}", failed=answer is not None)
    if record.type == "CNAME":
        got = [v.lower().rstrip(".") for v in answer.values]
        if got == [record.value.lower()]:
            return RecordCheck(record, True, None)
        return RecordCheck(record, False, _absent_or_other(got), absent=not got)
    relevant, same = _matcher(record)
    found = [v for v in answer.values if relevant(v)]
    if not found:
        return RecordCheck(record, False, "not in DNS", absent=True)
    if len(found) > 1:
        what = {"spf": "SPF records", "dmarc": "DMARC records", "bimi": "BIMI records",
                "tlsrpt": "TLS-RPT records"}.get(
            record.family, "records"
        )
        return RecordCheck(
            record, False, f"{len(found)} {what} at {record.name}, exactly one is allowed"
        )
    if same(found[0], record.value):
        return RecordCheck(record, True, None, ttl=answer.ttl)
    if record.family == "dkim":
        return RecordCheck(record, False, "DNS returns a different key for this selector")
    return RecordCheck(record, False, f"DNS returns a different value: {found[0]!r}")


def _absent_or_other(got: list[str]) -> str:
    return "not in DNS" if not got else f"DNS returns {', '.join(got)}"


def _matcher(record: records.DnsRecord) -> tuple[Any, Any]:
    if record.family == "spf":
        return records.is_spf, records.same_spf
    if record.family == "dmarc":
        return records.is_dmarc, records.same_tags
    if record.family == "bimi":
        return records.is_bimi, records.same_tags
    if record.family == "tlsrpt":
        return records.is_tlsrpt, records.same_tags
    # DKIM: any TXT at the selector name is a candidate; two of them confuse verifiers.
    return (lambda _v: True), records.same_dkim_key


def dkim_checks(checks: Sequence[RecordCheck]) -> dict[str, rotating.DnsCheck]:
    """Per-selector DNS verdicts for the rotation state machine."""
    out: dict[str, rotating.DnsCheck] = {}
    for check in checks:
        selector = check.record.selector
        if check.record.family != "dkim" or selector is None:
            continue
        if check.published:
            out[selector] = rotating.DnsCheck.MATCH
        elif check.failed:
            out[selector] = rotating.DnsCheck.FAILED
        elif check.absent:
            out[selector] = rotating.DnsCheck.ABSENT
        else:
            out[selector] = rotating.DnsCheck.MISMATCH
    return out


# --- conditions --------------------------------------------------------------------------------


def _publish_hint(record: records.DnsRecord) -> str:
    return f'{record.name} {record.type} "{record.value}"'


def dkim_verdict(
    *,
    generations: Sequence[rotating.Generation],
    checks: Sequence[RecordCheck],
    error: str | None,
    next_rotation_at: datetime.datetime | None,
    waiting_for: Sequence[str] = (),
) -> conditions.Verdict:
    """DKIMReady: true when an Active key exists and DNS returns exactly its record; the
    message says which pools hold the replaced key's retirement."""
    kind = domainauth.DKIM_READY
    if error:
        return conditions.Verdict(kind, False, "InvalidSpec", error)
    by_selector = {c.record.selector: c for c in checks if c.record.family == "dkim"}
    active = [g for g in generations if g.state == rotating.KeyState.ACTIVE]
    if active:
        current = active[-1]
        if current.problem:
            return conditions.Verdict(
                kind, False, "SecretInvalid",
                f"Active key {'+'.join(current.selectors)}: {current.problem}; restore the "
                "Secret, or delete it (or set the mailfleet.io/rotate annotation) to get a "
                "new key",
            )
        missing = [by_selector.get(s) for s in current.selectors]
        bad = [c for c in missing if c is None or not c.published]
        if bad:
            first = bad[0]
            hint = _publish_hint(first.record) if first else ""
            problem = first.problem if first else "not checked"
            reason = "LookupFailed" if first and first.failed else "ActiveKeyNotInDNS"
            return conditions.Verdict(
                kind, False, reason,
                f"Active selector {'+'.join(current.selectors)}: {problem}; publish {hint}",
            )
        when = f"; next rotation at {_rfc3339(next_rotation_at)}" if next_rotation_at else ""
        replaced = [
            "+".join(g.selectors) for g in active[:-1]
        ]
        held = (
            f"; {', '.join(replaced)} retires once every pool signs with "
            f"{'+'.join(current.selectors)}: {'; '.join(waiting_for)}"
            if replaced and waiting_for
            else ""
        )
        return conditions.Verdict(
            kind, True, "KeyActive",
            f"signing with selector {'+'.join(current.selectors)}{when}{held}",
        )
    broken = next((g for g in generations if g.problem), None)
    if broken is not None:
        return conditions.Verdict(
            kind, False, "SecretInvalid",
            f"key generation {broken.number}: {broken.problem}; the key is left untouched",
        )
    waiting = [c for c in checks if c.record.family == "dkim" and not c.published]
    if waiting:
        first = waiting[0]
        reason = (
            "AwaitingDNS" if first.absent
            else ("LookupFailed" if first.failed else "WrongKeyInDNS")
        )
        return conditions.Verdict(
            kind, False, reason,
            f"no Active key yet: {first.problem}; publish {_publish_hint(first.record)}",
        )
    return conditions.Verdict(kind, False, "KeyPending", "generating the first key")


def stalled_verdict(
    *, stalled: rotating.Generation | None, checks: Sequence[RecordCheck]
) -> conditions.Verdict:
    """DKIMRotationStalled: a new key stays Published because DNS never shows it."""
    if stalled is None:
        return conditions.Verdict(DKIM_ROTATION_STALLED, False, "NotStalled", "")
    hints = [
        f"{_publish_hint(c.record)} ({c.problem})"
        for c in checks
        if c.record.selector in stalled.selectors and not c.published
    ]
    return conditions.Verdict(
        DKIM_ROTATION_STALLED, True, "RecordNotInDNS",
        f"selector {'+'.join(stalled.selectors)} has been Published since "
        f"{_rfc3339(stalled.state_since)} but DNS does not return it; the switch waits. "
        f"Publish: {'; '.join(hints) or 'its record'}",
    )


def family_verdict(
    *,
    type_: str,
    family: str,
    checks: Sequence[RecordCheck],
    error: str | None,
    label: str,
    spf_count: spf_lookups.LookupCount | None = None,
) -> conditions.Verdict:
    """SPFValid / DMARCValid / BIMIValid from the checks of their records."""
    if error:
        return conditions.Verdict(type_, False, "InvalidSpec", error)
    mine = [c for c in checks if c.record.family == family]
    if not mine:
        return conditions.Verdict(type_, None, "NotChecked", f"no {label} record to check")
    for check in mine:
        if check.failed:
            return conditions.Verdict(
                type_, None, "LookupFailed", f"{check.record.name}: {check.problem}"
            )
        if not check.published:
            problem = check.problem or ""
            if " records at " in problem:
                reason = "DuplicateRecords"
            elif check.absent:
                reason = "NotPublished"
            else:
                reason = "WrongValue"
            return conditions.Verdict(
                type_, False, reason,
                f"{check.record.name}: {problem}; publish {_publish_hint(check.record)}",
            )
    if spf_count is not None:
        if spf_count.over_limit:
            return conditions.Verdict(
                type_, False, "TooManyLookups",
                f"the SPF record needs {spf_count.count} DNS lookups, RFC 7208 allows "
                f"{spf_lookups.LOOKUP_LIMIT}: receivers will fail it (permerror); drop includes "
                "or set spec.spf.flatten",
            )
        if spf_count.problems:
            return conditions.Verdict(
                type_, False, "IncludeError", "; ".join(spf_count.problems)
            )
        return conditions.Verdict(
            type_, True, "Valid",
            f"published; {spf_count.count} of {spf_lookups.LOOKUP_LIMIT} DNS lookups",
        )
    return conditions.Verdict(type_, True, "Valid", "published")


def invalid_spec_verdicts(message: str, *, bimi: bool = False) -> list[conditions.Verdict]:
    """Every condition false with the same message: nothing can be built from this spec."""
    types = [domainauth.DKIM_READY, domainauth.SPF_VALID, domainauth.DMARC_VALID]
    if bimi:
        types.append(BIMI_VALID)
    verdicts = [conditions.Verdict(t, False, "InvalidSpec", message) for t in types]
    return [*verdicts, conditions.ready_verdict(verdicts)]


# --- status ------------------------------------------------------------------------------------


def dkim_status(
    *,
    generations: Sequence[rotating.Generation],
    stored: Sequence[StoredKey],
    next_rotation_at: datetime.datetime | None,
) -> domainauth.DKIMStatus:
    by_generation = {g.number: g for g in generations}
    entries: list[domainauth.DKIMKey] = []
    for key in sorted(stored, key=lambda k: (-k.generation, k.selector)):
        generation = by_generation.get(key.generation)
        if generation is None:
            continue
        entries.append(
            domainauth.DKIMKey(
                selector=key.selector,
                algorithm=key.algorithm,
                state=generation.state.value,
                secret_name=key.secret_name,
                created_at=generation.created_at,
                activated_at=key.activated_at,
                retiring_since=(
                    generation.state_since
                    if generation.state == rotating.KeyState.RETIRING
                    else None
                ),
            )
        )

    def selectors_in(*states: rotating.KeyState) -> list[str]:
        chosen = [g for g in sorted(generations, key=lambda g: g.number) if g.state in states]
        return [",".join(_rsa_first(g)) for g in chosen]

    active = selectors_in(rotating.KeyState.ACTIVE)
    pending = selectors_in(*rotating.IN_PROGRESS)
    return domainauth.DKIMStatus(
        active=active[-1] if active else None,
        pending=pending[-1] if pending else None,
        retiring=selectors_in(rotating.KeyState.RETIRING),
        next_rotation_at=next_rotation_at,
        keys=entries,
    )


def _rsa_first(generation: rotating.Generation) -> list[str]:
    pairs = sorted(zip(generation.algorithms, generation.selectors, strict=False),
                   key=lambda p: p[0] == "ed25519")
    return [selector for _algorithm, selector in pairs]


def record_status(
    checks: Sequence[RecordCheck],
    *,
    checked_at: datetime.datetime | None,
    previous: Sequence[domainauth.DNSRecord] = (),
) -> list[domainauth.DNSRecord]:
    """Status of each record. `checkedAt` moves only when the verdict on the record changes:
    a check that finds DNS as it was writes nothing (status is not a heartbeat)."""
    before = {(r.name, r.type, r.value): r for r in previous}
    out = []
    for c in checks:
        entry = domainauth.DNSRecord(
            name=c.record.name,
            type=c.record.type,
            value=c.record.value,
            published=c.published,
            checked_at=checked_at,
            problem=c.problem,
        )
        old = before.get((entry.name, entry.type, entry.value))
        if old is not None and (old.published, old.problem) == (entry.published, entry.problem):
            entry = entry.model_copy(update={"checked_at": old.checked_at})
        out.append(entry)
    return out


def dns_endpoint_spec(desired: Desired, *, ttl: int) -> dict[str, Any]:
    """The `spec` of the DNSEndpoint external-dns publishes (one target per record value).

    A long TXT value is one target: external-dns providers split it into 255-byte strings
    when they write the zone, as RFC 7208/6376 readers join them back.
    """
    endpoints = [
        {
            "dnsName": record.name,
            "recordType": record.type,
            "recordTTL": ttl,
            "targets": [record.value],
        }
        for record in desired.records
    ]
    return {"endpoints": endpoints}


def _rfc3339(moment: datetime.datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_conditions(
    existing: Sequence[common.Condition],
    verdicts: Sequence[conditions.Verdict],
    *,
    now: datetime.datetime,
    generation: int | None,
) -> list[common.Condition]:
    return conditions.set_conditions(
        existing, verdicts, now=now, observed_generation=generation
    )
