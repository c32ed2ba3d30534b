"""Sandbox pod networking shim, loaded by every sandbox pod's Python (PYTHONPATH).

In Kubernetes each pod has its own network namespace, so a server that binds the wildcard
address 0.0.0.0 listens on the pod's IP only, and pods never collide on a port. Sandbox pods
share the host's loopback instead, each with its own 127.x address ($POD_IP): this shim turns a
wildcard IPv4 bind of a listening socket into a bind of $POD_IP, which is what the wildcard means
inside a pod. Sockets bound to a specific address (a sender's leased egress IP) are untouched.
"""

from __future__ import annotations

import os
import socket
from typing import Any

_POD_IP = os.environ.get("POD_IP", "")
_original_bind = socket.socket.bind


def _pod_bind(self: socket.socket, address: Any) -> None:
    if (
        _POD_IP
        and self.family == socket.AF_INET
        and isinstance(address, tuple)
        and address[0] in ("", "0.0.0.0")
        and address[1]
    ):
        address = (_POD_IP, *address[1:])
    _original_bind(self, address)


if _POD_IP:
    socket.socket.bind = _pod_bind  # type: ignore[method-assign,assignment]
