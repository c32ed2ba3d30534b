"""Egress IPs the operator refuses to hand out (pure, no I/O).

A SendingPool's egress IP must be routable from the cluster's nodes to the Internet. Some
addresses never are (loopback, unspecified, link-local, multicast, broadcast): a pool naming
one would hold leases on an address no mail can leave from, so the operator refuses such a
spec like an invalid one (the last good spec keeps running). The networks are a setting
(`refused_egress_networks`): the sandbox, whose "Internet" is 127.0.0.0/8, allows loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_REFUSED: tuple[str, ...] = (
    "0.0.0.0/32",
    "::/128",
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
)
"""Unspecified, loopback, link-local, multicast and broadcast, for IPv4 and IPv6."""


def allowing_loopback(refused: Iterable[str] = DEFAULT_REFUSED) -> tuple[str, ...]:
    """`refused` without the loopback networks: the setting of a test bed (the sandbox) whose
    simulated Internet is 127.0.0.0/8."""
    return tuple(n for n in refused if not ipaddress.ip_network(n, strict=False).is_loopback)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """The networks of a setting; a bare address is a /32 (/128). Raises ValueError."""
    return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in texts if t.strip())


def kind_of(network: Network) -> str:
    """What a network is, in words a user recognises (for the condition's message)."""
    address = network.network_address
    if network.prefixlen == network.max_prefixlen and address == ipaddress.ip_address(
        "255.255.255.255"
    ):
        return "broadcast"
    for name, test in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
    ):
        if test:
            return name
    return "refused"


def refusals(addresses: Sequence[str], refused: Iterable[str]) -> list[str]:
    """One sentence per address inside a refused network (in spec order); [] when none."""
    networks = parse_networks(refused)
    found: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue  # not an address: the models' validation says so
        for network in networks:
            if address.version == network.version and address in network:
                found.append(
                    f"egress IP {text} is in {network} ({kind_of(network)}), which this "
                    "operator refuses (setting refused_egress_networks): no mail can leave "
                    "from it on a real cluster"
                )
                break
    return found
