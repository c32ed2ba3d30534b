"""RFC 3464 / RFC 6533 typed addresses of DSN recipient fields. Pure (no I/O).

`Final-Recipient` and `Original-Recipient` are `address-type ";" generic-address`; the type is
any atom: `rfc822` (xtext-encoded when it comes from ORCPT), `utf-8` (RFC 6533: `\\x{HHHH}`
escapes, then xtext), `unknown` (e.g. `unknown; nair_s`) or anything else, kept as sent.
"""

from __future__ import annotations

import re

__all__ = ["typed_recipient"]

_ADDRESS_TYPE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")
_UNITEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _decode_xtext(text: str) -> str:
    """RFC 3461 xtext (`+2B` for "+") as DSNs carry ORCPT values."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), text)


def _decode_unitext(text: str) -> str:
    """RFC 6533 utf-8-addr-unitext/xtext: `\\x{HHHH}` escapes, then xtext."""
    decoded = _UNITEXT.sub(lambda m: chr(int(m.group(1), 16)), text)
    return _decode_xtext(decoded)


def typed_recipient(value: str | None) -> tuple[str, str] | None:
    """`type; address` -> (type, decoded address); the type defaults to rfc822 (or unknown when
    the value is no address), since real DSNs often omit it. Any atom is a valid type
    (RFC 3464 2.3.2); only rfc822 and utf-8 are decoded, others are kept as sent."""
    if value is None:
        return None
    kind, sep, rest = value.partition(";")
    if sep and _ADDRESS_TYPE.match(kind.strip()):
        address_type, raw = kind.strip().lower(), rest.strip()
    else:
        raw = value.strip()
        address_type = "rfc822" if "@" in raw else "unknown"
    if address_type == "utf-8":
        raw = _decode_unitext(raw)
    elif address_type == "rfc822":
        raw = _decode_xtext(raw)
    address = raw.strip().strip("<>").strip()
    return (address_type, address) if address else None
