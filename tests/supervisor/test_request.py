"""Tests for request-target, repeated-header, cookie and origin parsing."""

from __future__ import annotations

import re
import string
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from websockets.datastructures import Headers

from supervisor.server._request import (
    SINGLETON_HEADERS,
    CheckedHeaders,
    OriginPolicy,
    header_list,
    header_tokens,
    origin_allowed,
    parse_cookies,
    repeated_singleton,
    single_header,
    split_target,
)

ROOT = Path(__file__).resolve().parents[2]

# --- split_target --------------------------------------------------------------


def test_split_target_without_query() -> None:
    """A target without '?' is all path and no query."""
    assert split_target("/chat/lobby") == ("/chat/lobby", {})


def test_split_target_with_query() -> None:
    """The query is parsed into lists of values per name."""
    assert split_target("/chat/lobby?user=ann&lang=en") == (
        "/chat/lobby",
        {"user": ["ann"], "lang": ["en"]},
    )


def test_split_target_keeps_repeated_values_in_order() -> None:
    """A name given several times keeps every value, in order."""
    assert split_target("/x?a=1&b=2&a=3")[1] == {"a": ["1", "3"], "b": ["2"]}


def test_split_target_keeps_blank_values() -> None:
    """'?flag' and 'x=' keep their names with empty values."""
    assert split_target("/x?flag&x=")[1] == {"flag": [""], "x": [""]}


def test_split_target_decodes_query_but_not_path() -> None:
    """Query values are decoded ('+' and %XX); the path stays raw for routing."""
    path, query = split_target("/caf%C3%A9/a%2Fb?user=ann+lee&city=K%C3%B6ln")
    assert path == "/caf%C3%A9/a%2Fb"
    assert query == {"user": ["ann lee"], "city": ["Köln"]}


def test_split_target_empty_query() -> None:
    """A trailing '?' gives an empty query."""
    assert split_target("/x?") == ("/x", {})


def test_split_target_only_first_question_mark_splits() -> None:
    """Later '?' characters belong to the query."""
    assert split_target("/x?q=a?b") == ("/x", {"q": ["a?b"]})


def test_split_target_drops_fragment() -> None:
    """A fragment is not part of the path or the query."""
    assert split_target("/x?a=1#frag") == ("/x", {"a": ["1"]})
    assert split_target("/x#frag?a=1") == ("/x", {})


def test_split_target_empty_target_is_root() -> None:
    """An empty target or an empty path becomes '/'."""
    assert split_target("") == ("/", {})
    assert split_target("?a=1") == ("/", {"a": ["1"]})


def test_split_target_double_slash_is_a_path_not_an_authority() -> None:
    """'//host/path' in origin form stays a path."""
    assert split_target("//evil.example/x?a=1") == ("//evil.example/x", {"a": ["1"]})


def test_split_target_absolute_form_is_reduced_to_path() -> None:
    """An absolute-form target keeps only its path and query."""
    assert split_target("http://example.com:8080/chat/x?u=1") == ("/chat/x", {"u": ["1"]})
    assert split_target("wss://example.com") == ("/", {})


def test_split_target_invalid_utf8_in_query_is_replaced() -> None:
    """Undecodable query bytes become U+FFFD rather than raising."""
    assert split_target("/x?a=%FF")[1] == {"a": ["\ufffd"]}


@given(st.text())
def test_split_target_never_raises(target: str) -> None:
    """Any string splits into a path free of '?' and '#', and a query."""
    path, query = split_target(target)
    assert path
    assert "?" not in path
    assert "#" not in path
    assert all(isinstance(values, list) and values for values in query.values())


# --- parse_cookies -------------------------------------------------------------


def test_parse_cookies_simple() -> None:
    """'a=1; b=2' gives both cookies."""
    assert parse_cookies(["a=1; b=2"]) == {"a": "1", "b": "2"}


def test_parse_cookies_no_headers() -> None:
    """No Cookie header gives no cookies."""
    assert parse_cookies([]) == {}
    assert parse_cookies([""]) == {}


