"""The DomainAuth reconciler: gather, evaluate with pure functions, apply once.

Gather: the DomainAuth (fresh from the API), its key Secrets (adopting retained ones), the
SendingPools that sign for it (their egress IPs go into SPF; what their pods report signing
with decides when a replaced key retires), and what DNS answers for every record (DKIM at
every authoritative nameserver of the zone).
Evaluate: `logic.rotating` picks at most one key transition; `logic.domainauths` builds the
records, checks DNS answers and derives conditions and status.
Apply, in an order that makes every crash point safe to resume: new key Secrets (created
once, never overwritten), then the DNSEndpoint, then the Secrets' state annotations (the
rotation's durable record), then one status patch if anything changed (a check that finds
DNS as it was writes nothing), then events.

Private key material is only ever in the Secret bodies built by `logic.key_secrets`; it never
reaches status, events or logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

import pydantic
from mailfleet_sender import units

from mailfleet_operator import metrics
from mailfleet_operator.api import common, domainauth
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    authoritative_answers,
    conditions,
    domainauths,
    key_secrets,
    keys,
    merge_patches,
    records,
    rotating,
    spf_lookups,
)
from mailfleet_operator.reconcile import context, dkim_secrets, verifying

KIND = domainauth.KIND


async def reconcile(ctx: context.Context, *, namespace: str, name: str) -> context.Outcome:
    """Converge one DomainAuth; returns when it wants to be looked at again."""
    body = await ctx.client.get(resources.DOMAIN_AUTHS, name=name, namespace=namespace)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return context.Outcome(requeue_after=ctx.settings.error_delay)
    return await _reconcile(ctx, body)


async def _reconcile(ctx: context.Context, body: dict[str, Any]) -> context.Outcome:
    log = context.object_logger(KIND, body)
    now = ctx.clock.now()
    metadata = body["metadata"]
    generation = metadata.get("generation")
    old_status = _read_status(body)
    try:
        spec = domainauth.DomainAuthSpec.model_validate(body.get("spec") or {})
        records.check_domain(spec.domain)
        records.check_selector(f"{spec.dkim.selector_prefix}-1")
    except pydantic.ValidationError as error:
        message = "; ".join(common.describe_errors(error, prefix="spec"))
        return await _invalid(ctx, body, old_status, message, now=now, generation=generation)
    except records.RecordSpecError as error:
        return await _invalid(ctx, body, old_status, str(error), now=now, generation=generation)

    interval = units.parse_duration(spec.verification.interval)
    namespace = metadata["namespace"]
    domain = spec.domain.lower()
    found = await dkim_secrets.gather(ctx, body, domain=domain)
    secrets = found.mine
    await dkim_secrets.converge_retention(
        ctx, body, secrets, retention=spec.dkim.key_retention
    )
    pools = referencing_pools(
        await ctx.client.list(resources.SENDING_POOLS, namespace=namespace),
        name=metadata["name"],
    )
    pool_ips = _pool_ips(pools)
    verifier = verifying.Verifier(
        _nameservers(ctx, spec), timeout=ctx.settings.dns_timeout,
        authoritative_port=ctx.settings.dns_authoritative_port,
    )

    generations = key_secrets.group_generations(secrets)
    stored = [s.stored for s in secrets]

    # DNS for every key not yet retired, so the state machine sees the truth about each.
    probe = domainauths.desired_records(
        spec=spec,
        published_keys=[
            k for k in stored if _state_of(generations, k) != rotating.KeyState.RETIRED
        ],
        pool_ips=pool_ips,
    )
    flattened = None
    if spec.spf.flatten and spec.spf.include:
        flattened = await asyncio.to_thread(
            spf_lookups.flatten_includes, list(spec.spf.include),
            resolver=verifier.spf_resolver(),
        )
    answers: dict[tuple[str, str], domainauths.Answer] = {}
    at_servers: dict[tuple[str, str], authoritative_answers.AtServers] = {}
    await _ask(verifier, probe.records, answers, at_servers)
    probed = _check(probe.records, answers, at_servers)
    dns_view = domainauths.dkim_checks(probed)

    policy = rotating.Policy(
        algorithms=keys.algorithms_for(spec.dkim.algorithm),
        selector_prefix=spec.dkim.selector_prefix,
        rotate_every=units.parse_duration(spec.dkim.rotate_every),
        overlap=units.parse_duration(spec.dkim.overlap),
        history_limit=spec.dkim.revision_history_limit,
        stall_after=interval * ctx.settings.stall_checks,
        default_ttl=datetime.timedelta(seconds=spec.publish.ttl),
    )
    ttls = {
        c.record.selector: datetime.timedelta(seconds=c.ttl)
        for c in probed
        if c.record.family == "dkim" and c.record.selector and c.ttl is not None
    }
    signing = _pool_signing(pools, domain=domain)
    plan = rotating.plan_rotation(
        generations=generations,
        policy=policy,
        now=now,
        rotate_annotation=str((metadata.get("annotations") or {}).get(
            key_secrets.ROTATE_ANNOTATION, ""
        )),
        dns=dns_view,
        ttls=ttls,
        pools=signing,
        taken=found.taken,
    )
    transition = plan.transition

    # --- apply: key Secrets first (created once), so every later step can reference them.
    if transition is not None and transition.create is not None:
        created = await dkim_secrets.create_keys(
            ctx, body, spec, transition.create, secrets, now=now
        )
        secrets = [*secrets, *created]
        stored = [s.stored for s in secrets]
    after = (
        rotating.apply_transition(generations, transition, now=now)
        if transition is not None
        else generations
    )
    published_keys = [k for k in stored if _state_of(after, k) in rotating.PUBLISHED_STATES]
    desired = domainauths.desired_records(
        spec=spec, published_keys=published_keys, pool_ips=pool_ips, flattened=flattened
    )
    await _ask(verifier, desired.records, answers, at_servers)

    await _publish(ctx, body, spec, desired)
    await dkim_secrets.record_seen(ctx, secrets, plan, namespace=namespace, now=now)
    if transition is not None and transition.changes:
        await dkim_secrets.record_transition(
            ctx, secrets, transition, namespace=namespace, now=now
        )
    for number in plan.prune:
        for secret in secrets:
            if secret.stored.generation == number:
                await ctx.client.delete(
                    resources.SECRETS, name=secret.secret_name, namespace=namespace
                )
    if plan.prune:
        secrets = [s for s in secrets if s.stored.generation not in plan.prune]
        after = [g for g in after if g.number not in plan.prune]

    # --- evaluate the outcome for status and conditions.
    checks = _check(desired.records, answers, at_servers)
    for check in checks:
        result = "published" if check.published else (
            "failed" if check.failed else ("missing" if check.absent else "wrong")
        )
        metrics.DNS_VERIFICATIONS.labels(family=check.record.family, result=result).inc()
    spf_count = None
    spf_record = next((c for c in checks if c.record.family == "spf"), None)
    if spf_record is not None:
        spf_count = await asyncio.to_thread(
            spf_lookups.count_lookups, spf_record.record.value, resolver=verifier.spf_resolver()
        )
    next_rotation = _next_rotation(after, policy)
    # The plan as it stands after this step (what status and conditions describe).
    after = [
        dataclasses.replace(g, seen_at=now) if g.number in plan.seen
        else dataclasses.replace(g, seen_at=None) if g.number in plan.unseen
        else g
        for g in after
    ]
    settled = rotating.plan_rotation(
        generations=after, policy=policy, now=now, rotate_annotation="", dns=dns_view,
        ttls=ttls, pools=signing,
    )
    verdicts = [
        domainauths.dkim_verdict(
            generations=after, checks=checks, error=desired.errors.get("dkim"),
            next_rotation_at=next_rotation,
            waiting_for=settled.waiting_for,
        ),
        domainauths.family_verdict(
            type_=domainauth.SPF_VALID, family="spf", checks=checks,
            error=desired.errors.get("spf"), label="SPF", spf_count=spf_count,
        ),
        domainauths.family_verdict(
            type_=domainauth.DMARC_VALID, family="dmarc", checks=checks,
            error=desired.errors.get("dmarc"), label="DMARC",
        ),
    ]
    if spec.bimi is not None:
        verdicts.append(
            domainauths.family_verdict(
                type_=domainauths.BIMI_VALID, family="bimi", checks=checks,
                error=desired.errors.get("bimi"), label="BIMI",
            )
        )
    verdicts.append(conditions.ready_verdict(verdicts))
    verdicts.append(domainauths.stalled_verdict(stalled=settled.stalled, checks=checks))

    new_conditions = conditions.set_conditions(
        old_status.conditions, verdicts, now=now, observed_generation=generation
    )
    dkim = domainauths.dkim_status(
        generations=after, stored=[s.stored for s in secrets], next_rotation_at=next_rotation
    )
    new_status = domainauth.DomainAuthStatus(
        observed_generation=generation,
        conditions=new_conditions,
        records=domainauths.record_status(
            checks, checked_at=now, previous=old_status.records
        ),
        dkim=dkim,
        active_selector=dkim.active,
    )
    changed = await _write_status(ctx, body, old_status, new_status)

    # --- events last: they describe what is now true.
    if transition is not None:
        metrics.DKIM_TRANSITIONS.labels(reason=transition.reason).inc()
        if transition.kind == rotating.TransitionKind.SWITCH:
            metrics.DKIM_ROTATIONS.inc()
        log.info(
            "dkim transition",
            extra={"reason": transition.reason, "detail": transition.message},
        )
        await _event(ctx, body, "Normal", transition.reason, transition.message)
    for change in conditions.changed_conditions(old_status.conditions, new_conditions):
        if change.type == domainauth.READY and change.old_status == change.new.status:
            continue  # Ready repeats the reason of the condition that changed
        if change.old_status is None and change.new.status == "False" and (
            change.type == domainauths.DKIM_ROTATION_STALLED
        ):
            continue  # "not stalled" on a new object is no news
        bad = change.new.status == (
            "True" if change.type == domainauths.DKIM_ROTATION_STALLED else "False"
        )
        await _event(
            ctx, body, "Warning" if bad else "Normal", change.new.reason,
            f"{change.type}={change.new.status}: {change.new.message}".rstrip(": "),
        )

    if transition is not None:
        requeue = ctx.settings.step_delay
    else:
        requeue = ctx.clock.real_seconds(interval)
        if plan.next_check is not None:
            requeue = min(requeue, ctx.clock.real_seconds(plan.next_check - now) + 0.05)
    return context.Outcome(requeue_after=max(requeue, 0.05), changed=changed)


# --- gather ------------------------------------------------------------------------------------


def _read_status(body: dict[str, Any]) -> domainauth.DomainAuthStatus:
    try:
        return domainauth.DomainAuthStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        return domainauth.DomainAuthStatus()


def _nameservers(ctx: context.Context, spec: domainauth.DomainAuthSpec) -> verifying.Nameservers:
    if ctx.settings.dns_nameservers:
        return verifying.Nameservers.parse(ctx.settings.dns_nameservers)
    return verifying.Nameservers.parse(
        spec.verification.nameservers, default_port=spec.verification.port
    )


def referencing_pools(pools: list[dict[str, Any]], *, name: str) -> list[dict[str, Any]]:
    """SendingPools listing this DomainAuth in `spec.domains`."""
    return [p for p in pools if name in ((p.get("spec") or {}).get("domains") or [])]


def _pool_ips(pools: list[dict[str, Any]]) -> list[str]:
    """The pools' egress IPs (they go into SPF)."""
    ips: list[str] = []
    for pool in pools:
        egress = (pool.get("spec") or {}).get("egress") or {}
        for entry in egress.get("ips") or []:
            if isinstance(entry, dict) and isinstance(entry.get("address"), str):
                ips.append(entry["address"])
    return ips


