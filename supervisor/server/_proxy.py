"""The real client address behind trusted reverse proxies, and sets of networks.

Theory of operation:
    A reverse proxy that forwards a connection records the address it received
    it from in ``Forwarded`` (RFC 7239) or ``X-Forwarded-For``, appending to
    whatever the previous hop wrote. Anybody can write these headers, so they
    are believed only as far as a chain of *trusted* proxies vouches for them:

    1. If the TCP peer is not a trusted proxy, the headers are ignored and the
       peer is the client: a client cannot spoof its address by sending the
       headers itself.
    2. Otherwise the forwarded addresses are walked from the right (the entry
       the nearest proxy wrote) to the left. Each trusted address is a proxy
       and is skipped; the first untrusted address is the client.
    3. If every address is trusted, the leftmost one is the client (the chain
       started inside the trusted networks).
    4. An entry that is not an IP address (garbage, ``unknown``, an obfuscated
       ``_identifier``, a ``Forwarded`` element without ``for=``) stops the
       walk: nothing to its left can be vouched for, so the last good address
       (the trusted proxy that wrote the entry, possibly the peer itself) is
       the answer.

    ``Forwarded`` is preferred when a request carries both headers, since it is
    the standard and a proxy that writes it is the more specific configuration.
    All lines of the chosen header are read in order, as one comma-separated
    list. IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack
    socket reports for an IPv4 peer) are checked as the IPv4 address they map.

    Nothing here raises on anything a client sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["Networks", "TrustedProxies"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str) -> _Address | None:
    """Return the address written in ``text``, or ``None``."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _valid_port(text: str) -> bool:
    """Whether ``text`` is a port number or an RFC 7239 obfuscated port (``_abc``)."""
    if text.isdigit() and text.isascii():
        return len(text) <= 5 and int(text) <= 65535
    return (
        len(text) > 1
        and text[0] == "_"
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in text[1:])
    )


def _parse_node(text: str) -> _Address | None:
    """Parse one forwarded hop: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]``, ``[::1]:80``.

    Returns ``None`` for anything else, including ``unknown`` and obfuscated
    identifiers.
    """
    text = text.strip()
    address = _parse_ip(text)
    if address is not None:
        return address
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        rest = text[end + 1 :]
        if rest and not (rest[0] == ":" and _valid_port(rest[1:])):
            return None
        address = _parse_ip(text[1:end])
        # Brackets are the IPv6 syntax; a bracketed IPv4 address is malformed.
        return address if isinstance(address, ipaddress.IPv6Address) else None
    host, colon, port = text.rpartition(":")
    if colon and ":" not in host and _valid_port(port):
        address = _parse_ip(host)
        return address if isinstance(address, ipaddress.IPv4Address) else None
    return None


def _split_unquoted(text: str, separator: str) -> tuple[list[str], bool]:
    """Split ``text`` on ``separator`` outside double-quoted strings.

    Returns:
        The parts, and whether the last part ends inside an unterminated
        quoted string (so it, and only it, is malformed).
    """
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for index, char in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts, quoted


def _unquote(value: str) -> str | None:
    """Decode an RFC 7239 value: a token, or a quoted string with ``\\`` escapes."""
    if not value.startswith('"'):
        return value
    decoded: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            decoded.append(value[index + 1])
            index += 2
        elif char == '"':
            # The closing quote must end the value.
            return "".join(decoded) if index == len(value) - 1 else None
        else:
            decoded.append(char)
            index += 1
    return None


def _forwarded_for(element: str) -> str | None:
    """Return the ``for=`` value of one ``Forwarded`` element, or ``None`` if unusable."""
    found: str | None = None
    pairs, _ = _split_unquoted(element, ";")
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        name, equals, value = pair.partition("=")
        if not equals:
            return None
        name = name.strip().lower()
        decoded = _unquote(value.strip())
        if not name or decoded is None:
            return None
        if name == "for":
            if found is not None:
                # RFC 7239: a parameter must not occur twice in one element.
                return None
            found = decoded
    return found


def _forwarded_hops(lines: Iterable[str]) -> list[str | None]:
    """List the ``for=`` values of every ``Forwarded`` element, ``None`` for unusable ones."""
    hops: list[str | None] = []
    for line in lines:
        # Each line is tokenised on its own so an unterminated quote in one
        # line cannot swallow the next.
        elements, unterminated = _split_unquoted(line, ",")
        for index, element in enumerate(elements):
            if unterminated and index == len(elements) - 1:
                hops.append(None)
            elif element.strip():
                hops.append(_forwarded_for(element))
    return hops


