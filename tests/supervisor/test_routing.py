"""Tests for path routing with parameters."""

from __future__ import annotations

import re
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.server._routing import Route, RouteMatch, Router

# Text for one path segment, anything but the empty string.
segments = st.text(min_size=1, max_size=20)


def _match(router: Router, path: str) -> RouteMatch:
    found = router.match(path)
    assert found is not None, path
    return found


# --- pattern validation ------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("chat/{room}", "must start with '/'"),
        ("", "must start with '/'"),
        ("/chat/{room", "unbalanced '{'"),
        ("/chat/{ro{om}", "unbalanced '{'"),
        ("/chat/room}", "unbalanced '}'"),
        ("/chat/{room}}", "unbalanced '}'"),
        ("/chat/{}", "invalid parameter name ''"),
        ("/chat/{1room}", "invalid parameter name '1room'"),
        ("/chat/{my-room}", "invalid parameter name 'my-room'"),
        ("/chat/{ room }", "invalid parameter name ' room '"),
        ("/chat/{class}", "invalid parameter name 'class'"),
        ("/chat/{pièce}", "invalid parameter name 'pièce'"),
        ("/{room}/{room}", "duplicate parameter 'room'"),
        ("/{a}/{a:path}", "duplicate parameter 'a'"),
        ("/{n:int}", "unknown converter 'int'"),
        ("/{n:}", "unknown converter ''"),
        ("/{a}{b}", "must be separated by literal text"),
        ("/chat?x=1", "'?'"),
        ("/chat#top", "'#'"),
        ("/chat room", "' '"),
        ("/chat\n", "'\\n'"),
    ],
)
def test_invalid_pattern_raises_value_error_naming_the_problem(pattern: str, message: str) -> None:
    """A malformed pattern raises ValueError whose message says what is wrong."""
    with pytest.raises(ValueError, match="route pattern") as info:
        Route(pattern, None)
    assert message in str(info.value)
    assert repr(pattern) in str(info.value)


def test_non_string_pattern_raises_type_error() -> None:
    """A pattern that is not a string is refused with TypeError."""
    with pytest.raises(TypeError, match="must be a str"):
        Route(b"/chat", None)  # type: ignore[arg-type]


@given(st.text(max_size=30))
def test_arbitrary_pattern_builds_or_raises_value_error(pattern: str) -> None:
    """Any string either builds a route or raises ValueError, nothing else."""
    try:
        route = Route(pattern, None)
    except ValueError:
        return
    assert route.pattern == pattern
    assert len(set(route.param_names)) == len(route.param_names)


@pytest.mark.parametrize(
    "pattern",
    ["/", "/chat", "/chat/{room}", "/{a}/{b}", "/files/{path:path}", "/x/{n:str}.txt", "/a-{b}"],
)
def test_valid_pattern_builds(pattern: str) -> None:
    """Well-formed patterns are accepted and keep the pattern text."""
    assert Route(pattern, "t").pattern == pattern


def test_route_exposes_parameter_names_in_order() -> None:
    """param_names lists the parameters in the order they appear."""
    route = Route("/{b}/x/{a}/{rest:path}", None)
    assert route.param_names == ("b", "a", "rest")
    assert not route.is_static


def test_static_route_has_no_parameters() -> None:
    """A pattern without parameters is static."""
    route = Route("/healthz", None)
    assert route.is_static
    assert route.param_names == ()


# --- Route.match -------------------------------------------------------------


def test_default_parameter_matches_one_segment() -> None:
    """{name} captures a single segment."""
    assert Route("/chat/{room}", None).match("/chat/lobby") == {"room": "lobby"}


def test_default_parameter_does_not_match_a_slash() -> None:
    """{name} never spans two segments."""
    assert Route("/chat/{room}", None).match("/chat/a/b") is None


def test_default_parameter_does_not_match_empty_segment() -> None:
    """{name} needs at least one character."""
    assert Route("/chat/{room}", None).match("/chat/") is None
    assert Route("/{a}/x", None).match("//x") is None


def test_explicit_str_converter_behaves_as_default() -> None:
    """{name:str} is the same as {name}."""
    route = Route("/chat/{room:str}", None)
    assert route.match("/chat/lobby") == {"room": "lobby"}
    assert route.match("/chat/a/b") is None


