"""The client's address, for everything keyed by it: the per-address limit on unauthenticated
requests and failed authentications, the auth-failure counts, the audit log's ``source`` and
the console's in-process API calls.

Behind a load balancer (docs/deployment.md) the TCP peer is the balancer, for every client.
``X-Forwarded-For`` names the client, but any client can send that header, so it is believed
only from a peer in ``[server] trusted_proxies`` (empty by default: the header is ignored).
From a trusted peer the header is read right to left, skipping the hops that are trusted
proxies themselves; the first hop that is not is the client (the "rightmost untrusted hop":
everything left of it was written by the client and proves nothing).

Plain functions of the peer, the header values and the trusted networks, so that every way
into the coordinator (Quart, and a bare ASGI lane) reads the address the same way; no import
of the web framework.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "X-Forwarded-For"
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4 addresses on a dual-stack socket
_MAX_HOPS = 32  # a longer chain is read no further: nobody deploys 32 proxies in a row


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "192.0.2.7"]`` as networks (a bare address is a /32 or /128).

    Raises ``ValueError`` naming the first entry that is not an address or CIDR network (host
    bits set, as in ``10.0.0.1/8``, count as not one: the operator meant something else), or
    that trusts every address (``0.0.0.0/0``, ``::/0``): then every client would choose its own
    address with the header, which undoes the per-address limits. An IPv4-mapped entry
    (``::ffff:10.0.0.0/104``) is the IPv4 network it names, as a mapped peer is read as IPv4."""
    networks: list[Network] = []
    for entry in entries:
        try:
            network: Network = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network ({exc})") from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            mapped = network.network_address.ipv4_mapped
            assert mapped is not None
            network = ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED.prefixlen))
        if network.prefixlen == 0:
            raise ValueError(f"{entry!r} trusts every address: any client could choose its own; list the "
                             "load balancers (their addresses or networks)")
        networks.append(network)
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An IP address from a peer or a hop, without a port or brackets; None if it is not one."""
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # "192.0.2.1:5000"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's "::ffff:10.0.0.1" is 10.0.0.1
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str | None:
    """The client's address for a request from ``peer`` (the TCP peer's address, as the server
    gives it) carrying ``forwarded_for`` (every ``X-Forwarded-For`` header value, in order).

    The peer itself unless it is in ``trusted``; then the rightmost hop of the header that is
    not in ``trusted``. Where every hop is trusted, the leftmost; where a hop cannot be read,
    the last hop read before it (the header left of it is the client's word, not a proxy's).
    """
    if not trusted or peer is None:
        return peer
    current = _address(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops[-_MAX_HOPS:]):
        address = _address(hop)
        if address is None:
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)


def forwarded_for_values(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every ``X-Forwarded-For`` value of raw ASGI headers, in order (a proxy may add a line of
    its own rather than extend the first)."""
    name = FORWARDED_FOR.lower().encode()
    return [value.decode("latin-1") for key, value in headers if key.lower() == name]


def from_scope(scope: Mapping[str, Any], trusted: Sequence[Network]) -> str | None:
    """``client_address`` of an ASGI HTTP scope (its ``client`` and raw ``headers``)."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    if not trusted:
        return peer
    return client_address(peer, forwarded_for_values(scope.get("headers") or ()), trusted)