def test_parse_cookies_several_headers() -> None:
    """Cookies from every Cookie header are merged."""
    assert parse_cookies(["a=1", "b=2; c=3"]) == {"a": "1", "b": "2", "c": "3"}


def test_parse_cookies_first_occurrence_wins() -> None:
    """A repeated name keeps its first value (the most specific path)."""
    assert parse_cookies(["sid=new; sid=old", "sid=other"]) == {"sid": "new"}


def test_parse_cookies_decodes_quoted_values() -> None:
    """Double-quoted values lose their quotes and have escapes resolved."""
    assert parse_cookies(['a="hello world"; b="x\\073y\\"z"']) == {
        "a": "hello world",
        "b": 'x;y"z',
    }


def test_parse_cookies_keeps_unquoted_values_verbatim() -> None:
    """Unquoted values are not URL-decoded and keep '=' after the first."""
    assert parse_cookies(["token=abc==; url=a%20b"]) == {"token": "abc==", "url": "a%20b"}


def test_parse_cookies_allows_empty_values() -> None:
    """'a=' is a cookie with an empty value."""
    assert parse_cookies(["a=; b=1"]) == {"a": "", "b": "1"}


def test_parse_cookies_keeps_names_simplecookie_treats_as_attributes() -> None:
    """Cookies named like Set-Cookie attributes are ordinary request cookies."""
    assert parse_cookies(["path=/x; expires=soon; secure=1; b=2"]) == {
        "path": "/x",
        "expires": "soon",
        "secure": "1",
        "b": "2",
    }


@pytest.mark.parametrize(
    "garbage",
    [
        "novalue",
        "=nameless",
        "bad name=1",
        "a<b=1",
        "a,b=1",
        "é=1",
        ";;;",
        '"quoted"=1',
        "a\x00b=1",
    ],
)
def test_parse_cookies_skips_bad_pairs_and_keeps_the_rest(garbage: str) -> None:
    """A malformed pair is skipped; pairs around it survive."""
    assert parse_cookies([f"good=1; {garbage}; also=2"]) == {"good": "1", "also": "2"}


def test_parse_cookies_strips_whitespace_around_pairs() -> None:
    """Spaces around names and values are ignored."""
    assert parse_cookies(["  a =  1 ;b=2  "]) == {"a": "1", "b": "2"}


@given(st.lists(st.text(), max_size=4))
def test_parse_cookies_never_raises(headers: list[str]) -> None:
    """Arbitrary header text parses into string pairs without raising."""
    cookies = parse_cookies(headers)
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in cookies.items())


_COOKIE_NAME_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


@given(
    st.dictionaries(
        st.text(alphabet=_COOKIE_NAME_CHARS, min_size=1, max_size=10),
        st.text(max_size=20),
        max_size=5,
    )
)
def test_parse_cookies_round_trips_simplecookie_output(cookies: dict[str, str]) -> None:
    """Whatever SimpleCookie encodes, parse_cookies decodes back to the original."""
    jar: SimpleCookie = SimpleCookie()
    for name, value in cookies.items():
        try:
            jar[name] = value
        except Exception:
            # SimpleCookie refuses reserved names like "path"; nothing to round-trip.
            assume(False)
    header = "; ".join(morsel.OutputString() for morsel in jar.values())
    assert parse_cookies([header]) == cookies


# --- origin checks -------------------------------------------------------------


def test_none_allowed_means_everything_is_allowed() -> None:
    """allowed=None disables the check, even for a missing or malformed Origin."""
    assert origin_allowed("https://evil.example", None)
    assert origin_allowed(None, None)
    assert origin_allowed("not an origin", None)


def test_missing_origin_refused_unless_none_is_listed() -> None:
    """A missing Origin header passes only if None is in the allowed collection."""
    assert not origin_allowed(None, ["https://example.com"])
    assert not origin_allowed(None, ["*"])
    assert not origin_allowed(None, [])
    assert origin_allowed(None, ["https://example.com", None])


def test_empty_allowed_refuses_every_origin() -> None:
    """An empty collection allows nothing."""
    assert not origin_allowed("https://example.com", [])


