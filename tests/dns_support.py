"""A small authoritative DNS server on loopback, built on dnspython.

Answers TXT queries for the names a test configures, NXDOMAIN for every
other name, SERVFAIL or silence for names a test wants to fail.  Tests
point `ARCHIVA_DNS_RESOLVER` at it: never at the machine's resolver.
"""

from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest


class DNSServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.txt: dict[dns.name.Name, list[str]] = {}
        self.servfail: set[dns.name.Name] = set()
        self.silent: set[dns.name.Name] = set()
        self.queries: list[tuple[str, str]] = []  # (name, type) as asked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    # --- configuration by tests ---
    def add_txt(self, name: str, *values: str) -> None:
        self.txt.setdefault(dns.name.from_text(name), []).extend(values)

    def fail(self, name: str) -> None:
        self.servfail.add(dns.name.from_text(name))

    def ignore(self, name: str) -> None:
        self.silent.add(dns.name.from_text(name))

    def reset(self) -> None:
        self.txt.clear()
        self.servfail.clear()
        self.silent.clear()
        self.queries.clear()

    # --- serving ---
    def start(self) -> DNSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(wire)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name, rdtype = question.name, question.rdtype
            self.queries.append((name.to_text(omit_final_dot=True), dns.rdatatype.to_text(rdtype)))
            if name in self.silent:
                return None
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif name not in self.txt:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif rdtype == dns.rdatatype.TXT:
                texts = [self._quote(value) for value in self.txt[name]]
                response.answer.append(dns.rrset.from_text_list(name, 300, dns.rdataclass.IN, dns.rdatatype.TXT, texts))
        return response.to_wire()

    @staticmethod
    def _quote(value: str) -> str:
        # TXT strings are at most 255 bytes: split long values as DNS providers do.
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
        return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


@pytest.fixture(scope="session")
def dns_server_session():
    server = DNSServer().start()
    yield server
    server.stop()


@pytest.fixture
def dns_server(dns_server_session, settings) -> DNSServer:
    """The loopback DNS server, empty, and this deployment's resolver pointed at it."""
    dns_server_session.reset()
    settings.ARCHIVA_DNS_RESOLVER = (dns_server_session.host, dns_server_session.port)
    settings.ARCHIVA_DNS_TIMEOUT = 1.0
    yield dns_server_session
    dns_server_session.reset()


def verified_domain(dns_server: DNSServer, actor, name: str):
    """`name` claimed by `actor`'s tenant and verified by its TXT record, as an admin does it."""
    from tenants.actions import add_domain, verify_domain

    domain = add_domain(actor, name)
    dns_server.add_txt(domain.txt_name, domain.txt_value)
    return verify_domain(domain, actor)