def _x_forwarded_for_hops(lines: Iterable[str]) -> list[str | None]:
    """List the entries of every ``X-Forwarded-For`` line, empty entries skipped."""
    return [entry for line in lines for entry in line.split(",") if entry.strip()]


class Networks:
    """A set of IP networks: which addresses are in it.

    Args:
        networks: networks or single addresses, as strings (``"10.0.0.0/8"``,
            ``"127.0.0.1"``, ``"::1"``, ``"fd00::/8"``) or :mod:`ipaddress` objects.
        what: what an entry is, for error messages (``"trusted proxy network"``).

    Raises:
        ValueError: an entry is not a network or address, or has host bits set
            (``10.0.0.1/8``, probably a typo for ``10.0.0.0/8``); the message
            names the entry.
        TypeError: ``networks`` is a single string instead of a collection.

    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket
    reports for an IPv4 peer) are matched as the IPv4 address they map. Cost:
    linear in the number of networks.
    """

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str | _Network | _Address], what: str) -> None:
        if isinstance(networks, str):
            raise TypeError(f"{what}s must be a collection, not a single str")
        parsed: list[_Network] = []
        for entry in networks:
            try:
                network = ipaddress.ip_network(entry, strict=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"invalid {what} {entry!r}: {exc}") from None
            parsed.append(network)
        #: The networks, in the order given.
        self.networks: tuple[_Network, ...] = tuple(parsed)

    def holds(self, address: _Address) -> bool:
        """Whether ``address`` is in one of the networks."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        # ``in`` is simply False across IP versions, so no version check is needed.
        return any(address in network for network in self.networks)

    def __contains__(self, ip: object) -> bool:
        """Whether the address written in ``ip`` is in one of the networks (text
        that is not an IP address never is)."""
        address = _parse_ip(ip) if isinstance(ip, str) else None
        return address is not None and self.holds(address)


class TrustedProxies:
    """The networks whose forwarding headers are believed.

    Args:
        networks: Networks or single addresses, as strings (``"10.0.0.0/8"``,
            ``"127.0.0.1"``, ``"::1"``, ``"fd00::/8"``) or :mod:`ipaddress`
            objects. Empty means no proxy is trusted and the TCP peer is
            always the client.

    Raises:
        ValueError: An entry is not a network or address, or has host bits set
            (``10.0.0.1/8``, probably a typo for ``10.0.0.0/8``); the message
            names the entry.
        TypeError: ``networks`` is a single string instead of a collection.

    Cost: :meth:`client_address` is linear in the size of the forwarding
    headers and in the number of networks.
    """

    __slots__ = ("_set",)

    def __init__(
        self,
        networks: Iterable[str | _Network | _Address],
    ) -> None:
        """Parse the trusted networks."""
        self._set = Networks(networks, "trusted proxy network")

    @property
    def networks(self) -> tuple[_Network, ...]:
        """The trusted networks, in the order given."""
        return self._set.networks

    def _trusts(self, address: _Address) -> bool:
        return self._set.holds(address)

    def is_trusted(self, ip: str) -> bool:
        """Whether ``ip`` belongs to a trusted network.

        Args:
            ip: An IPv4 or IPv6 address; anything else is not trusted.
        """
        return ip in self._set

    def client_address(self, peer_ip: str, headers: Sequence[tuple[str, str]]) -> str:
        """Return the real client address of a request.

        Args:
            peer_ip: The address of the TCP peer, as the socket reports it.
            headers: The request headers as ``(name, value)`` pairs in order;
                names compare case-insensitively. Only ``Forwarded`` and
                ``X-Forwarded-For`` are read.

        Returns:
            ``peer_ip`` unchanged when the peer is not trusted or nothing
            usable was forwarded; otherwise the chosen forwarded address in
            canonical text form (``2001:db8::1``, no brackets, no port). The
            result is always ``peer_ip`` or an address found in the headers.
            See the module documentation for the walk. Never raises.
        """
        if not self._set.networks:
            return peer_ip  # nothing is trusted: no need to parse the peer's address
        peer = _parse_ip(peer_ip)
        if peer is None or not self._trusts(peer):
            return peer_ip
        forwarded = [value for name, value in headers if name.lower() == "forwarded"]
        if any(line.strip() for line in forwarded):
            hops = _forwarded_hops(forwarded)
        else:
            hops = _x_forwarded_for_hops(
                value for name, value in headers if name.lower() == "x-forwarded-for"
            )
        result = peer_ip
        for hop in reversed(hops):
            address = None if hop is None else _parse_node(hop)
            if address is None:
                return result
            result = str(address)
            if not self._trusts(address):
                return result
        return result

    def __repr__(self) -> str:
        """Show the networks, for debugging."""
        return f"TrustedProxies({[str(network) for network in self.networks]!r})"
