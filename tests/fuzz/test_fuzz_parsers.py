"""Fuzz: the pure functions that read what a client sent, on mutated and arbitrary input.

Each must never raise on client input and must keep its documented promise:
request helpers (``supervisor.server._request``), the real client address behind
proxies (``supervisor.server._proxy``), and path routing (``supervisor.server._routing``).
"""

from __future__ import annotations

import ipaddress
import string

from hypothesis import strategies as st
from websockets.datastructures import Headers

from supervisor.server._proxy import TrustedProxies
from supervisor.server._request import (
    SINGLETON_HEADERS,
    OriginPolicy,
    header_list,
    header_tokens,
    parse_cookies,
    repeated_singleton,
    single_header,
    split_target,
)
from supervisor.server._routing import Router
from tests.helpers.fuzz import Fuzzer

_NAMES = st.sampled_from(
    [*SINGLETON_HEADERS, "Connection", "Upgrade", "Cookie", "Accept", "X-Forwarded-For"]
).flatmap(lambda name: st.sampled_from([name, name.lower(), name.upper()]))
_VALUES = st.one_of(
    # What a parsed request may hold: visible characters, spaces and tabs.
    st.text(alphabet=string.printable.strip() + " \t", max_size=30),
    st.lists(st.sampled_from(["upgrade", " keep-alive", "", "Upgrade ", ",", "x=1"])).map(",".join),
)


def test_header_helpers_read_repeated_headers_as_documented(fuzz: Fuzzer) -> None:
    """Any header list: singletons found when repeated, lists joined, tokens split and lowered."""

    def check(pairs: list[tuple[str, str]]) -> None:
        headers = Headers(pairs)
        counts: dict[str, int] = {}
        for name, _ in pairs:
            counts[name.lower()] = counts.get(name.lower(), 0) + 1
        repeated = [name for name in SINGLETON_HEADERS if counts.get(name.lower(), 0) > 1]
        assert repeated_singleton(headers) == (repeated[0] if repeated else None)
        for name in {name for name, _ in pairs}:
            values = [value for key, value in pairs if key.lower() == name.lower()]
            assert single_header(headers, name) == values[0]
            assert header_list(headers, name) == ", ".join(values)
            assert header_tokens(headers, name) == [
                token.strip().lower()
                for value in values
                for token in value.split(",")
                if token.strip()
            ]

    fuzz.run(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), check)


_TARGETS = st.one_of(
    st.text(max_size=60),
    st.builds(
        "".join,
        st.lists(
            st.sampled_from(["/", "?", "#", "=", "&", "%", "%2F", "://", "http", "x", "é", ";"]),
            max_size=12,
        ),
    ),
)


def test_split_target_always_gives_a_path_and_a_query(fuzz: Fuzzer) -> None:
    """Any request target splits into a path starting with / (no ? or #) and string lists."""

    def check(target: str) -> None:
        path, query = split_target(target)
        assert "?" not in path, (target, path)
        assert "#" not in path, (target, path)
        if target.startswith("/") or "://" in target.partition("?")[0].partition("#")[0]:
            assert path.startswith("/"), (target, path)
        assert all(isinstance(v, str) for values in query.values() for v in values)

    fuzz.run(_TARGETS, check)


