"""Tests for the real client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.server._proxy import TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"])

XFF = "X-Forwarded-For"
FWD = "Forwarded"


def client(peer: str, *headers: tuple[str, str]) -> str:
    """Resolve the client address with the shared proxy configuration."""
    return PROXIES.client_address(peer, list(headers))


# --- construction --------------------------------------------------------------


def test_accepts_networks_and_single_addresses() -> None:
    """Strings and ipaddress objects, networks and hosts, are all accepted."""
    entries = [
        "10.0.0.0/8",
        "127.0.0.1",
        "::1",
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_address("192.0.2.1"),
    ]
    proxies = TrustedProxies(entries)
    assert [str(network) for network in proxies.networks] == [
        "10.0.0.0/8",
        "127.0.0.1/32",
        "::1/128",
        "fd00::/8",
        "192.0.2.1/32",
    ]


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "", "unix", "10.0.0.1/8"])
def test_invalid_network_raises_value_error_naming_it(entry: str) -> None:
    """A bad network (including host bits set) is refused and named in the error."""
    with pytest.raises(ValueError, match="invalid trusted proxy network") as info:
        TrustedProxies([entry])
    assert repr(entry) in str(info.value)


def test_single_string_raises_type_error() -> None:
    """A lone string instead of a collection is refused."""
    with pytest.raises(TypeError, match="collection"):
        TrustedProxies("10.0.0.0/8")


def test_repr_lists_networks() -> None:
    """repr shows the configured networks."""
    assert (
        repr(TrustedProxies(["10.0.0.0/8", "::1"])) == "TrustedProxies(['10.0.0.0/8', '::1/128'])"
    )


def test_is_trusted() -> None:
    """is_trusted checks membership and refuses non-addresses."""
    assert PROXIES.is_trusted("10.1.2.3")
    assert PROXIES.is_trusted("::1")
    assert PROXIES.is_trusted("::ffff:10.1.2.3")
    assert not PROXIES.is_trusted("192.0.2.1")
    assert not PROXIES.is_trusted("not an ip")
    assert not PROXIES.is_trusted("")


def test_no_networks_trusts_nobody() -> None:
    """With no trusted networks, headers are always ignored."""
    assert TrustedProxies([]).client_address("127.0.0.1", [(XFF, "1.2.3.4")]) == "127.0.0.1"


# --- the peer ----------------------------------------------------------------------


def test_untrusted_peer_ignores_headers() -> None:
    """Forwarding headers from an untrusted peer are ignored (spoofing protection)."""
    assert client("203.0.113.7", (XFF, "1.2.3.4"), (FWD, "for=5.6.7.8")) == "203.0.113.7"


def test_trusted_peer_without_headers_is_the_client() -> None:
    """A trusted peer that forwards nothing is itself the client."""
    assert client("10.0.0.1") == "10.0.0.1"
    assert client("10.0.0.1", ("Host", "example.com")) == "10.0.0.1"


def test_unparsable_peer_is_returned_unchanged() -> None:
    """A peer that is not an IP address (e.g. a Unix socket) is returned as is."""
    assert client("", (XFF, "1.2.3.4")) == ""
    assert client("/run/wsup.sock", (XFF, "1.2.3.4")) == "/run/wsup.sock"


def test_ipv4_mapped_peer_is_checked_as_ipv4() -> None:
    """A dual-stack socket's ::ffff:a.b.c.d peer is trusted by its IPv4 network."""
    assert client("::ffff:10.0.0.1", (XFF, "1.2.3.4")) == "1.2.3.4"
    assert client("::ffff:203.0.113.7", (XFF, "1.2.3.4")) == "::ffff:203.0.113.7"


def test_ipv6_peer() -> None:
    """An IPv6 peer in a trusted network is honoured."""
    assert client("::1", (XFF, "2001:db8::1")) == "2001:db8::1"
    assert client("fd00::5", (XFF, "1.2.3.4")) == "1.2.3.4"


# --- X-Forwarded-For ---------------------------------------------------------------


def test_xff_single_hop() -> None:
    """One proxy: the only entry is the client."""
    assert client("10.0.0.1", (XFF, "203.0.113.7")) == "203.0.113.7"


def test_xff_skips_trusted_hops_from_the_right() -> None:
    """Trusted proxies on the right are skipped; the first untrusted one is the client."""
    assert client("10.0.0.1", (XFF, "198.51.100.1, 203.0.113.7, 10.0.0.2, 10.0.0.3")) == (
        "203.0.113.7"
    )


