"""POSTs to URLs that users choose (webhooks) without letting them reach inside.

A webhook URL is the classic server-side request forgery hole: "deliver to
http://169.254.169.254/..." or to a name that resolves to 127.0.0.1 would
make the gateway talk to the cloud's metadata service or to the mesh's own
ports. So:

* at creation (check_url): only http(s), a host, no user:password, no
  fragment; an address literal must be allowed (below), `localhost` and
  `*.localhost` are refused: what is plainly wrong is refused at once, as
  INVALID_ARGUMENT naming `url`;
* at delivery (post): the host name is resolved once, EVERY address it
  resolves to must be allowed (a name that answers one public and one private
  address is refused: DNS answers can be made to mix), then the connection
  goes to the exact address checked, never resolved again, with the Host
  header, TLS SNI and certificate check on the original name; redirects are
  not followed (a 3xx is just a failed attempt); every network step has a
  timeout, and at most READ_LIMIT bytes of the answer are read.

Allowed: global unicast addresses only. Refused whatever the settings:
unspecified (0.0.0.0, ::) and multicast. Refused unless the operator sets
WEBHOOK_ALLOW_PRIVATE=true (local development: a receiver on 127.0.0.1):
loopback, private (RFC 1918), link-local (169.254/16, where cloud metadata
lives; fe80::/10), shared CGNAT space (100.64/10), IPv6 unique-local
(fc00::/7), documentation, benchmarking and reserved ranges: anything
`ipaddress` does not call global. IPv4-mapped (::ffff:a.b.c.d), 6to4 and
Teredo addresses are judged by the IPv4 address inside as well.
WEBHOOK_ALLOWED_NETWORKS (CIDRs) restricts deliveries further to those
networks (an egress allow-list; the test meshes set loopback only).
"""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
READ_LIMIT = 64 * 1024
MAX_URL_CHARS = 2000
Resolver = Callable[[str, int], list[str]]


class Refused(Exception):
    """The destination is not allowed (str(e) says why, for the delivery log)."""


def _judged(ip: IPAddress) -> list[IPAddress]:
    """The addresses that decide: an IPv4-mapped address is its IPv4 address
    (that is where the socket goes); 6to4 and Teredo, themselves and the IPv4
    address inside."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return [ip]
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    inside = [ip.sixtofour, ip.teredo[1] if ip.teredo else None]
    return [ip, *(a for a in inside if a is not None)]


def _kind(ip: IPAddress) -> str | None:
    """Why a non-global address is not public, in words; None for a global one."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (CGNAT)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "unique-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


@dataclasses.dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    # Empty: any address the rules above allow.
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, allow_private: bool, networks: str | Iterable[str]) -> AddressPolicy:
        """`networks`: CIDRs separated by commas or spaces; ValueError names a bad one."""
        items = networks.replace(",", " ").split() if isinstance(networks, str) else list(networks)
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in items))

    def why_not(self, address: str | IPAddress) -> str | None:
        """None if `address` may be delivered to; else why not, in words
        ("a loopback address", "outside WEBHOOK_ALLOWED_NETWORKS")."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        for candidate in _judged(ip):
            if candidate.is_unspecified or candidate.is_multicast:
                return f"an {'unspecified' if candidate.is_unspecified else 'multicast'} address"
            kind = _kind(candidate)
            if kind and not self.allow_private:
                return f"a {kind} address"
        if self.allowed_networks and not any(ip.version == n.version and ip in n for n in self.allowed_networks):
            return "outside WEBHOOK_ALLOWED_NETWORKS"
        return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, policy: AddressPolicy) -> str:
    """The URL if it may be registered; ValueError saying what is wrong otherwise.
    No name is resolved here (post() checks what it resolves to, every time)."""
    parts = _url_parts(url)
    _check_host(parts.hostname or "", policy)
    return url


def _url_parts(url: str) -> SplitResult:
    """The URL's parts when its shape may be registered: http(s), a host, no credentials, no fragment."""
    if not url or len(url) > MAX_URL_CHARS:
        raise ValueError(f"url must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"url is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("url must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("url must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry a user name or password")
    if parts.fragment:
        raise ValueError("url must not have a #fragment")
    if port == 0:
        raise ValueError("url must not use port 0")
    return parts


def _check_host(host: str, policy: AddressPolicy) -> None:
    """An address literal must pass the policy; a name must be valid and, unless allowed, not localhost."""
    ip = _literal(host)
    if ip is not None:
        why = policy.why_not(ip)
        if why:
            raise ValueError(f"url may not point at {ip}: {why}")
    elif not policy.allow_private and (host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost")):
        raise ValueError("url may not point at localhost")
    else:
        try:
            host.encode("idna")
        except UnicodeError:
            raise ValueError("url has a host name that is not valid") from None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int  # the HTTP status
    address: str  # the address it came from


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to `address`, whatever `host` (Host header) resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `address`, with SNI and the certificate checked for `host`."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def post(url: str, body: bytes, headers: dict[str, str], *, policy: AddressPolicy, timeout: float,
         resolver: Resolver = system_resolver, tls: ssl.SSLContext | None = None) -> Answer:
    """POST `body` to `url` as the module doc says. Raises Refused for a
    forbidden destination, OSError (timeouts included) or http.client's
    errors for a failed exchange."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal(host)
    try:
        addresses = [str(literal)] if literal is not None else resolver(host, port)
    except OSError as e:
        raise OSError(f"cannot resolve {host}: {e}") from None
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for address in addresses:
        why = policy.why_not(address)
        if why:
            where = f"{host} resolves to {address}" if literal is None else address
            raise Refused(f"refused: {where}, {why}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    last: Exception | None = None
    for address in addresses:  # each was checked above; the first that connects answers
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = _PinnedHTTPS(host, port, address, timeout, tls or ssl.create_default_context())
        else:
            conn = _PinnedHTTP(host, port, address, timeout)
        try:
            conn.connect()
        except OSError as e:
            last = e
            conn.close()
            continue
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(READ_LIMIT)
            return Answer(resp.status, address)
        finally:
            conn.close()
    assert last is not None
    raise last
