"""The demo's transport-security scene (issue 19), apart from `scenes` (which is long enough):
written like the others (`scenes._scene`, checks on what the receivers recorded), run by
`make demo` after `gateway_mode` and before `accounting`, which then counts its mail too.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter

import aiohttp

from mailfleet_sandbox import scenes, secure_transport
from mailfleet_sandbox.world import SandboxWorld, wait_until

ENFORCED_DOMAIN = secure_transport.ENFORCED.domains[0]
DANE_DOMAIN = secure_transport.DANE.domains[0]


@scenes._scene("mta_sts_enforce", "MTA-STS enforce: a bad certificate defers the mail (never "
                                  "sent in clear); once fixed, it goes over TLS")
async def mta_sts_enforce(result: scenes.SceneResult, world: SandboxWorld,
                          ledger: scenes.Ledger, count: int = 4,
                          within: float = 45.0) -> None:
    """Make enforced.test's MX present an expired certificate, send `count` messages there
    (and two to the DANE domain), wait until the receiver saw every pod that took one give
    up on the handshake at least twice (a first try and a retry) with nothing delivered, then
    give the MX a valid certificate back: every message must arrive, over TLS."""
    receiver = world.fleet[secure_transport.ENFORCED.name]
    dane_receiver = world.fleet[secure_transport.DANE.name]
    transport = world.transport
    resolver = transport.resolver
    secure_before = resolver.outcomes["secure"] if resolver is not None else 0
    good = receiver.starttls_context
    receiver.starttls_context = transport.ca.issue(
        [secure_transport.ENFORCED.mx_host], expired=True).server_context()
    started = time.time()
    try:
        async with aiohttp.ClientSession() as session:
            sent = [await scenes.submit(world, ledger, session, klass="transactional",
                                        rcpt=f"user{i:03d}@{ENFORCED_DOMAIN}",
                                        scene="mta_sts_enforce")
                    for i in range(count)]
            dane_sent = [await scenes.submit(world, ledger, session, klass="transactional",
                                             rcpt=f"user{i:03d}@{DANE_DOMAIN}",
                                             scene="dane")
                         for i in range(2)]
        accepted = [s for s in sent if s.status == 202]
        result.check("every submission accepted", len(accepted) == count,
                     f"{len(accepted)}/{count}")
        holders = world.ip_holders()
        senders = {ip for ip, pod in holders.items() if pod in {s.pod for s in accepted}}

        def refused_twice() -> bool:
            seen = Counter(ip for ip, t in receiver.tls_failures if t >= started)
            return bool(senders) and all(seen[ip] >= 2 for ip in senders)

        await wait_until(refused_twice, within=within,
                         what="each sending IP to give up on the expired certificate twice")
        result.timings["deferred_s"] = round(time.time() - started, 2)
        early = [m for m in receiver.messages if m.received_at >= started]
        held = [s for s in accepted
                if s.message_id not in {scenes.message_id_of(m) for m in early}]
        result.details["mta_sts_deferred"] = len(held)
        result.details["refused_handshakes"] = sum(
            1 for _, t in receiver.tls_failures if t >= started)
        result.check("nothing delivered while the certificate is bad (not sent in clear)",
                     not early, f"{len(early)} delivered, tls {[m.tls for m in early]}")
        result.check("the MTA-STS policy was fetched from the policy host",
                     ENFORCED_DOMAIN in transport.policies.requests,
                     f"requests {transport.policies.requests}")
    finally:
        receiver.starttls_context = good
    fixed = time.time()
    left = await scenes.settle(world, ledger, within=within, scene="mta_sts_enforce")
    got = scenes.received_index(world)
    arrived = [got[s.message_id][0] for s in accepted if s.message_id in got]
    result.timings["delivered_after_fix_s"] = round(time.time() - fixed, 2)
    result.check("every message delivered once the certificate is fixed",
                 bool(accepted) and not left, f"{len(arrived)}/{len(accepted)} received")
    result.check("every message came over TLS", bool(arrived) and all(m.tls for m in arrived),
                 f"tls {Counter(m.tls for m in arrived)}")
    dane_left = await scenes.settle(world, ledger, within=within, scene="dane")
    dane_arrived = [m for m in dane_receiver.messages if m.received_at >= started]
    secure = (resolver.outcomes["secure"] if resolver is not None else 0) - secure_before
    result.details["dane"] = {"delivered": len(dane_arrived), "validated_answers": secure}
    result.check("mail to the DNSSEC/DANE domain delivered over TLS after validated lookups",
                 not dane_left and len(dane_arrived) == len(dane_sent)
                 and all(m.tls for m in dane_arrived) and secure > 0,
                 f"{len(dane_arrived)}/{len(dane_sent)} received, {secure} secure answers")

    def failures_reported() -> int:
        """Failed sessions for the enforce domain in the reports POSTed to its https rua."""
        failed = 0
        for path, body in transport.policies.reports:
            if path != secure_transport.TLSRPT_PATH:
                continue
            try:
                report = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
            except (OSError, ValueError):
                continue
            for entry in report.get("policies") or []:
                if (entry.get("policy") or {}).get("policy-domain") == ENFORCED_DOMAIN:
                    failed += int((entry.get("summary") or {}).get(
                        "total-failure-session-count") or 0)
        return failed

    # Reports go out when the sender's report period (the sandbox's day) ends.
    day = world.settings.warmup_day_seconds
    try:
        await wait_until(lambda: failures_reported() > 0, within=2 * day + within,
                         what=f"a TLS-RPT report naming the failures for {ENFORCED_DOMAIN}")
    except TimeoutError:
        pass  # the check below says what arrived
    result.details["tlsrpt_reports"] = transport.tlsrpt_reports(world.fleet)
    result.check("a TLS-RPT report with the failed handshakes reached the reporting address",
                 failures_reported() > 0,
                 f"{result.details['tlsrpt_reports']} reports, "
                 f"{failures_reported()} failed sessions reported for {ENFORCED_DOMAIN}")
