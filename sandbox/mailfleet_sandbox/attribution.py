"""Which pod sent a received message, read from the pool's sealed trace header.

The receivers see only the egress IP (every pod greets with the IP's HELO name), and the pod
that accepted a message is not always the one that sent it (a hand-off moves queued mail to
the holder of its IP). The sender seals a trace into each message whose message reference
starts with the sending pod's name; the sandbox reads the pool's link keys from its
`<pool>-links` Secret, as the pods mount them, and opens it with any of them.
"""

from __future__ import annotations

import base64

from mailfleet_sender import link_keys, reports

from mailfleet_sandbox.providers import ReceivedMessage
from mailfleet_sandbox.world import SandboxWorld


def trace_key(world: SandboxWorld, pool: str) -> list[bytes]:
    """The pool's link keys (any of them may have sealed a trace), from its links Secret."""
    secret = world.api.get("v1", "Secret", f"{pool}-links", world.settings.namespace)
    keys = [
        link_keys.LinkKey(name=name, since=int(match.group(1)),
                          secret=base64.b64decode(value).strip())
        for name, value in (secret.get("data") or {}).items()
        if (match := link_keys.KEY_NAME.match(name))
    ]
    if not keys:
        raise KeyError(f"no link key in {pool}-links")
    return [key.secret for key in link_keys.order(keys)]


def sending_pod(message: ReceivedMessage, key: bytes | list[bytes]) -> str:
    """The pod that sent `message` ("" when it carries no trace this key opens)."""
    value = message.header(reports.TRACE_HEADER)
    if not value:
        return ""
    try:
        trace = reports.decode_trace(value, key)
    except reports.ReportError:
        return ""
    return trace.message_id.partition(".")[0]