def test_xff_spoofed_left_entries_are_not_believed() -> None:
    """An address a client wrote itself, left of an untrusted hop, is ignored."""
    assert client("10.0.0.1", (XFF, "127.0.0.1, 203.0.113.7")) == "203.0.113.7"


def test_xff_all_trusted_gives_leftmost() -> None:
    """If every hop is trusted, the leftmost is the client."""
    assert client("10.0.0.1", (XFF, "10.0.0.9, 127.0.0.1, 10.0.0.2")) == "10.0.0.9"


def test_xff_multiple_lines_read_in_order() -> None:
    """Several header lines form one list, first line leftmost."""
    assert client("10.0.0.1", (XFF, "203.0.113.7"), (XFF, "10.0.0.2, 10.0.0.3")) == "203.0.113.7"
    assert client("10.0.0.1", (XFF, "10.0.0.2"), (XFF, "203.0.113.7")) == "203.0.113.7"


def test_xff_header_name_is_case_insensitive() -> None:
    """The header name matches in any case."""
    assert client("10.0.0.1", ("x-forwarded-for", "203.0.113.7")) == "203.0.113.7"
    assert client("10.0.0.1", ("X-FORWARDED-FOR", "203.0.113.7")) == "203.0.113.7"


def test_xff_empty_entries_are_skipped() -> None:
    """Empty list elements (',,' or a blank line) are not hops."""
    assert client("10.0.0.1", (XFF, "203.0.113.7,, 10.0.0.2 ,"), (XFF, "")) == "203.0.113.7"


