"""Names this sender gives itself on the wire (no I/O): the EHLO name.

RFC 5321 §4.1.1.1: EHLO takes a domain or an address literal. A name with a space or a
control character is refused by aiosmtplib at connect time, which used to end the worker
mid-delivery; such names are refused when the config or the assignment is read instead.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_helo_name(value: str) -> bool:
    """A domain (LDH labels, at most 253 characters) or an address literal ([192.0.2.1],
    [IPv6:2001:db8::1])."""
    if value.startswith("[") and value.endswith("]"):
        inner = value[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
            else:
                ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    name = value[:-1] if value.endswith(".") else value
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def check_helo_name(value: str) -> str:
    """For pydantic validators: the name, or ValueError saying what is wrong."""
    if not is_helo_name(value):
        raise ValueError(f"{value!r} is not a valid EHLO name (a domain or an address literal)")
    return value
