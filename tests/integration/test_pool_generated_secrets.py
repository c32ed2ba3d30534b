"""The pool's link-key and peer-token Secrets against the API emulator: created once with
random content, never rewritten by a reconcile (a key the user added for a rotation stays),
created again with the content the pods hold when deleted; and the pods mount them where the
rendered config looks, apart from the admin token."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import children, sender_config
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pool_children
from mailfleet_operator.reconcile.pool_state import Cycle, PoolMemory
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sender import config as sc
from mailfleet_sender import link_keys

NS = "default"
BODY = {"metadata": {"name": "mail", "namespace": NS, "uid": "u-1"}}
NAMES = children.Names("mail")
NOW = 1_750_000_000.0


@pytest.fixture
async def ctx() -> AsyncIterator[ctx_module.Context]:
    async with ApiServer(host="127.0.0.1", port=0) as api, kube_client.Client(
            kube_config.Connection(server=api.url)) as client:
        yield cast(ctx_module.Context, SimpleNamespace(client=client))


async def _data(ctx: ctx_module.Context, name: str) -> dict[str, str]:
    secret = await ctx.client.get(resources.SECRETS, name=name, namespace=NS)
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


async def _ensure(ctx: ctx_module.Context, memory: PoolMemory, now: float = NOW) -> Cycle:
    cycle = Cycle()
    await pool_children.ensure_generated_secrets(ctx, BODY, NAMES, memory, cycle, now)
    return cycle


async def test_created_once_and_a_users_rotation_is_never_undone(
    ctx: ctx_module.Context,
) -> None:
    memory = PoolMemory()
    await _ensure(ctx, memory)
    links, peers = await _data(ctx, "mail-links"), await _data(ctx, "mail-peers")
    [(name, key)] = links.items()
    assert name == f"key-{int(NOW)}" and len(key) >= link_keys.MIN_KEY_BYTES
    assert len(peers["token"]) >= 32
    admin = await pool_children.ensure_admin_secret(ctx, BODY, NAMES, memory, Cycle())
    assert admin not in (key, peers["token"])  # one purpose per secret

    # The user rotates: a new key added next to the old one.
    await ctx.client.patch(resources.SECRETS, name="mail-links", namespace=NS, patch={
        "data": {"key-1750000600": base64.b64encode(b"n" * 32).decode()}})
    cycle = await _ensure(ctx, memory, now=NOW + 3600)
    assert cycle.writes == 0
    assert await _data(ctx, "mail-links") == {name: key, "key-1750000600": "n" * 32}
    assert await _data(ctx, "mail-peers") == peers


async def test_a_deleted_secret_comes_back_with_the_keys_the_pods_hold(
    ctx: ctx_module.Context,
) -> None:
    memory = PoolMemory()
    await _ensure(ctx, memory)
    before = await _data(ctx, "mail-links")
    await ctx.client.delete(resources.SECRETS, name="mail-links", namespace=NS)
    cycle = await _ensure(ctx, memory, now=NOW + 60)
    assert await _data(ctx, "mail-links") == before
    assert [reason for _, reason, _ in cycle.events] == ["ChildRecreated"]
    # An operator that never saw it (restarted meanwhile) can only make new keys.
    await ctx.client.delete(resources.SECRETS, name="mail-links", namespace=NS)
    await _ensure(ctx, PoolMemory(), now=NOW + 120)
    assert await _data(ctx, "mail-links") != before


def test_the_pods_mount_them_where_the_rendered_config_looks() -> None:
    spec = sp.SendingPoolSpec.model_validate({"replicas": 2})
    rendered = sender_config.render_config(sender_config.RenderInput(
        name="mail", namespace=NS, spec=spec, active_pods=2, domain_auths={}))
    cfg = sc.parse_config(rendered.text)  # the sender accepts it: a pool with its keys
    pool = children.PoolObjects(name="mail", namespace=NS, uid="u-1", replicas=2,
                                secret_mounts=rendered.mounts)
    pod = children.build_statefulset(spec, pool)["spec"]["template"]["spec"]
    mounted: dict[str, Any] = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = next((v for v in pod["volumes"] if v["name"] == mount["name"]), {})
        if "secret" in volume:  # (the spool is a claim template, not a pod volume)
            mounted[mount["mountPath"]] = volume["secret"]["secretName"]
    d = cfg.deliverability
    assert d.link_key_dir is not None and d.peer_token_file is not None
    assert mounted[d.link_key_dir] == "mail-links"
    assert mounted[d.peer_token_file.rsplit("/", 1)[0]] == "mail-peers"
    assert cfg.admin_token_file is not None
    assert mounted[cfg.admin_token_file.rsplit("/", 1)[0]] == "mail-admin"
