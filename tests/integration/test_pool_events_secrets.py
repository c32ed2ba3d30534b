"""The Secrets of a pool's events and tracking against the API emulator: the tracking key is
generated only for a pool with spec.tracking, never rewritten, and comes back with the key the
pods hold when deleted; the webhook Secrets are checked by their keys only (a missing one, or
one without its key, leaves that webhook out)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import cast

import pytest
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import children, event_config
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pool_children, pool_events
from mailfleet_operator.reconcile.pool_state import Cycle, PoolMemory
from mailfleet_sandbox.kube import ApiServer

NS = "default"
BODY = {"metadata": {"name": "mail", "namespace": NS, "uid": "u-1"}}
NAMES = children.Names("mail")
NOW = 1_750_000_000.0


@pytest.fixture
async def ctx() -> AsyncIterator[ctx_module.Context]:
    async with ApiServer(host="127.0.0.1", port=0) as api, kube_client.Client(
            kube_config.Connection(server=api.url)) as client:
        yield cast(ctx_module.Context, SimpleNamespace(client=client))


async def _ensure(ctx: ctx_module.Context, memory: PoolMemory, *, tracking: bool) -> Cycle:
    cycle = Cycle()
    await pool_children.ensure_generated_secrets(ctx, BODY, NAMES, memory, cycle, NOW,
                                                 tracking=tracking)
    return cycle


async def _key(ctx: ctx_module.Context) -> bytes | None:
    secret = await ctx.client.get(resources.SECRETS, name="mail-tracking-key", namespace=NS)
    if secret is None:
        return None
    return base64.b64decode(secret["data"]["key"])


async def test_the_tracking_key_exists_only_with_tracking_and_outlives_a_deletion(
    ctx: ctx_module.Context,
) -> None:
    memory = PoolMemory()
    await _ensure(ctx, memory, tracking=False)
    assert await _key(ctx) is None
    await _ensure(ctx, memory, tracking=True)
    key = await _key(ctx)
    assert key is not None and len(key) >= 32
    secret = await ctx.client.get(resources.SECRETS, name="mail-tracking-key", namespace=NS)
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert (await _ensure(ctx, memory, tracking=True)).writes == 0  # never rewritten
    # Deleted by hand: back with the key the pods (and the links already sent) use.
    await ctx.client.delete(resources.SECRETS, name="mail-tracking-key", namespace=NS)
    cycle = await _ensure(ctx, memory, tracking=True)
    assert await _key(ctx) == key
    assert [reason for _, reason, _ in cycle.events] == ["ChildRecreated"]
    # Tracking turned off: the key stays (links sent with it still point at the pods).
    await _ensure(ctx, memory, tracking=False)
    assert await _key(ctx) == key


async def test_webhooks_are_rendered_from_what_the_secrets_hold(ctx: ctx_module.Context) -> None:
    spec = sp.SendingPoolSpec.model_validate({"events": {"webhooks": [
        {"name": "crm", "url": "https://crm.example.com/in",
         "signingKeySecretRef": {"name": "crm-hook"}},
        {"name": "bi", "url": "https://bi.example.com/in",
         "signingKeySecretRef": {"name": "bi-hook", "key": "hmac"}},
        {"name": "ops", "url": "https://ops.example.com/in",
         "signingKeySecretRef": {"name": "ops-hook"}},
    ]}})
    for name, data in (("crm-hook", {"key": "c2VjcmV0"}), ("bi-hook", {"key": "c2VjcmV0"})):
        await ctx.client.create(resources.SECRETS, namespace=NS, body={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data})
    found = await pool_events.read_secret_keys(ctx, NS, event_config.secret_names(spec), {})
    assert found == {"crm-hook": frozenset({"key"}), "bi-hook": frozenset({"key"}),
                     "ops-hook": None}
    rendered = event_config.render_events(spec, "mail", found)
    assert [w["name"] for w in rendered.events["webhooks"]] == ["crm"]
    assert {(p.webhook, p.reason) for p in rendered.problems} == {
        ("bi", "SecretKeyMissing"), ("ops", "SecretMissing")}
    # The user adds the missing Secret: the next read puts the webhook back.
    await ctx.client.create(resources.SECRETS, namespace=NS, body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ops-hook"},
        "data": {"key": "c2VjcmV0"}})
    found = await pool_events.read_secret_keys(ctx, NS, event_config.secret_names(spec), found)
    rendered = event_config.render_events(spec, "mail", found)
    assert [w["name"] for w in rendered.events["webhooks"]] == ["crm", "ops"]