def test_exact_origin_is_allowed() -> None:
    """An exact entry allows that origin and no other."""
    allowed = ["https://example.com"]
    assert origin_allowed("https://example.com", allowed)
    assert not origin_allowed("https://example.org", allowed)
    assert not origin_allowed("https://evil.example.com", allowed)
    assert not origin_allowed("https://example.com.evil.net", allowed)


def test_scheme_must_match() -> None:
    """http and https origins are different."""
    assert not origin_allowed("http://example.com", ["https://example.com"])


def test_scheme_and_host_compare_case_insensitively() -> None:
    """Case differences in scheme or host do not matter, on either side."""
    assert origin_allowed("HTTPS://Example.COM", ["https://example.com"])
    assert origin_allowed("https://example.com", ["HTTPS://EXAMPLE.com"])


def test_port_must_match() -> None:
    """A non-default port is part of the origin."""
    allowed = ["http://localhost:8080"]
    assert origin_allowed("http://localhost:8080", allowed)
    assert not origin_allowed("http://localhost:8081", allowed)
    assert not origin_allowed("http://localhost", allowed)


def test_default_port_may_be_written_or_omitted() -> None:
    """https://a:443 and https://a are the same origin, both ways round."""
    assert origin_allowed("https://example.com:443", ["https://example.com"])
    assert origin_allowed("https://example.com", ["https://example.com:443"])
    assert origin_allowed("http://example.com:80", ["http://example.com"])
    assert not origin_allowed("https://example.com:80", ["https://example.com"])


def test_ipv6_origin() -> None:
    """Bracketed IPv6 hosts compare by address text and port."""
    assert origin_allowed("http://[::1]:8080", ["http://[::1]:8080"])
    assert not origin_allowed("http://[::2]:8080", ["http://[::1]:8080"])


def test_wildcard_subdomain_matches_any_depth() -> None:
    """https://*.example.com allows every subdomain, however deep."""
    allowed = ["https://*.example.com"]
    assert origin_allowed("https://app.example.com", allowed)
    assert origin_allowed("https://a.b.example.com", allowed)
    assert origin_allowed("https://APP.Example.com", allowed)


def test_wildcard_subdomain_excludes_apex_and_lookalikes() -> None:
    """A wildcard does not allow the bare domain or a different domain ending alike."""
    allowed = ["https://*.example.com"]
    assert not origin_allowed("https://example.com", allowed)
    assert not origin_allowed("https://evilexample.com", allowed)
    assert not origin_allowed("https://example.com.evil.net", allowed)
    assert not origin_allowed("http://app.example.com", allowed)


def test_wildcard_subdomain_with_port() -> None:
    """A wildcard entry's port must match too."""
    allowed = ["https://*.example.com:8443"]
    assert origin_allowed("https://a.example.com:8443", allowed)
    assert not origin_allowed("https://a.example.com", allowed)


def test_star_allows_any_present_origin() -> None:
    """'*' allows any Origin header, even 'null' or garbage, but not a missing one."""
    assert origin_allowed("https://anything.example", ["*"])
    assert origin_allowed("null", ["*"])
    assert origin_allowed("garbage", ["*"])
    assert not origin_allowed(None, ["*"])


def test_null_origin_needs_explicit_entry() -> None:
    """The opaque 'null' origin passes only when 'null' is listed."""
    assert not origin_allowed("null", ["https://example.com"])
    assert origin_allowed("null", ["null"])
    assert origin_allowed("null", ["NULL"])


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "example.com",
        "https://example.com/",
        "https://example.com/path",
        "https://example.com?x",
        "https://example.com#x",
        "https://user@example.com",
        "https://example.com:",
        "https://example.com:99999",
        "https://example.com:port",
        "https://exa mple.com",
        "https://[::1",
        "https://exämple.com",
        "https://",
    ],
)
def test_malformed_origin_header_is_refused(origin: str) -> None:
    """An Origin header that is not a serialised origin never passes a list check."""
    assert not origin_allowed(origin, ["https://example.com", "https://*.example.com"])


