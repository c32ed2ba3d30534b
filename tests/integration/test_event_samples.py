"""The sandbox's webhook wiring (`event_samples`) against the API emulator with the CRDs: the
Secrets and the pool's spec.events it writes are accepted, and the operator renders from them
a webhook that verifies against the receiver's certificate with the mounted CA and signs with
the receiver's key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import event_config
from mailfleet_sandbox import event_samples, world
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.kube import ApiServer

NS = "mail"


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    async with ApiServer(host="127.0.0.1", port=0) as server:
        crd = yaml.safe_load((world.CRD_DIR / "sendingpools.mailfleet.io.yaml").read_text())
        server.create(crd)
        for _ in range(100):
            got = server.get("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                             crd["metadata"]["name"])
            if (world.condition(got, "Established") or {}).get("status") == "True":
                break
            await asyncio.sleep(0.05)
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield server


async def test_the_pool_points_at_the_receiver_with_its_key_and_ca(
    api: ApiServer, tmp_path: Path
) -> None:
    sample = next(p for p in world.sample_files() if "sendingpool" in p.name)
    pool = yaml.safe_load(sample.read_text())
    api.create({**pool, "metadata": {**pool["metadata"], "namespace": NS}}, NS)
    ca = SandboxCA()
    async with contextlib.AsyncExitStack() as stack:
        receiver = await event_samples.start_receiver(stack, ca, tmp_path / "hooks")
        assert receiver.url.startswith(f"https://{event_samples.WEBHOOK_HOST}:")
        event_samples.enable_webhook_events(api, receiver, ca, NS, pool["metadata"]["name"])

        stored = api.get("mailfleet.io/v1alpha1", "SendingPool", pool["metadata"]["name"], NS)
        spec = sp.SendingPoolSpec.model_validate(stored["spec"])
        secrets = {
            name: frozenset(api.get("v1", "Secret", name, NS)["data"])
            for name in event_config.secret_names(spec)
        }
        rendered = event_config.render_events(spec, "marketing", secrets)
        assert rendered.problems == ()
        [hook] = rendered.events["webhooks"]
        assert hook["url"] == receiver.url and hook["caFile"].endswith("/ca.crt")

        # What the pod's files would hold: the key the receiver checks, a CA that verifies it.
        key = base64.b64decode(api.get("v1", "Secret", event_samples.SIGNING_SECRET, NS)
                               ["data"]["key"])
        assert key == receiver.keys[event_samples.WEBHOOK_NAME]
        ca_file = tmp_path / "ca.crt"
        ca_file.write_bytes(base64.b64decode(
            api.get("v1", "Secret", event_samples.CA_SECRET, NS)["data"]["ca.crt"]))
        client = ssl.create_default_context(cafile=str(ca_file))
        reader, writer = await asyncio.open_connection(
            event_samples.WEBHOOK_HOST, receiver.port, ssl=client)
        writer.close()
        await writer.wait_closed()
        del reader
