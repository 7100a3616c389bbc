"""The PROXY protocol (HAProxy's, versions 1 and 2): the client's address
through a load balancer.

A cloud load balancer in front of the ingest either keeps the client's
address (the chart's `externalTrafficPolicy: Local`) or hands it over in a
header it sends before anything else on the connection.  With
ARCHIVA_SMTP_PROXY_PROTOCOL=1, a connection from ARCHIVA_SMTP_PROXY_FROM
(the balancer's networks) must start with that header, and the address in
it is the session's peer for everything that follows: the sender policy,
the per-peer limits, the logs and the recorded envelope.  A connection from
anywhere else is served with its own address, and a header it might send is
not believed (it reads as an unknown command): nobody outside the
balancer's networks can choose the address we see.  A trusted connection
whose header is missing, malformed or late is closed without a greeting.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and protocol, length
V2_LOCAL, V2_PROXY = 0x0, 0x1
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
PROTO_UNSPEC, PROTO_STREAM = 0x0, 0x1


class ProxyHeaderError(ValueError):
    """The connection does not start with a valid PROXY header; says what is wrong."""


@dataclass(frozen=True)
class ProxyHeader:
    client: str | None  # the client's address; None: use the connection's own (LOCAL, UNKNOWN)
    length: int  # bytes the header took; what follows is the client's


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None while it is incomplete."""
    if data.startswith(V2_SIGNATURE):
        return _v2(data)
    if data.startswith(V1_PREFIX):
        return _v1(data)
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]) or V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return None  # a prefix of either: wait for more
    raise ProxyHeaderError(f"no PROXY header (the connection began with {data[:16]!r})")


def _v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyHeaderError(f"PROXY v1 line not ended by CRLF within {V1_MAX} bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    length = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, length)  # the balancer's own connection (a health check): its address
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 line malformed: {data[:end]!r}")
    _, family, source, destination, source_port, destination_port = fields
    version = 4 if family == "TCP4" else 6
    for address in (source, destination):
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise ProxyHeaderError(f"PROXY v1 address {address!r} is not an IP address") from None
        if parsed.version != version:
            raise ProxyHeaderError(f"PROXY v1 address {address!r} is not {family}")
    for port in (source_port, destination_port):
        if not (port.isdigit() and port == str(int(port)) and int(port) <= 65535):
            raise ProxyHeaderError(f"PROXY v1 port {port!r} is not a port number")
    return ProxyHeader(_address(ipaddress.ip_address(source)), length)


def _v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    version_command, family_protocol, size = struct.unpack("!BBH", data[12:V2_FIXED])
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0xF
    if command not in (V2_LOCAL, V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    if len(data) < V2_FIXED + size:
        return None
    length = V2_FIXED + size
    if command == V2_LOCAL:
        return ProxyHeader(None, length)  # the balancer's own connection: its address
    family, protocol = family_protocol >> 4, family_protocol & 0xF
    if protocol not in (PROTO_UNSPEC, PROTO_STREAM):
        raise ProxyHeaderError(f"PROXY v2 header for a datagram protocol ({family_protocol:#04x})")
    body = data[V2_FIXED:length]
    if family == AF_INET:
        if size < 12:
            raise ProxyHeaderError(f"PROXY v2 IPv4 addresses need 12 bytes, the header has {size}")
        return ProxyHeader(str(ipaddress.IPv4Address(body[:4])), length)
    if family == AF_INET6:
        if size < 36:
            raise ProxyHeaderError(f"PROXY v2 IPv6 addresses need 36 bytes, the header has {size}")
        return ProxyHeader(_address(ipaddress.IPv6Address(body[:16])), length)
    if family in (AF_UNSPEC, AF_UNIX):
        return ProxyHeader(None, length)  # no IP address to take: the connection's own
    raise ProxyHeaderError(f"PROXY v2 header with unknown address family {family}")


def _address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """As the session writes a peer: an IPv4-mapped IPv6 address as its IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)