def test_surrounding_whitespace_in_origin_header_is_ignored() -> None:
    """Whitespace around the header value does not change the verdict."""
    assert origin_allowed("  https://example.com ", ["https://example.com"])


@pytest.mark.parametrize(
    "entry",
    [
        "example.com",
        "https://example.com/",
        "https://example.com/path",
        "https://*example.com",
        "https://a.*.example.com",
        "*.example.com",
        "https://*",
        "https://exämple.com",
        "https://example.com:99999",
        "",
    ],
)
def test_malformed_allowed_entry_raises_value_error(entry: str) -> None:
    """A bad configuration entry is refused with ValueError naming it."""
    with pytest.raises(ValueError, match="invalid allowed origin") as info:
        OriginPolicy([entry])
    assert repr(entry) in str(info.value)


def test_single_string_instead_of_collection_raises_type_error() -> None:
    """Passing one origin string rather than a collection is refused."""
    with pytest.raises(TypeError, match="collection"):
        OriginPolicy("https://example.com")


def test_non_string_entry_raises_type_error() -> None:
    """An entry that is neither a str nor None is refused."""
    with pytest.raises(TypeError, match="str or None"):
        OriginPolicy([42])  # type: ignore[list-item]


def test_origin_policy_is_reusable() -> None:
    """A policy built once answers many checks consistently."""
    policy = OriginPolicy(["https://example.com", "https://*.example.org", None])
    assert policy.allows("https://example.com")
    assert policy.allows("https://a.example.org")
    assert policy.allows(None)
    assert not policy.allows("https://example.org")


def test_allowed_may_be_any_collection() -> None:
    """Sets and tuples work as well as lists."""
    assert origin_allowed("https://example.com", {"https://example.com"})
    assert origin_allowed(None, (None,))


_hosts = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


@given(st.text())
def test_origin_check_never_raises(origin: str) -> None:
    """Any header value gets a yes/no answer from a valid policy."""
    policy = OriginPolicy(["https://example.com", "https://*.example.org", "null"])
    assert isinstance(policy.allows(origin), bool)


@given(st.text())
def test_star_allows_every_string(origin: str) -> None:
    """'*' allows every present header value."""
    assert origin_allowed(origin, ["*"])


@given(_hosts, st.sampled_from(["http", "https"]), st.lists(st.booleans(), min_size=40))
def test_exact_entry_allows_itself_in_any_case(host: str, scheme: str, upper: list[bool]) -> None:
    """An entry allows its own origin whatever the letter case of the header."""
    origin = f"{scheme}://{host}"
    flipped = "".join(c.upper() if up else c for c, up in zip(origin, upper, strict=False))
    assert origin_allowed(flipped + origin[len(upper) :], [origin])


@given(_hosts, _hosts)
def test_wildcard_allows_exactly_the_subdomains(sub: str, domain: str) -> None:
    """A wildcard allows sub.domain and refuses the domain and unrelated hosts."""
    allowed = [f"https://*.{domain}"]
    assert origin_allowed(f"https://{sub}.{domain}", allowed)
    assert not origin_allowed(f"https://{domain}", allowed)
    assume(not sub.endswith("." + domain))
    assert not origin_allowed(f"https://{sub}", allowed)


# --- headers on several lines ---------------------------------------------------------


def test_list_header_lines_are_joined_in_order() -> None:
    """Two ``Accept`` lines read as one comma-separated list (RFC 9110 §5.3)."""
    headers = Headers([("Accept", "text/plain"), ("accept", "application/openmetrics-text")])
    assert header_list(headers, "ACCEPT") == "text/plain, application/openmetrics-text"
    assert header_list(Headers([("Accept", "*/*")]), "Accept") == "*/*"
    assert header_list(Headers(), "Accept") is None


def test_list_header_tokens_span_every_line() -> None:
    """``Connection`` elements come from every line, trimmed and lower-cased, blanks skipped."""
    headers = Headers([("Connection", "keep-alive, "), ("Connection", " Upgrade")])
    assert header_tokens(headers, "connection") == ["keep-alive", "upgrade"]
    assert header_tokens(Headers(), "Connection") == []


