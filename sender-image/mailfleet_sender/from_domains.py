"""Which sender domains a submission credential may use (pure, no I/O).

A leaked submission key must not let its holder send as every domain the pool signs for:
`submission.smtpFromDomains` / `httpFromDomains` name the domains a listener's credentials may
put in the From header (and in the envelope sender when one is given). A subdomain is not
implied: `example.com` does not allow `news.example.com`. An empty list allows any domain.

The check runs on the final message bytes, after the JSON form was built into a message, so
SMTP, raw HTTP and JSON submissions are judged alike.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence

from mailfleet_sender import hostnames, messages

REFUSED = messages.Rejection(
    550, "5.7.1", "Sender domain not allowed for this credential", http_status=403
)


def normalize(domain: str) -> str:
    """Lower case, no trailing dot; ValueError when it is not a domain name."""
    name = domain.strip().rstrip(".").lower()
    if not name or name.startswith("[") or not hostnames.is_helo_name(name):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def header_from_addresses(data: bytes) -> list[str] | None:
    """Addresses of the From header(s); None when the header section cannot be read."""
    split = messages.split_header_section(data)
    fields = messages.header_fields(split[0]) if split else None
    if fields is None:
        return None
    values: list[str] = []
    for name, raw in fields:
        if name == "from":
            try:
                values.append(messages.header_value(raw))
            except UnicodeDecodeError:
                return None
    return [address for _, address in email.utils.getaddresses(values) if address]


def refusal(
    allowed: Sequence[str], *, data: bytes, envelope_sender: str | None
) -> messages.Rejection | None:
    """`REFUSED` when a From address or the envelope sender is outside `allowed`; None when
    the message may go (or `allowed` is empty). A message without a readable From header is
    refused when a list is set: its domain cannot be shown to be allowed."""
    if not allowed:
        return None
    permitted = set(allowed)
    found = header_from_addresses(data)
    if not found:
        return REFUSED
    domains = {_domain_of(a) for a in found}
    if envelope_sender:
        domains.add(_domain_of(envelope_sender))
    return None if domains <= permitted else REFUSED
