"""`status.observedGeneration` is the generation the operator acted on (issue 15, item 7): an
IPWarmup whose new generation is held (here: an address that is not in its pool) reports the
problem in its conditions but keeps the last observed generation, so `kubectl wait`, Argo CD
and a user can tell that the edit has not been acted on. (SendingPool: test_pool_drift.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.reconcile import context, pod_admin, warmup_figures
from mailfleet_operator.reconcile import ipwarmup as reconciler
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import ManualClock, install_crds

NS = "default"
API = "mailfleet.io/v1alpha1"
IP = "192.0.2.50"


@pytest.fixture
async def ctx(kube_api: ApiServer, kubeconfig: Path) -> AsyncIterator[context.Context]:
    install_crds(kube_api)
    connection = kube_config.load_connection(str(kubeconfig))
    settings = settings_module.Settings(warmup_day_seconds=100.0, sender_image="s:t")
    async with kube_client.Client(connection) as client:
        yield context.Context(client=client, settings=settings, clock=ManualClock())
    warmup_figures.MEMORY.clear()


def ready(body: dict[str, Any]) -> str:
    return next(c["reason"] for c in body["status"]["conditions"] if c["type"] == "Ready")


async def test_an_ipwarmup_held_on_a_new_generation_keeps_the_last_observed_one(
    kube_api: ApiServer, ctx: context.Context
) -> None:
    kube_api.create(fake_senders.pool_body("mail", port=1, ips=[IP], namespace=NS))
    kube_api.create({"apiVersion": API, "kind": "IPWarmup",
                     "metadata": {"name": "new-ip", "namespace": NS},
                     "spec": {"poolRef": {"name": "mail"}, "addresses": [IP],
                              "schedule": {"linear": {"start": 100, "increment": 100}},
                              "target": 300}})
    async with pod_admin.PodAdmin(timeout=1.0) as admin:
        await reconciler.reconcile_warmup(ctx, admin, kube_api.get(API, "IPWarmup", "new-ip", NS))
        body = kube_api.get(API, "IPWarmup", "new-ip", NS)
        assert body["status"]["observedGeneration"] == 1
        assert body["status"]["phase"] == "WarmingUp"

        kube_api.patch(API, "IPWarmup", "new-ip", {"spec": {"addresses": ["192.0.2.99"]}}, NS)
        await reconciler.reconcile_warmup(ctx, admin, kube_api.get(API, "IPWarmup", "new-ip", NS))
        body = kube_api.get(API, "IPWarmup", "new-ip", NS)
        assert body["metadata"]["generation"] == 2
        assert ready(body) == "AddressNotInPool"
        assert body["status"]["observedGeneration"] == 1  # held, not acted on

        kube_api.patch(API, "IPWarmup", "new-ip", {"spec": {"addresses": [IP]}}, NS)
        await reconciler.reconcile_warmup(ctx, admin, kube_api.get(API, "IPWarmup", "new-ip", NS))
        body = kube_api.get(API, "IPWarmup", "new-ip", NS)
        assert body["status"]["observedGeneration"] == 3
