"""The sandbox's event webhook, wired as a user would: the receiver (`webhook_receiver`) on
its own 127.x address over HTTPS with a sandbox CA certificate for that address, and the
objects that point a pool at it: the signing key Secret, the CA Secret, and `spec.events`.

Kept apart from the samples in data/samples on purpose: a pool naming a webhook needs senders
that deliver events (issue 20's sender side). `SandboxWorld` starts the receiver only with
`WorldSettings.webhook_receiver`; `enable_webhook_events` is what the demo calls, once that
side is merged, to point the pool at it. Each Secret holds one thing (the key, the CA).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from pathlib import Path
from typing import Any, Protocol

from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.webhook_receiver import WebhookReceiver

JSON = dict[str, Any]

WEBHOOK_HOST = "127.0.40.1"
WEBHOOK_NAME = "crm"
SIGNING_SECRET = "crm-webhook"
CA_SECRET = "crm-webhook-ca"
RETRY_FOR = "30m"
"""Long enough to outlast the demo's receiver outage: the outbox redelivers, nothing drops."""
TAG_METRICS = ("campaign",)


class _Api(Protocol):
    def create(self, obj: JSON, namespace: str = "") -> JSON: ...

    def patch(self, api_version: str, kind: str, name: str, patch: JSON,
              namespace: str = "", subresource: str = "") -> JSON: ...


async def start_receiver(stack: contextlib.AsyncExitStack, ca: SandboxCA,
                         record_dir: Path) -> WebhookReceiver:
    """The receiver with a fresh key, closed with `stack`; its events also go to
    `record_dir/events.jsonl` for other tools."""
    await asyncio.to_thread(record_dir.mkdir, parents=True, exist_ok=True)
    issued = ca.issue([f"{WEBHOOK_NAME}.hooks.example.test"], addresses=[WEBHOOK_HOST])
    receiver = WebhookReceiver({WEBHOOK_NAME: secrets.token_bytes(32)}, host=WEBHOOK_HOST,
                               ssl_context=issued.server_context(),
                               record_file=record_dir / "events.jsonl")
    return await stack.enter_async_context(receiver)


def _secret(name: str, namespace: str, data: dict[str, bytes]) -> JSON:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def webhook_objects(receiver: WebhookReceiver, ca: SandboxCA, namespace: str) -> list[JSON]:
    """The Secrets a user creates for the webhook: its signing key and the CA to trust."""
    return [
        _secret(SIGNING_SECRET, namespace, {"key": receiver.keys[WEBHOOK_NAME]}),
        _secret(CA_SECRET, namespace, {"ca.crt": ca.pem}),
    ]


def events_spec(receiver: WebhookReceiver) -> JSON:
    """The pool's `spec.events` pointing at the receiver."""
    return {
        "stdout": True,
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "url": receiver.url,
            "signingKeySecretRef": {"name": SIGNING_SECRET, "key": "key"},
            "caSecretRef": {"name": CA_SECRET, "key": "ca.crt"},
            "retryFor": RETRY_FOR,
        }],
        "tagMetricsAllow": list(TAG_METRICS),
    }


def enable_webhook_events(api: _Api, receiver: WebhookReceiver, ca: SandboxCA,
                          namespace: str, pool: str) -> None:
    """Create the Secrets, then point the pool's events at the receiver (merge patch)."""
    for obj in webhook_objects(receiver, ca, namespace):
        api.create(obj, namespace)
    api.patch("mailfleet.io/v1alpha1", "SendingPool", pool,
              {"spec": {"events": events_spec(receiver)}}, namespace)