def test_xff_blank_gives_peer() -> None:
    """An empty X-Forwarded-For leaves the peer as the client."""
    assert client("10.0.0.1", (XFF, "  ")) == "10.0.0.1"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("203.0.113.7:4711", "203.0.113.7"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_xff_entries_with_ports_and_ipv6_forms(entry: str, expected: str) -> None:
    """Ports and brackets are removed and IPv6 is returned in canonical form."""
    assert client("10.0.0.1", (XFF, entry)) == expected


@pytest.mark.parametrize(
    "garbage",
    [
        "unknown",
        "_hidden",
        "not-an-ip",
        "1.2.3.4.5",
        "1.2.3.4:99999",
        "1.2.3.4:",
        "[1.2.3.4]",
        "[::1",
        "[::1]x",
        "::1:80:",
        '"1.2.3.4"',
    ],
)
def test_xff_garbage_stops_the_walk(garbage: str) -> None:
    """A malformed hop returns the last good address to its right."""
    assert client("10.0.0.1", (XFF, f"203.0.113.7, {garbage}, 10.0.0.2")) == "10.0.0.2"
    assert client("10.0.0.1", (XFF, f"203.0.113.7, {garbage}")) == "10.0.0.1"


# --- Forwarded ---------------------------------------------------------------------


def test_forwarded_single_element() -> None:
    """for= of the only element is the client."""
    assert client("10.0.0.1", (FWD, "for=203.0.113.7;proto=https;by=10.0.0.1")) == "203.0.113.7"


def test_forwarded_quoted_ipv6_with_port() -> None:
    """A quoted, bracketed IPv6 address with a port is understood."""
    assert client("10.0.0.1", (FWD, 'for="[2001:db8:cafe::17]:4711"')) == "2001:db8:cafe::17"


def test_forwarded_ipv4_with_port() -> None:
    """A quoted IPv4 address with a port is understood."""
    assert client("10.0.0.1", (FWD, 'for="203.0.113.7:8080"')) == "203.0.113.7"


def test_forwarded_obfuscated_port_is_fine() -> None:
    """An obfuscated port does not hide the address."""
    assert client("10.0.0.1", (FWD, 'for="203.0.113.7:_p1"')) == "203.0.113.7"


def test_forwarded_parameter_names_are_case_insensitive() -> None:
    """For=, FOR= and for= are the same parameter."""
    assert client("10.0.0.1", (FWD, "For=203.0.113.7")) == "203.0.113.7"
    assert client("10.0.0.1", (FWD, "proto=http;FOR=203.0.113.7")) == "203.0.113.7"


def test_forwarded_skips_trusted_elements_from_the_right() -> None:
    """Elements are walked right to left past trusted proxies."""
    header = "for=198.51.100.1, for=203.0.113.7;proto=https, for=10.0.0.2"
    assert client("10.0.0.1", (FWD, header)) == "203.0.113.7"


def test_forwarded_all_trusted_gives_leftmost() -> None:
    """If every element is trusted, the leftmost is the client."""
    assert client("10.0.0.1", (FWD, 'for=10.0.0.5, for="[::1]"')) == "10.0.0.5"


def test_forwarded_multiple_lines_read_in_order() -> None:
    """Several Forwarded lines form one list, first line leftmost."""
    assert client("10.0.0.1", (FWD, "for=203.0.113.7"), (FWD, "for=10.0.0.2")) == "203.0.113.7"


def test_forwarded_quoted_separators_do_not_split() -> None:
    """Commas and semicolons inside quoted values do not split elements."""
    header = 'for=203.0.113.7;by="a,b;c", for=10.0.0.2'
    assert client("10.0.0.1", (FWD, header)) == "203.0.113.7"


def test_forwarded_escapes_in_quoted_values() -> None:
    """Backslash escapes in quoted values are resolved."""
    assert client("10.0.0.1", (FWD, 'for="203.0.113.\\7";by="x\\"y"')) == "203.0.113.7"


@pytest.mark.parametrize(
    "element",
    [
        "for=unknown",
        "for=_hidden",
        'for="_gazonk"',
        "proto=https",
        "for=1.2.3.4;for=5.6.7.8",
        "for",
        "for=1.2.3.4;junk",
        "=1.2.3.4",
        'for="1.2.3.4',
        'for="1.2.3.4"x',
        'for="1.2"3.4"',
        "for=2001:db8::1:99999:1",
    ],
)
def test_forwarded_unusable_element_stops_the_walk(element: str) -> None:
    """unknown, obfuscated, missing, duplicated or malformed for= stops the walk."""
    header = f"for=203.0.113.7, {element}, for=10.0.0.2"
    expected = "10.0.0.2"
    if element.count('"') % 2:
        # An unterminated quote swallows the rest of the line, right to left
        # nothing is usable.
        expected = "10.0.0.1"
    assert client("10.0.0.1", (FWD, header)) == expected


def test_forwarded_unterminated_quote_does_not_swallow_next_line() -> None:
    """A broken quote in one line leaves the following line readable."""
    headers = [(FWD, 'for="203.0.113.7'), (FWD, "for=10.0.0.2")]
    assert PROXIES.client_address("10.0.0.1", headers) == "10.0.0.2"


def test_forwarded_empty_elements_are_skipped() -> None:
    """Empty list elements are not hops."""
    assert client("10.0.0.1", (FWD, "for=203.0.113.7, , for=10.0.0.2,")) == "203.0.113.7"


def test_forwarded_is_preferred_over_x_forwarded_for() -> None:
    """When both headers are present, Forwarded decides."""
    assert client("10.0.0.1", (XFF, "198.51.100.1"), (FWD, "for=203.0.113.7")) == "203.0.113.7"


def test_forwarded_preferred_even_when_it_stops_at_once() -> None:
    """An unusable Forwarded does not fall back to X-Forwarded-For."""
    assert client("10.0.0.1", (XFF, "198.51.100.1"), (FWD, "for=unknown")) == "10.0.0.1"


def test_blank_forwarded_falls_back_to_x_forwarded_for() -> None:
    """A Forwarded header with nothing in it counts as absent."""
    assert client("10.0.0.1", (FWD, " "), (XFF, "198.51.100.1")) == "198.51.100.1"


def test_forwarded_header_name_is_case_insensitive() -> None:
    """The header name matches in any case."""
    assert client("10.0.0.1", ("forwarded", "for=203.0.113.7")) == "203.0.113.7"


# --- properties ----------------------------------------------------------------------

TRUSTED_V4 = ipaddress.ip_network("10.0.0.0/8")
TRUSTED_V6 = ipaddress.ip_network("fd00::/8")

trusted_ips = st.one_of(
    st.ip_addresses(network=TRUSTED_V4),
    st.ip_addresses(network=TRUSTED_V6),
    st.just(ipaddress.ip_address("127.0.0.1")),
)
untrusted_ips = st.ip_addresses().filter(lambda ip: not PROXIES.is_trusted(str(ip)))
any_ips = st.one_of(trusted_ips, st.ip_addresses())
GARBAGE = ["unknown", "_hidden", "garbage", "", "1.2.3", "[::1", '"', "a=b", ";", "::g"]


def _xff_entry(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: bool) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip}]:4711" if port else ip.exploded
    return f"{ip}:4711" if port else str(ip)


def _fwd_element(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: bool) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return f'for="[{ip}]:4711"' if port else f'for="[{ip}]"'
    return f'for="{ip}:4711"' if port else f"for={ip}"


hop = st.one_of(
    st.tuples(any_ips, st.booleans()),
    st.sampled_from(GARBAGE),
)


