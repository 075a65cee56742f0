"""SSRF guard for outbound webhook requests.

A webhook URL is user input that makes our servers send requests, so before every request (at registration
and again at delivery, to defeat DNS rebinding) the host is resolved here and every address it resolves to
must be public. The caller then connects to the address that was checked (`PinnedTarget`), never to the
name again, keeping the original Host header and TLS SNI/certificate name.

`FTSERVE_WEBHOOK_ALLOW_PRIVATE=1` turns the address check off (development and tests on loopback); names are
still resolved and pinned.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses the name resolves to (strings). Tests inject a map: no DNS, no network.
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack...
    ipaddress.ip_address("169.254.170.2"),  # ECS task metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6 metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# Hosts that are numbers in some base (2130706433, 0x7f.1, 017700000001, 127.1): the C resolver reads them as
# IPv4 addresses, so we do too, before any name lookup.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class UnsafeURLError(ValueError):
    """The URL is malformed, uses a refused scheme, or its host is (or resolves to) a non-public address."""


@dataclass(frozen=True)
class PinnedTarget:
    """Where to connect: the checked address, plus what the request must still say (Host, SNI)."""

    url: str  # the original URL
    scheme: str
    host: str  # the hostname as written (lower case, no brackets)
    port: int
    address: str  # the vetted IP to connect to
    host_is_ip: bool


def default_resolver(host: str, port: int) -> list[str]:
    """System DNS (getaddrinfo), every address of every family."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in seen:
            seen.append(address)
    return seen


def parse_ip(host: str) -> IPAddress | None:
    """The address a host denotes by itself (dotted, bracketed IPv6, or a numeric IPv4 form), else None."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why a webhook may not be sent to `ip`, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or ip in _NAT64_LOCAL):
            embedded = ipaddress.IPv4Address(ip.packed[-4:])
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"{inner} (embedded in {ip})" if inner else None
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved or non-public address"
    return None


@dataclass(frozen=True)
class ParsedURL:
    scheme: str
    host: str
    port: int


def parse_url(url: str, *, allow_http: bool) -> ParsedURL:
    """Check the URL's shape (scheme, host, port, no credentials). Raises UnsafeURLError with a reason."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UnsafeURLError("The URL contains whitespace or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"The URL is malformed: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeURLError("The URL must start with https://.")
    if scheme == "http" and not allow_http:
        raise UnsafeURLError(
            "The URL must use https:// (plain http:// is allowed only with FTSERVE_WEBHOOK_ALLOW_HTTP=1 "
            "or FTSERVE_WEBHOOK_ALLOW_PRIVATE=1)."
        )
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("Credentials in the URL are not supported; deliveries are signed instead.")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeURLError("The URL has no host.")
    if not host.isascii() and parse_ip(host) is None:
        try:  # internationalised names: resolve, send Host and SNI in their ASCII (IDNA) form
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeURLError(f"The host '{host}' is not a valid domain name.") from None
    return ParsedURL(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80))


def resolve_checked(
    url: str,
    *,
    allow_private: bool,
    allow_http: bool = False,
    resolver: Resolver | None = None,
) -> PinnedTarget:
    """Parse `url`, resolve its host and check every address. Returns the address to connect to.

    Every resolved address must pass (a name that resolves to one public and one private address is
    refused: the system could pick either). Raises UnsafeURLError with a user-facing reason."""
    parsed = parse_url(url, allow_http=allow_http or allow_private)
    host, port = parsed.host, parsed.port
    literal = parse_ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        bare = host.rstrip(".")
        if not allow_private and (bare == "localhost" or bare.endswith(".localhost")):
            raise UnsafeURLError(f"The host '{host}' is a loopback name.")
        lookup = resolver or default_resolver
        try:
            found = lookup(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnsafeURLError(f"The host '{host}' could not be resolved ({exc}).") from None
        addresses = []
        for text in found:
            ip = parse_ip(text)
            if ip is None:
                raise UnsafeURLError(f"The host '{host}' resolved to something that is not an address.")
            addresses.append(ip)
        if not addresses:
            raise UnsafeURLError(f"The host '{host}' could not be resolved (no addresses).")
    if not allow_private:
        for ip in addresses:
            reason = refusal_reason(ip)
            if reason:
                shown = f"'{host}' is" if literal is not None else f"'{host}' resolves to {ip}, which is"
                raise UnsafeURLError(
                    f"Webhooks cannot be sent to private or internal addresses: {shown} {reason}. "
                    "(Development servers can allow them with FTSERVE_WEBHOOK_ALLOW_PRIVATE=1.)"
                )
    # IPv4 first: the address most likely to be reachable from a typical server.
    chosen = sorted(addresses, key=lambda ip: ip.version)[0]
    return PinnedTarget(
        url=url,
        scheme=parsed.scheme,
        host=host,
        port=port,
        address=str(chosen),
        host_is_ip=literal is not None,
    )