def _pool_signing(pools: list[dict[str, Any]], *, domain: str) -> list[rotating.PoolSigning]:
    """What each pool reports its pods sign `domain` with (`status.dkim`)."""
    out = []
    for pool in pools:
        entries = (pool.get("status") or {}).get("dkim") or []
        selectors = frozenset(
            str(e["selector"])
            for e in entries
            if isinstance(e, dict) and str(e.get("domain", "")).lower() == domain
            and e.get("selector")
        )
        out.append(rotating.PoolSigning(pool=pool["metadata"]["name"], selectors=selectors))
    return out


async def _ask(
    verifier: verifying.Verifier,
    wanted: tuple[records.DnsRecord, ...],
    answers: dict[tuple[str, str], domainauths.Answer],
    at_servers: dict[tuple[str, str], authoritative_answers.AtServers],
) -> None:
    """Ask DNS what is not asked yet: DKIM records at every authoritative nameserver of the
    zone (a key's life depends on them), the others at the resolver (what receivers see)."""
    dkim = {domainauths.answer_key(r.name, r.type) for r in wanted if r.family == "dkim"}
    other = {domainauths.answer_key(r.name, r.type) for r in wanted if r.family != "dkim"}
    if todo := [q for q in dkim if q not in at_servers]:
        at_servers.update(await verifier.authoritative(todo))
    if todo := [q for q in other if q not in answers]:
        answers.update(await verifier.answers(todo))