@st.composite
def forwarding_headers(draw: st.DrawFn) -> tuple[list[tuple[str, str]], set[str]]:
    """Forwarding headers mixing addresses and garbage, and the addresses they hold."""
    hops = draw(st.lists(hop, max_size=6))
    use_forwarded = draw(st.booleans())
    entries: list[str] = []
    addresses: set[str] = set()
    for item in hops:
        if isinstance(item, str):
            entries.append(item if not use_forwarded else f"for={item}")
        else:
            ip, port = item
            addresses.add(str(ip))
            entries.append(_fwd_element(ip, port) if use_forwarded else _xff_entry(ip, port))
    # Spread the entries over one to three header lines.
    cut = sorted(draw(st.lists(st.integers(0, len(entries)), max_size=2)))
    bounds = [0, *cut, len(entries)]
    name = FWD if use_forwarded else XFF
    headers = [(name, ", ".join(entries[a:b])) for a, b in itertools.pairwise(bounds)]
    if use_forwarded and draw(st.booleans()):
        # X-Forwarded-For next to Forwarded; it only counts when every
        # Forwarded line is blank, but it is an address in the headers.
        headers.insert(draw(st.integers(0, len(headers))), (XFF, "192.0.2.99"))
        addresses.add("192.0.2.99")
    return headers, addresses


@given(
    untrusted_ips, st.lists(st.tuples(st.sampled_from([XFF, FWD, "x-forwarded-for"]), st.text()))
)
def test_untrusted_peer_always_wins(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address, headers: list[tuple[str, str]]
) -> None:
    """Whatever the headers, an untrusted peer is the client."""
    assert PROXIES.client_address(str(peer), headers) == str(peer)


@given(any_ips, forwarding_headers())
def test_result_is_peer_or_a_forwarded_address(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    generated: tuple[list[tuple[str, str]], set[str]],
) -> None:
    """The answer is always the peer or an address that appears in the headers."""
    headers, addresses = generated
    assert PROXIES.client_address(str(peer), headers) in addresses | {str(peer)}


@given(
    trusted_ips,
    st.lists(st.tuples(st.sampled_from([XFF, FWD, "Forwarded", "X-Forwarded-For"]), st.text())),
)
def test_arbitrary_headers_never_raise(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address, headers: list[tuple[str, str]]
) -> None:
    """Any header text yields the peer or a valid IP address, never an exception."""
    result = PROXIES.client_address(str(peer), headers)
    if result != str(peer):
        assert str(ipaddress.ip_address(result)) == result


@given(
    trusted_ips,
    untrusted_ips,
    st.lists(untrusted_ips, max_size=3),
    st.lists(st.tuples(trusted_ips, st.booleans()), max_size=4),
    st.booleans(),
)
def test_client_behind_trusted_chain_is_found(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    real: ipaddress.IPv4Address | ipaddress.IPv6Address,
    spoofed: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    chain: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, bool]],
    use_forwarded: bool,
) -> None:
    """The first untrusted hop right of any spoofed prefix is the client, in both formats."""
    if use_forwarded:
        parts = [_fwd_element(ip, False) for ip in spoofed]
        parts += [_fwd_element(real, True)] + [_fwd_element(ip, port) for ip, port in chain]
        headers = [(FWD, ", ".join(parts))]
    else:
        parts = [_xff_entry(ip, False) for ip in spoofed]
        parts += [_xff_entry(real, True)] + [_xff_entry(ip, port) for ip, port in chain]
        headers = [(XFF, ", ".join(parts))]
    assert PROXIES.client_address(str(peer), headers) == str(real)


@given(trusted_ips, st.lists(trusted_ips, min_size=1, max_size=5))
def test_all_trusted_chain_gives_leftmost(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    chain: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    """When every hop is trusted, the leftmost hop is the client."""
    headers = [(XFF, ", ".join(_xff_entry(ip, False) for ip in chain))]
    assert PROXIES.client_address(str(peer), headers) == str(chain[0])


@given(trusted_ips, st.lists(st.tuples(any_ips, st.booleans()), max_size=5))
def test_forwarded_and_x_forwarded_for_agree(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    hops: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, bool]],
) -> None:
    """The same chain written in either header gives the same client."""
    xff = [(XFF, ", ".join(_xff_entry(ip, port) for ip, port in hops))]
    fwd = [(FWD, ", ".join(_fwd_element(ip, port) for ip, port in hops))]
    assert PROXIES.client_address(str(peer), xff) == PROXIES.client_address(str(peer), fwd)
