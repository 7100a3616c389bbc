"""DNS lookups through the resolver this deployment is configured with.

`ARCHIVA_DNS_RESOLVER` names one server ("host", "host:port" or
"[v6-host]:port"); unset means the system's resolver (/etc/resolv.conf).
Tests point it at a DNS server of their own on loopback, never at the
machine's resolver.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.name
import dns.resolver
from django.conf import settings

from infra.env import ConfigError

DEFAULT_PORT = 53


class LookupFailed(Exception):
    """The DNS could not answer (timeout, SERVFAIL, refused): try again later.

    Distinct from "no such record", which is an answer.
    """


def parse_resolver(value: str, name: str = "ARCHIVA_DNS_RESOLVER") -> tuple[str, int] | None:
    """("ip", port) from "ip", "ip:port" or "[ipv6]:port"; None when empty."""
    value = value.strip()
    if not value:
        return None
    host, port = value, str(DEFAULT_PORT)
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{name}={value!r} is not [ipv6]:port")
        port = rest[1:] or port
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: the resolver must be an IP address, not {host!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={value!r}: {port!r} is not a port number")
    return host, int(port)


def resolver() -> dns.resolver.Resolver:
    configured = settings.ARCHIVA_DNS_RESOLVER
    if configured is None:
        res = dns.resolver.Resolver()
    else:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [configured[0]]
        res.port = configured[1]
    res.lifetime = settings.ARCHIVA_DNS_TIMEOUT
    res.timeout = min(res.lifetime, 2.0)
    # Verification must see the record the customer just created.
    res.cache = None
    return res


def txt_records(name: str) -> list[str]:
    """The TXT strings at `name` (split strings joined); [] when there are none."""
    try:
        answer = resolver().resolve(dns.name.from_text(name), "TXT", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.exception.DNSException, OSError) as exc:
        raise LookupFailed(str(exc) or exc.__class__.__name__) from exc
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