def _check(
    wanted: tuple[records.DnsRecord, ...],
    answers: dict[tuple[str, str], domainauths.Answer],
    at_servers: dict[tuple[str, str], authoritative_answers.AtServers],
) -> list[domainauths.RecordCheck]:
    checks = []
    for record in wanted:
        key = domainauths.answer_key(record.name, record.type)
        if record.family == "dkim":
            checks.append(authoritative_answers.check_at_servers(record, at_servers.get(key)))
        else:
            checks.append(domainauths.check_record(record, answers.get(key)))
    return checks


def _state_of(
    generations: list[rotating.Generation], key: domainauths.StoredKey
) -> rotating.KeyState | None:
    for generation in generations:
        if generation.number == key.generation:
            return generation.state
    return None


def _next_rotation(
    generations: list[rotating.Generation], policy: rotating.Policy
) -> datetime.datetime | None:
    active = [g for g in generations if g.state == rotating.KeyState.ACTIVE]
    return active[-1].created_at + policy.rotate_every if active else None


# --- apply -------------------------------------------------------------------------------------


async def _publish(
    ctx: context.Context,
    body: dict[str, Any],
    spec: domainauth.DomainAuthSpec,
    desired: domainauths.Desired,
) -> None:
    """ExternalDNS mode: one DNSEndpoint owned by the DomainAuth. Manual: none (status lists
    the records), and one left from an earlier ExternalDNS mode is removed."""
    metadata = body["metadata"]
    if spec.publish.mode == "ExternalDNS":
        await ctx.client.apply_child(
            resources.DNS_ENDPOINTS,
            owner=body,
            body={
                "metadata": {
                    "name": metadata["name"],
                    "labels": {
                        "app.kubernetes.io/managed-by": "mailfleet",
                        key_secrets.LABEL_DOMAINAUTH: key_secrets.label_value(metadata["name"]),
                    },
                },
                "spec": domainauths.dns_endpoint_spec(desired, ttl=spec.publish.ttl),
            },
        )
    else:
        await delete_dns_endpoint(ctx, body)