@given(st.lists(st.text(" \t,abcUPG-", max_size=12), max_size=3))
def test_list_header_tokens_are_every_lines_elements(values: list[str]) -> None:
    """However many lines and elements, one line of one element included: the elements
    of every line, trimmed, lower-cased, blanks skipped."""
    headers = Headers()
    for value in values:
        headers.set_insecure("Connection", value)
    expected = [token for v in values for e in v.split(",") if (token := e.strip().lower())]
    assert header_tokens(headers, "connection") == expected


def test_upgrade_is_a_token_not_a_substring() -> None:
    """``Connection: no-upgrade`` does not ask for an upgrade."""
    assert "upgrade" not in header_tokens(Headers([("Connection", "no-upgrade")]), "Connection")


@pytest.mark.parametrize("name", SINGLETON_HEADERS)
def test_a_repeated_singleton_is_named(name: str) -> None:
    """A singleton header on two lines, even with the same value, is reported by name."""
    headers = Headers([("X-Other", "1"), (name.upper(), "v"), (name.lower(), "v")])
    assert repeated_singleton(headers) == name


def test_singletons_once_and_list_headers_repeated_are_fine() -> None:
    """Each singleton once, and list headers repeated, is not a repeat."""
    headers = Headers(
        [(name, "v") for name in SINGLETON_HEADERS]
        + [("Connection", "keep-alive"), ("Connection", "Upgrade"), ("Cookie", "a=1")] * 2
    )
    assert repeated_singleton(headers) is None
    assert single_header(headers, "origin") == "v"
    assert single_header(headers, "Missing") is None


_NAMES = st.sampled_from(["Host", "Origin", "Connection", "Accept", "Cookie", "X-A"])


@given(st.lists(st.tuples(_NAMES, st.text(alphabet=string.printable, max_size=20))))
def test_header_readers_never_raise(lines: list[tuple[str, str]]) -> None:
    """Whatever repeats, the readers answer; a repeat is reported iff a singleton repeats."""
    headers = Headers()
    for name, value in lines:
        headers.set_insecure(name, value)
    counts = {name: sum(n == name for n, _ in lines) for name in SINGLETON_HEADERS}
    expected = next((name for name, n in counts.items() if n > 1), None)
    assert repeated_singleton(headers) == expected
    for name in ("Host", "Connection", "Accept", "Cookie"):
        single_header(headers, name)
        header_list(headers, name)
        header_tokens(headers, name)


@given(st.lists(st.tuples(_NAMES | st.text("abcXYZ-", min_size=1), st.text(max_size=20))))
def test_checked_headers_are_the_headers_websockets_builds(lines: list[tuple[str, str]]) -> None:
    """CheckedHeaders made from lines equals websockets' Headers added to line by line: the
    same lines in order, the same values per name, lookups and serialisation alike."""
    expected = Headers()
    for name, value in lines:
        expected.set_insecure(name, value)
    checked = CheckedHeaders(list(lines))
    assert isinstance(checked, Headers)
    assert checked == expected
    assert list(checked.raw_items()) == list(expected.raw_items())
    assert list(checked) == list(expected)
    assert len(checked) == len(expected)
    for name, _ in lines:
        assert checked.get_all(name.swapcase()) == expected.get_all(name)
        assert name.upper() in checked
    assert str(checked) == str(expected)
    # Still a Headers to write to (a hook's headers on a 101).
    checked["X-Added"] = "1"
    assert list(checked.raw_items())[-1] == ("X-Added", "1")
    assert checked.get_all("x-added") == ["1"]


# A lookup that raises MultipleValuesError on a repeated header: ``headers.get(...)`` or
# ``headers[...]`` not followed by an assignment (response headers are written that way).
_RAISING_LOOKUP = re.compile(r"headers\.get\(|headers\[[^\]]*\](?!\s*=[^=])")


def test_no_request_header_is_read_with_a_raising_lookup() -> None:
    """The server reads headers through the helpers above, never ``headers[...]``/``.get``."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in ("actors", "supervisor")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _RAISING_LOOKUP.search(line) and not line.lstrip().startswith("del ")
    ]
    assert found == []