def test_path_parameter_matches_slashes() -> None:
    """{name:path} captures the rest of the path, slashes included."""
    route = Route("/files/{path:path}", None)
    assert route.match("/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert route.match("/files/a/") == {"path": "a/"}


def test_path_parameter_does_not_match_empty() -> None:
    """{name:path} needs at least one character."""
    route = Route("/files/{path:path}", None)
    assert route.match("/files/") is None
    assert route.match("/files") is None


def test_path_parameter_in_the_middle() -> None:
    """A path parameter followed by literal text backtracks to fit it."""
    route = Route("/repo/{name:path}/blob/{ref}", None)
    assert route.match("/repo/org/proj/blob/main") == {"name": "org/proj", "ref": "main"}


def test_parameter_with_literal_suffix() -> None:
    """Literal text may follow a parameter inside one segment."""
    route = Route("/f/{name}.txt", None)
    assert route.match("/f/notes.txt") == {"name": "notes"}
    assert route.match("/f/notes.md") is None


def test_literal_regex_metacharacters_are_literal() -> None:
    """A '.' or '+' in a pattern only matches itself."""
    route = Route("/a.b/{x}+", None)
    assert route.match("/a.b/1+") == {"x": "1"}
    assert route.match("/axb/1+") is None
    assert route.match("/a.b/11") is None


def test_match_is_anchored_at_both_ends() -> None:
    """A route matches the whole path, not a prefix or a suffix."""
    route = Route("/chat/{room}", None)
    assert route.match("/chat/x/extra") is None
    assert route.match("/prefix/chat/x") is None


def test_parameters_are_percent_decoded() -> None:
    """Captured values are decoded with unquote."""
    assert Route("/chat/{room}", None).match("/chat/caf%C3%A9%20bar") == {"room": "café bar"}


def test_encoded_slash_stays_inside_segment() -> None:
    """%2F matches as part of one segment and decodes to '/' in the value."""
    route = Route("/chat/{room}", None)
    assert route.match("/chat/a%2Fb") == {"room": "a/b"}


def test_invalid_utf8_escape_decodes_to_replacement_character() -> None:
    """Undecodable percent-escapes become U+FFFD rather than raising."""
    assert Route("/chat/{room}", None).match("/chat/%FF") == {"room": "\ufffd"}


def test_plus_is_not_a_space_in_paths() -> None:
    """'+' in a path is literal (only query strings use it for spaces)."""
    assert Route("/chat/{room}", None).match("/chat/a+b") == {"room": "a+b"}


def test_static_route_matches_exactly() -> None:
    """A static route matches its own path only, with an empty parameter map."""
    route = Route("/chat", None)
    assert route.match("/chat") == {}
    assert route.match("/chat/") is None
    assert route.match("/Chat") is None


def test_non_ascii_literal_matches_percent_encoded_path() -> None:
    """A non-ASCII literal matches the UTF-8 percent-encoded form sent on the wire."""
    assert Route("/café", None).match("/caf%C3%A9") == {}
    assert Route("/café/{x}", None).match("/caf%C3%A9/1") == {"x": "1"}


def test_pre_encoded_literal_matches_raw_path() -> None:
    """A literal written percent-encoded matches the same raw path."""
    assert Route("/caf%C3%A9", None).match("/caf%C3%A9") == {}


def test_returned_parameters_are_read_only() -> None:
    """The parameter mapping cannot be mutated by a caller."""
    params = Route("/chat/{room}", None).match("/chat/a")
    assert params is not None
    with pytest.raises(TypeError):
        params["room"] = "b"  # type: ignore[index]


@given(segments)
def test_default_parameter_round_trips_any_value(value: str) -> None:
    """Any value, percent-encoded into one segment, comes back unchanged."""
    path = "/chat/" + urllib.parse.quote(value, safe="")
    assert Route("/chat/{room}", None).match(path) == {"room": value}


@given(st.lists(segments, min_size=1, max_size=5))
def test_path_parameter_round_trips_any_segments(parts: list[str]) -> None:
    """Segments encoded and joined with '/' come back joined with '/'."""
    path = "/files/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)
    assert Route("/files/{p:path}", None).match(path) == {"p": "/".join(parts)}


@given(st.text(max_size=30))
def test_matching_any_path_never_raises(path: str) -> None:
    """Matching arbitrary text returns a match or None, never raises."""
    router = Router()
    router.add("/chat/{room}", 1)
    router.add("/files/{p:path}", 2)
    router.add("/", 3)
    found = router.match(path)
    assert found is None or found.target in {1, 2, 3}


# --- Router -------------------------------------------------------------------


def test_router_returns_target_and_params() -> None:
    """A match carries the route, its target and the parameters."""
    router = Router()
    route = router.add("/chat/{room}", "chat-handler")
    found = _match(router, "/chat/lobby")
    assert found.route is route
    assert found.target == "chat-handler"
    assert found.params == {"room": "lobby"}


def test_router_returns_none_when_nothing_matches() -> None:
    """An unknown path gives None."""
    router = Router()
    router.add("/chat/{room}", 1)
    assert router.match("/other") is None
    assert Router().match("/") is None


def test_static_route_wins_over_parametrised_added_first() -> None:
    """A static route beats a parametrised one even when added after it."""
    router = Router()
    router.add("/chat/{room}", "room")
    router.add("/chat/lobby", "lobby")
    assert _match(router, "/chat/lobby").target == "lobby"
    assert _match(router, "/chat/other").target == "room"


def test_static_route_wins_over_path_parameter() -> None:
    """A static route beats a catch-all path route."""
    router = Router()
    router.add("/{rest:path}", "catch-all")
    router.add("/healthz", "health")
    assert _match(router, "/healthz").target == "health"
    assert _match(router, "/anything/else").target == "catch-all"


def test_first_added_parametrised_route_wins() -> None:
    """Among parametrised routes, the one added first wins."""
    router = Router()
    router.add("/{a}/x", "first")
    router.add("/y/{b}", "second")
    assert _match(router, "/y/x").target == "first"
    assert _match(router, "/y/z").target == "second"


def test_first_added_wins_in_reverse_order_too() -> None:
    """Order of addition, not specificity, decides between parametrised routes."""
    router = Router()
    router.add("/y/{b}", "second")
    router.add("/{a}/x", "first")
    assert _match(router, "/y/x").target == "second"


def test_duplicate_pattern_raises() -> None:
    """Adding the same pattern twice raises ValueError."""
    router = Router()
    router.add("/chat/{room}", 1)
    with pytest.raises(ValueError, match=re.escape("duplicate route pattern '/chat/{room}'")):
        router.add("/chat/{room}", 2)
    assert _match(router, "/chat/a").target == 1


def test_duplicate_static_pattern_raises() -> None:
    """Adding the same static pattern twice raises ValueError."""
    router = Router()
    router.add("/echo", 1)
    with pytest.raises(ValueError, match="duplicate route pattern"):
        router.add("/echo", 2)


def test_equivalent_pattern_with_other_names_raises() -> None:
    """Two patterns matching the same paths under different names are refused."""
    router = Router()
    router.add("/chat/{room}", 1)
    with pytest.raises(ValueError, match=re.escape("matches the same paths as '/chat/{room}'")):
        router.add("/chat/{name:str}", 2)


def test_equivalent_encoded_static_patterns_raise() -> None:
    """A non-ASCII literal and its percent-encoded spelling are the same route."""
    router = Router()
    router.add("/café", 1)
    with pytest.raises(ValueError, match="matches the same paths"):
        router.add("/caf%C3%A9", 2)


def test_different_converters_are_not_duplicates() -> None:
    """{x} and {x:path} at the same place are distinct routes."""
    router = Router()
    router.add("/f/{x}", "one")
    router.add("/f/{x:path}", "many")
    assert _match(router, "/f/a").target == "one"
    assert _match(router, "/f/a/b").target == "many"


def test_invalid_pattern_is_not_added() -> None:
    """A failed add leaves the router unchanged."""
    router = Router()
    with pytest.raises(ValueError, match="unbalanced"):
        router.add("/chat/{room", 1)
    assert len(router) == 0


def test_trailing_slash_is_a_different_route() -> None:
    """'/chat' and '/chat/' are distinct paths."""
    router = Router()
    router.add("/chat", "bare")
    assert router.match("/chat/") is None
    router.add("/chat/", "slash")
    assert _match(router, "/chat/").target == "slash"
    assert _match(router, "/chat").target == "bare"


def test_static_match_has_empty_params() -> None:
    """A static match has an empty parameter mapping."""
    router = Router()
    router.add("/echo", 1)
    assert _match(router, "/echo").params == {}


def test_router_lists_routes_in_addition_order() -> None:
    """routes, iteration and len reflect every route in order of addition."""
    router = Router()
    patterns = ["/b/{x}", "/a", "/c/{p:path}", "/d"]
    for index, pattern in enumerate(patterns):
        router.add(pattern, index)
    assert [route.pattern for route in router.routes] == patterns
    assert [route.target for route in router] == [0, 1, 2, 3]
    assert len(router) == 4
    assert repr(router) == "Router(['/b/{x}', '/a', '/c/{p:path}', '/d'])"


def test_route_match_target_is_route_target() -> None:
    """RouteMatch.target is the target of its route."""
    target = object()
    found = RouteMatch(Route("/x", target), {})
    assert found.target is target


def test_targets_need_not_be_hashable() -> None:
    """Any object, even an unhashable one, can be a route target."""
    router = Router()
    target: dict[str, int] = {"state": 1}
    router.add("/x/{y}", target)
    assert _match(router, "/x/1").target is target


@given(st.lists(st.from_regex(r"/[a-z]{1,3}(/[a-z]{1,3}){0,2}", fullmatch=True), unique=True))
def test_every_static_route_is_found_among_parametrised_ones(paths: list[str]) -> None:
    """Each static route matches its own path whatever parametrised routes exist."""
    router = Router()
    router.add("/{a}", "param1")
    router.add("/{a}/{b}", "param2")
    router.add("/{rest:path}", "rest")
    for path in paths:
        router.add(path, path)
    for path in paths:
        assert _match(router, path).target == path
