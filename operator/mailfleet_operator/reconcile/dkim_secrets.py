"""The DomainAuth's key Secrets in the API: found, adopted, created once, annotated.

I/O around `logic.key_secrets` (the layout and parsing, pure). The Secrets are the rotation's
durable record, and they are private keys: nothing here ever rewrites a Secret's data (they
are created `immutable`), and a Secret is deleted only by the history limit of Retired keys.

Retention (`spec.dkim.keyRetention`), like cert-manager's Secret of a Certificate:
- Retain (default): key Secrets carry no owner reference, so deleting the DomainAuth (or
  re-creating it, e.g. by a GitOps tool) leaves every private key in place. A DomainAuth of
  the same name and domain adopts them, and resumes the rotation where the Secrets say.
- Delete: the DomainAuth is the Secrets' controller owner; they go with it.
Switching between the two adds or removes the owner reference on the existing Secrets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

from mailfleet_operator.api import domainauth
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import key_secrets, keys, rotating
from mailfleet_operator.reconcile import context


@dataclasses.dataclass(frozen=True)
class Found:
    """The DomainAuth's key Secrets, and the generation numbers taken by others."""

    mine: list[key_secrets.KeySecret]
    taken: int
    """The highest generation number of a labelled Secret that is not adopted (another
    domain's key, or one still owned by a deleted DomainAuth): new keys count on from it so
    their deterministic names never meet an existing Secret."""


async def gather(ctx: context.Context, body: dict[str, Any], *, domain: str) -> Found:
    """Key Secrets labelled with this DomainAuth's name that are its to use: owned by it, or
    owned by nobody (retained) and made for the same domain."""
    metadata = body["metadata"]
    items = await ctx.client.list(
        resources.SECRETS,
        namespace=metadata["namespace"],
        label_selector=f"{key_secrets.LABEL_DOMAINAUTH}={key_secrets.label_value(metadata['name'])}",
    )
    now = ctx.clock.now()
    mine: list[key_secrets.KeySecret] = []
    taken = 0
    for item in items:
        parsed = key_secrets.read_key_secret(item, now=now)
        if parsed is None:
            continue
        owned = metadata.get("uid") in parsed.owner_uids
        adoptable = not parsed.owner_uids and parsed.domain.lower() == domain
        if owned or adoptable:
            mine.append(parsed)
        else:
            # Another domain's key, or a deleted DomainAuth's (Delete) on its way out.
            taken = max(taken, parsed.stored.generation)
    return Found(mine=mine, taken=taken)


async def converge_retention(
    ctx: context.Context,
    body: dict[str, Any],
    secrets: list[key_secrets.KeySecret],
    *,
    retention: domainauth.KeyRetention,
) -> None:
    """Owner reference on each key Secret as `retention` says, and every key Secret
    immutable (metadata and the immutable flag only: the data is never touched)."""
    metadata = body["metadata"]
    uid = metadata.get("uid")
    for secret in secrets:
        patch: dict[str, Any] = {}
        others = [dict(o) for o in secret.owner_references if o.get("uid") != uid]
        owned = uid in secret.owner_uids
        if retention == "Delete" and not owned:
            patch["metadata"] = {
                "ownerReferences": [*others, kube_client.owner_reference(body)]
            }
        elif retention == "Retain" and owned:
            patch["metadata"] = {"ownerReferences": others or None}
        if not secret.immutable:
            patch["immutable"] = True
        if not patch:
            continue
        await ctx.client.patch(
            resources.SECRETS, name=secret.secret_name, namespace=metadata["namespace"],
            patch=patch,
        )
        context.object_logger(domainauth.KIND, body).info(
            "key secret retention", extra={"secret": secret.secret_name, "retention": retention}
        )


async def create_keys(
    ctx: context.Context,
    body: dict[str, Any],
    spec: domainauth.DomainAuthSpec,
    new: rotating.NewGeneration,
    existing: list[key_secrets.KeySecret],
    *,
    now: datetime.datetime,
) -> list[key_secrets.KeySecret]:
    """Create the generation's missing Secrets; an existing Secret is kept as it is."""
    have = {s.stored.selector for s in existing}
    created: list[key_secrets.KeySecret] = []
    namespace = body["metadata"]["namespace"]
    for algorithm, selector in zip(new.algorithms, new.selectors, strict=True):
        if selector in have:
            continue
        key = await asyncio.to_thread(keys.generate_key, algorithm)
        secret = key_secrets.key_secret_body(
            domainauth=body["metadata"]["name"], domain=spec.domain.lower(), selector=selector,
            generation=new, key=key, now=now,
        )
        if spec.dkim.key_retention == "Delete":
            secret["metadata"]["ownerReferences"] = [kube_client.owner_reference(body)]
        try:
            result = await ctx.client.create(resources.SECRETS, body=secret, namespace=namespace)
        except kube_client.Conflict:
            # Same deterministic name already there (a step interrupted earlier, or a
            # leftover): never overwrite a key; read what is there instead.
            result = await ctx.client.get(
                resources.SECRETS, name=secret["metadata"]["name"], namespace=namespace
            ) or {}
        parsed = key_secrets.read_key_secret(result, now=now)
        if parsed is not None:
            created.append(parsed)
    return created


async def record_transition(
    ctx: context.Context,
    secrets: list[key_secrets.KeySecret],
    transition: rotating.Transition,
    *,
    namespace: str,
    now: datetime.datetime,
) -> None:
    changes = dict(transition.changes)
    for secret in secrets:
        state = changes.get(secret.stored.generation)
        if state is None or secret.state == state:
            continue
        await ctx.client.patch(
            resources.SECRETS,
            name=secret.secret_name,
            namespace=namespace,
            patch={
                "metadata": {"annotations": key_secrets.state_annotations(state=state, now=now)}
            },
        )


async def record_seen(
    ctx: context.Context,
    secrets: list[key_secrets.KeySecret],
    plan: rotating.Plan,
    *,
    namespace: str,
    now: datetime.datetime,
) -> None:
    """Stamp (or clear) when DNS showed a generation at every authoritative nameserver."""
    for secret in secrets:
        number = secret.stored.generation
        if number in plan.seen and secret.seen_at is None:
            seen_at: datetime.datetime | None = now
        elif number in plan.unseen and secret.seen_at is not None:
            seen_at = None
        else:
            continue
        await ctx.client.patch(
            resources.SECRETS, name=secret.secret_name, namespace=namespace,
            patch={"metadata": {"annotations": key_secrets.seen_annotations(seen_at=seen_at)}},
        )
