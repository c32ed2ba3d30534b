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
import email.message
import email.policy
import email.utils
import gzip
import json
import time
import urllib.parse
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
        self._dirty: set[tuple[int, str]] = set()

    def _bucket(self, domain: str, policy_type: str, policy_string: tuple[str, ...],
                mx_patterns: tuple[str, ...]) -> PolicyCounts | None:
        index = int(self._wall() // self.period)
        domains = self._data.setdefault(index, {})
        if domain not in domains and len(domains) >= MAX_DOMAINS:
            return None
        policies = domains.setdefault(domain, {})
        self._dirty.add((index, domain))
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
        return self._take(int(self._wall() // self.period))

    def take_all(self) -> list[tuple[int, str, list[PolicyCounts]]]:
        """Every period, the current one too (the period length is changing)."""
        return self._take(None)

    def _take(self, before: int | None) -> list[tuple[int, str, list[PolicyCounts]]]:
        out: list[tuple[int, str, list[PolicyCounts]]] = []
        for index in sorted(i for i in self._data if before is None or i < before):
            for domain, policies in self._data.pop(index).items():
                self._dirty.discard((index, domain))
                out.append((index, domain, list(policies.values())))
        return out

    def take_dirty(self) -> list[tuple[int, str, list[PolicyCounts]]]:
        """The (period, domain) counts changed since the last call: what a flush writes."""
        out = []
        for index, domain in sorted(self._dirty):
            policies = self._data.get(index, {}).get(domain)
            if policies is not None:
                out.append((index, domain, list(policies.values())))
        self._dirty.clear()
        return out

    def mark_dirty(self, rows: list[tuple[int, str, list[PolicyCounts]]]) -> None:
        """A flush that failed: written again by the next one."""
        self._dirty.update((index, domain) for index, domain, _ in rows)

    def put_back(self, index: int, domain: str, policies: list[PolicyCounts]) -> None:
        """Counts read back from disk at start (or a move to the outbox that failed)."""
        self._data.setdefault(index, {})[domain] = {
            (p.policy_type, p.policy_string): p for p in policies
        }


def dump_policies(policies: list[PolicyCounts]) -> str:
    """The counts of one (period, domain) as JSON text (what the store keeps)."""
    return json.dumps([
        {
            "type": p.policy_type, "string": list(p.policy_string), "mx": list(p.mx_patterns),
            "ok": p.successes,
            "failures": [[dataclasses.astuple(f), n] for f, n in p.failures.items()],
        }
        for p in policies
    ], separators=(",", ":"))


def load_policies(text: str) -> list[PolicyCounts]:
    """The inverse of `dump_policies`."""
    out = []
    for item in json.loads(text):
        counts = PolicyCounts(item["type"], tuple(item["string"]), tuple(item["mx"]),
                              successes=int(item["ok"]))
        for key, n in item["failures"]:
            counts.failures[FailureKey(*key)] = int(n)
        out.append(counts)
    return out


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


def new_report_id(*, domain: str, index: int, period: float, pod: str) -> str:
    """Unique per pod and report: several pods each report their own sessions for the same
    domain and day (RFC 8460 allows several reports), told apart by the pod's name."""
    return f"{_iso(index * period)}_{domain}_{pod}_{uuid.uuid4().hex[:12]}"


def mailto_address(uri: str) -> str:
    """The address of a `mailto:` rua (query and percent-escapes removed)."""
    return urllib.parse.unquote(uri.removeprefix("mailto:").partition("?")[0]).strip()


def build_mail(
    *,
    report: dict[str, Any],
    body: bytes,
    domain: str,
    sender: str,
    recipient: str,
    now: float,
) -> bytes:
    """The RFC 8460 §5.3 message: multipart/report; report-type="tlsrpt" with a text part and
    the gzip report as `application/tlsrpt+gzip`, named as §5.1 says."""
    submitter = sender.rpartition("@")[2]
    report_id = str(report["report-id"])
    start = datetime.datetime.strptime(
        report["date-range"]["start-datetime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    end = datetime.datetime.strptime(
        report["date-range"]["end-datetime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=submitter)
    message["Subject"] = (
        f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
    )
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} about mail to {domain}"
        f" between {report['date-range']['start-datetime']} and"
        f" {report['date-range']['end-datetime']}.\n"
    )
    filename = (f"{submitter}!{domain}!{int(start.timestamp())}!{int(end.timestamp())}"
                f"!{report_id.rpartition('_')[2]}.json.gz")
    message.add_attachment(body, maintype="application", subtype="tlsrpt+gzip",
                           filename=filename)
    message.set_type("multipart/report")
    message.set_param("report-type", "tlsrpt")
    return message.as_bytes()
