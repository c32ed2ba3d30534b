"""TLS-RPT (RFC 8460): per policy domain and report period, the count of successful and failed
TLS sessions with the failure details, and the JSON report (gzip) built from them. Pure (no
I/O): sending is `tlsrpt_sending`'s business.

Only domains with a policy (DANE TLSA or MTA-STS) are counted, as RFC 8460 §4 describes the
report; a failed MTA-STS fetch for a domain with no cached policy is counted as a failure of
type `sts-policy-fetch-error` under policy type `no-policy-found`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import gzip
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from mailfleet_sender import delivering, tls_policy

MAX_DOMAINS = 10_000
"""Policy domains counted per period; the rest are not reported (bounded memory)."""


@dataclasses.dataclass(frozen=True)
class FailureKey:
    result: str
    sending_ip: str = ""
    mx_host: str = ""
    receiving_ip: str = ""
    detail: str = ""


@dataclasses.dataclass
class PolicyCounts:
    policy_type: str
    policy_string: tuple[str, ...]
    mx_patterns: tuple[str, ...]
    successes: int = 0
    failures: collections.Counter[FailureKey] = dataclasses.field(
        default_factory=collections.Counter
    )


class Aggregator:
    """Counts per (period, domain, policy). `wall`: Unix seconds (injectable)."""

    def __init__(self, *, wall: Callable[[], float] = time.time, period: float = 86400.0) -> None:
        self._wall = wall
        self.period = period
        self._data: dict[int, dict[str, dict[tuple[str, tuple[str, ...]], PolicyCounts]]] = {}

    def _bucket(self, domain: str, policy_type: str, policy_string: tuple[str, ...],
                mx_patterns: tuple[str, ...]) -> PolicyCounts | None:
        index = int(self._wall() // self.period)
        domains = self._data.setdefault(index, {})
        if domain not in domains and len(domains) >= MAX_DOMAINS:
            return None
        policies = domains.setdefault(domain, {})
        key = (policy_type, policy_string)
        counts = policies.get(key)
        if counts is None:
            counts = policies[key] = PolicyCounts(policy_type, policy_string, mx_patterns)
        return counts

    def session(self, *, domain: str, policy: tls_policy.DomainPolicy,
                event: delivering.TlsEvent, source_ip: str = "") -> None:
        """One connection to a host under DANE or MTA-STS."""
        host = policy.host(event.host)
        if event.mode == tls_policy.Mode.DANE:
            kind = "tlsa"
            text = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in host.tlsa)
            patterns: tuple[str, ...] = ()
        else:
            kind = "sts"
            sts = policy.sts
            text = tuple(sts.text.splitlines()) if sts is not None else ()
            patterns = sts.mx if sts is not None else ()
        counts = self._bucket(domain, kind, text, patterns)
        if counts is None:
            return
        if event.result == tls_policy.Result.SUCCESS and event.tls:
            counts.successes += 1
            return
        counts.failures[FailureKey(
            result=str(event.result), sending_ip=source_ip, mx_host=event.host,
            receiving_ip=event.address, detail=event.detail[:200],
        )] += 1

    def policy_error(self, domain: str, result: tls_policy.Result, detail: str) -> None:
        counts = self._bucket(domain, "no-policy-found", (), ())
        if counts is not None:
            counts.failures[FailureKey(result=str(result), detail=detail[:200])] += 1

    def take_finished(self) -> list[tuple[int, str, list[PolicyCounts]]]:
        """(period, domain, policies) of every period that has ended, removed from memory."""
        current = int(self._wall() // self.period)
        out: list[tuple[int, str, list[PolicyCounts]]] = []
        for index in sorted(i for i in self._data if i < current):
            for domain, policies in self._data.pop(index).items():
                out.append((index, domain, list(policies.values())))
        return out

    def put_back(self, index: int, domain: str, policies: list[PolicyCounts]) -> None:
        """A report that could not be sent yet is kept for the next try."""
        self._data.setdefault(index, {})[domain] = {
            (p.policy_type, p.policy_string): p for p in policies
        }


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(
    *,
    domain: str,
    index: int,
    period: float,
    policies: list[PolicyCounts],
    organization: str,
    contact: str,
    report_id: str | None = None,
) -> dict[str, Any]:
    """The RFC 8460 §4.4 JSON object for one domain and period."""
    start = index * period
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": _iso(start), "end-datetime": _iso(start + period - 1)},
        "contact-info": contact,
        "report-id": report_id or f"{_iso(start)}_{domain}_{uuid.uuid4().hex[:12]}",
        "policies": [
            {
                "policy": {
                    "policy-type": p.policy_type,
                    **({"policy-string": list(p.policy_string)} if p.policy_string else {}),
                    "policy-domain": domain,
                    **({"mx-host": list(p.mx_patterns)} if p.mx_patterns else {}),
                },
                "summary": {
                    "total-successful-session-count": p.successes,
                    "total-failure-session-count": sum(p.failures.values()),
                },
                **({"failure-details": [
                    {
                        "result-type": f.result,
                        **({"sending-mta-ip": f.sending_ip} if f.sending_ip else {}),
                        **({"receiving-mx-hostname": f.mx_host} if f.mx_host else {}),
                        **({"receiving-ip": f.receiving_ip} if f.receiving_ip else {}),
                        "failed-session-count": n,
                        **({"additional-information": f.detail} if f.detail else {}),
                    }
                    for f, n in sorted(p.failures.items(), key=lambda kv: kv[0].result)
                ]} if p.failures else {}),
            }
            for p in policies
        ],
    }


def encode_report(report: dict[str, Any]) -> bytes:
    """gzip of the JSON (RFC 8460 §5.3: application/tlsrpt+gzip)."""
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode(), mtime=0)


def parse_rua(texts: list[str]) -> list[str]:
    """The `rua` URIs of the one `v=TLSRPTv1` record among TXT strings (RFC 8460 §3); empty
    when there is none or more than one."""
    records = [t for t in texts if t.strip().startswith("v=TLSRPTv1")]
    if len(records) != 1:
        return []
    for part in records[0].split(";")[1:]:
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == "rua":
            return [u.strip() for u in value.split(",") if u.strip().startswith(
                ("mailto:", "https:"))]
    return []
