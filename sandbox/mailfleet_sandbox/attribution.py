"""Which pod sent a received message, read from the pool's sealed trace header.

The receivers see only the egress IP (every pod greets with the IP's HELO name), and the pod
that accepted a message is not always the one that sent it (a hand-off moves queued mail to
the holder of its IP). The sender seals a trace into each message whose message reference
starts with the sending pod's name; the sandbox derives the pool's trace key from the admin
token as the senders do and opens it.
"""

from __future__ import annotations

import base64
import tempfile

from mailfleet_sender import config as sender_config
from mailfleet_sender import deliverability, reports

from mailfleet_sandbox.providers import ReceivedMessage
from mailfleet_sandbox.world import SandboxWorld


def trace_key(world: SandboxWorld, pool: str) -> bytes:
    """The pool's trace key, derived from its admin token as the senders derive it."""
    secret = world.api.get("v1", "Secret", f"{pool}-admin", world.settings.namespace)
    token = base64.b64decode((secret.get("data") or {})["token"]).decode().splitlines()[0]
    keys = deliverability.load_keys(sender_config.SenderConfig(pool=pool),
                                    admin_token=token.strip(), spool_dir=tempfile.gettempdir())
    return keys.trace


def sending_pod(message: ReceivedMessage, key: bytes) -> str:
    """The pod that sent `message` ("" when it carries no trace this key opens)."""
    value = message.header(reports.TRACE_HEADER)
    if not value:
        return ""
    try:
        trace = reports.decode_trace(value, key)
    except reports.ReportError:
        return ""
    return trace.message_id.partition(".")[0]