def test_parse_cookies_keeps_only_token_names_from_the_input(fuzz: Fuzzer) -> None:
    """Any Cookie lines: never raises; every name is an HTTP token that was in the input."""
    token = set("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)

    def check(lines: list[str]) -> None:
        cookies = parse_cookies(lines)
        for name in cookies:
            assert name
            assert set(name) <= token
            assert any(name in line for line in lines)

    pairs = st.lists(
        st.tuples(st.text(max_size=8), st.sampled_from(["=", "", "=="]), st.text(max_size=10)).map(
            "".join
        ),
        max_size=6,
    ).map("; ".join)
    fuzz.run(st.lists(st.one_of(pairs, st.text(max_size=40)), max_size=3), check)


_ORIGIN_PARTS = st.tuples(
    st.sampled_from(["https", "HTTPS", "http", "wss", "ftp", ""]),
    st.sampled_from(["://", ":/", "//", ""]),
    st.sampled_from(["example.com", "EXAMPLE.com", "a.example.com", "example.co", "[::1]", ""]),
    st.sampled_from(["", ":443", ":80", ":8443", ":", ":x", "/", "/path", "?q", "#f", "@"]),
)


def test_origin_policy_answers_any_header_without_raising(fuzz: Fuzzer) -> None:
    """Any Origin value: a yes or no; the allowed origin in any letter case or with its
    default port is allowed, anything with a path, query or other port is not."""
    policy = OriginPolicy(["https://example.com", "https://*.example.com"])

    def check(parts: tuple[str, str, str, str]) -> None:
        scheme, separator, host, rest = parts
        origin = scheme + separator + host + rest
        allowed = policy.allows(origin)
        assert isinstance(allowed, bool)
        well_formed = scheme.lower() == "https" and separator == "://"
        if (
            well_formed
            and host.lower() in ("example.com", "a.example.com")
            and rest in ("", ":443")
        ):
            assert allowed, origin
        if rest not in ("", ":443"):
            assert not allowed, origin

    fuzz.run(_ORIGIN_PARTS | st.text(max_size=40).map(lambda t: (t, "", "", "")), check)


_HOPS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:{80}"),
    st.ip_addresses(v=4).map(lambda a: f"{a}:8080"),
    st.sampled_from(["unknown", "_hidden", "", "[::1", "garbage", '"', "1.2.3.4:99999"]),
    st.text(max_size=12),
)


@st.composite
def _forwarding(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    peer = draw(st.sampled_from(["10.0.0.1", "127.0.0.1", "::ffff:10.0.0.2", "192.0.2.7", "x"]))
    headers: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 3))):
        hops = draw(st.lists(_HOPS, max_size=4))
        if draw(st.booleans()):
            value = ", ".join(hops)
            headers.append((draw(st.sampled_from(["X-Forwarded-For", "x-forwarded-for"])), value))
        else:
            quoted = [f'for="{hop}"' if draw(st.booleans()) else f"for={hop}" for hop in hops]
            extra = draw(st.sampled_from(["", ";proto=https", ";by=x", ";for=1.1.1.1"]))
            headers.append(("Forwarded", ", ".join(q + extra for q in quoted)))
    return peer, headers


def test_client_address_is_the_peer_or_a_forwarded_address(fuzz: Fuzzer) -> None:
    """Any forwarding headers: the answer is the peer or an address they name; never raises."""
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "::1"])

    def check(case: tuple[str, list[tuple[str, str]]]) -> None:
        peer, headers = case
        client = proxies.client_address(peer, headers)
        if client == peer:
            return
        address = ipaddress.ip_address(client)
        assert str(address) == client
        # Written somewhere in the headers, in one of the forms a hop may take.
        text = " ".join(value for _, value in headers).lower()
        written = {client, f"[{client}]"}
        if address.version == 6:
            written |= {address.exploded}
        assert any(form.lower() in text for form in written) or _spelled_otherwise(client, text)

    fuzz.run(_forwarding(), check)


def _spelled_otherwise(client: str, text: str) -> bool:
    """Whether some token of ``text`` parses to the address ``client`` (another spelling)."""
    for token in text.replace('"', " ").replace(",", " ").replace(";", " ").split():
        candidate = token.removeprefix("for=").strip("[]")
        host = candidate.rsplit(":", 1)[0] if candidate.count(":") == 1 else candidate
        for form in (candidate, host, candidate.partition("]")[0].lstrip("[")):
            try:
                if str(ipaddress.ip_address(form)) == client:
                    return True
            except ValueError:
                continue
    return False


def test_router_matches_any_path_without_raising(fuzz: Fuzzer) -> None:
    """Any raw path: no match, or a match whose parameters are decoded non-empty strings."""
    router = Router()
    for pattern in ["/echo", "/chat/{room}", "/files/{rest:path}", "/a/{x}/b/{y}", "/caf\u00e9"]:
        router.add(pattern, pattern)
    pieces = ["/", "echo", "chat", "files", "a", "b", "%2F", "%", "%zz", "%C3%A9", "café", "..", ""]

    def check(path: str) -> None:
        found = router.match(path)
        if found is None:
            return
        for value in found.params.values():
            assert isinstance(value, str)
            assert value
        if found.route.pattern == "/chat/{room}":
            assert path.count("/") == 2

    fuzz.run(st.one_of(st.text(max_size=30), st.lists(st.sampled_from(pieces)).map("".join)), check)