async def key_secret_names(ctx: context.Context, body: dict[str, Any]) -> list[str]:
    """Names of the key Secrets the DomainAuth uses (for the deletion event)."""
    domain = str((body.get("spec") or {}).get("domain", "")).lower()
    found = await dkim_secrets.gather(ctx, body, domain=domain)
    return sorted(s.secret_name for s in found.mine)


async def delete_dns_endpoint(ctx: context.Context, body: dict[str, Any]) -> bool:
    """Remove the DomainAuth's DNSEndpoint if there is one (and the CRD exists at all)."""
    metadata = body["metadata"]
    current = None
    try:
        current = await ctx.client.get(
            resources.DNS_ENDPOINTS, name=metadata["name"], namespace=metadata["namespace"]
        )
    except kube_client.ApiError:
        return False  # no DNSEndpoint CRD in this cluster: nothing to remove
    if current is None:
        return False
    owners = current.get("metadata", {}).get("ownerReferences") or []
    if not any(o.get("uid") == metadata.get("uid") for o in owners):
        return False  # not ours: leave it
    return await ctx.client.delete(
        resources.DNS_ENDPOINTS, name=metadata["name"], namespace=metadata["namespace"]
    )


async def _write_status(
    ctx: context.Context,
    body: dict[str, Any],
    old: domainauth.DomainAuthStatus,
    new: domainauth.DomainAuthStatus,
) -> bool:
    """One merge patch of `.status`, only when something changed (removed fields nulled)."""
    patch = merge_patches.diff(body.get("status") or {}, common.dump_status(new))
    if not patch:
        return False
    metadata = body["metadata"]
    await ctx.client.patch_status(
        resources.DOMAIN_AUTHS, name=metadata["name"], namespace=metadata["namespace"],
        status=patch,
    )
    return True


async def _invalid(
    ctx: context.Context,
    body: dict[str, Any],
    old: domainauth.DomainAuthStatus,
    message: str,
    *,
    now: datetime.datetime,
    generation: int | None,
) -> context.Outcome:
    """A spec nothing can be built from: say so in every condition, touch nothing else, and
    look again only at the normal pace (an edit of the spec triggers a reconcile anyway)."""
    verdicts = domainauths.invalid_spec_verdicts(
        message, bimi=bool((body.get("spec") or {}).get("bimi"))
    )
    new_conditions = conditions.set_conditions(
        old.conditions, verdicts, now=now, observed_generation=generation
    )
    # observedGeneration stays at the last generation acted on: nothing was done for this one.
    new = old.model_copy(update={"conditions": new_conditions})
    await _write_status(ctx, body, old, new)
    if conditions.changed_conditions(old.conditions, new_conditions):
        await _event(ctx, body, "Warning", "InvalidSpec", message)
    return context.Outcome(requeue_after=ctx.clock.real_seconds(datetime.timedelta(minutes=5)))


async def _event(
    ctx: context.Context, body: dict[str, Any], type_: str, reason: str, message: str
) -> None:
    try:
        await ctx.client.post_event(
            regarding=body,
            type_="Warning" if type_ == "Warning" else "Normal",
            reason=reason,
            message=message,
            now=ctx.clock.now(),
        )
    except kube_client.ApiError as error:
        context.object_logger(KIND, body).warning(
            "event not posted", extra={"reason": reason, "error": str(error)}
        )
