"""IP networks from configuration, and whether an address is in them.

Used by the settings (to refuse a bad ARCHIVA_SMTP_PROXY_FROM at start) and
by the ingest (the sender allow list, the load balancer's networks).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(lines: Iterable[str], item: str = "line") -> list[Network]:
    """Networks from text: one CIDR per item, '#' comments; ValueError names the bad `item` by number."""
    networks = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"{item} {number}: {text!r} is not a network ({exc})") from None
    return networks


def in_networks(ip: str | None, networks: Iterable[Network]) -> bool:
    """Whether `ip` (an IPv4-mapped IPv6 address as its IPv4 one) is in one of `networks`."""
    if ip is None:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
