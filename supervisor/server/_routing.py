"""Path routing with parameters for the WebSocket handshake.

Theory of operation:
    A pattern such as ``/chat/{room}`` or ``/files/{path:path}`` is parsed once,
    validated, and compiled to one anchored regular expression. Literal text is
    matched against the *raw* request path, exactly as it arrived on the wire
    (percent-escapes included); parameter values are captured raw and only then
    decoded with :func:`urllib.parse.unquote`. Matching before decoding means an
    encoded slash (``%2F``) inside a ``{room}`` segment stays inside that
    segment instead of changing which route matches.

    Two kinds of parameter exist:

    * ``{name}`` (or ``{name:str}``) matches one non-empty path segment: any
      characters but ``/``.
    * ``{name:path}`` matches one or more characters, slashes included, so it
      can capture the rest of a path.

    A :class:`Router` looks static routes (no parameters) up in a dictionary, so
    they cost O(1) and always win over parametrised routes; parametrised routes
    are then tried in the order they were added, and the first match wins.

    Paths are compared exactly: no trailing-slash redirect, no case folding,
    no ``.``/``..`` normalisation. A WebSocket handshake cannot follow a
    redirect, so ``/chat`` and ``/chat/`` are two different routes.
"""

from __future__ import annotations

import keyword
import re
import string
import types
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Route", "RouteMatch", "Router"]

# The parameters of every static route: read-only, so one object serves all matches.
_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})

# Regular expression for each converter. Both are non-empty: an empty
# parameter is almost always a client bug, and non-empty captures keep
# ``/files/`` from silently matching ``/files/{path:path}``.
_CONVERTERS: Mapping[str, str] = types.MappingProxyType(
    {
        "str": r"[^/]+",
        "path": r".+",
    }
)

# Characters that can never be part of a path on the wire: ``?`` and ``#``
# start the query and the fragment, and whitespace or control characters are
# rejected by every HTTP parser. Allowing them in a pattern would only create
# routes that can never match.
_FORBIDDEN_LITERAL = frozenset("?#") | frozenset(chr(c) for c in range(0x21)) | {"\x7f"}

# Everything printable in ASCII stays as written when a literal is normalised;
# only non-ASCII text is percent-encoded (as UTF-8, upper-case hex, the form
# browsers send), so a pattern may be written either way.
_SAFE_ASCII = "".join(c for c in string.printable if c not in string.whitespace)


def _normalise_literal(text: str) -> str:
    """Return ``text`` as it appears in a raw request path."""
    return urllib.parse.quote(text, safe=_SAFE_ASCII)


def _parse_pattern(pattern: str) -> tuple[tuple[str, ...], str, str]:
    """Validate ``pattern`` and compile it.

    Returns:
        The parameter names in order, the regular expression with named
        groups, and the same expression with anonymous groups (its "shape",
        used to detect two patterns that would match exactly the same paths).

    Raises:
        ValueError: the pattern is malformed; the message names the problem.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"route pattern must be a str, not {type(pattern).__name__}")
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern {pattern!r} must start with '/'")

    names: list[str] = []
    regex: list[str] = []
    shape: list[str] = []
    position = 0
    previous_was_parameter = False
    while position < len(pattern):
        opening = pattern.find("{", position)
        closing = pattern.find("}", position)
        if closing != -1 and (opening == -1 or closing < opening):
            raise ValueError(f"unbalanced '}}' at offset {closing} in route pattern {pattern!r}")
        literal_end = len(pattern) if opening == -1 else opening
        literal = pattern[position:literal_end]
        if literal:
            bad = sorted(set(literal) & _FORBIDDEN_LITERAL)
            if bad:
                raise ValueError(
                    f"route pattern {pattern!r} contains {bad[0]!r}, which cannot "
                    "appear in a request path"
                )
            escaped = re.escape(_normalise_literal(literal))
            regex.append(escaped)
            shape.append(escaped)
            previous_was_parameter = False
        if opening == -1:
            break

        closing = pattern.find("}", opening + 1)
        nested = pattern.find("{", opening + 1)
        if closing == -1 or (nested != -1 and nested < closing):
            raise ValueError(f"unbalanced '{{' at offset {opening} in route pattern {pattern!r}")
        if previous_was_parameter:
            # ``/{a}{b}`` has no single reading: where does ``a`` end?
            raise ValueError(
                f"parameters at offset {opening} in route pattern {pattern!r} must be "
                "separated by literal text"
            )
        spec = pattern[opening + 1 : closing]
        name, _, converter = spec.partition(":")
        if not name.isidentifier() or not name.isascii() or keyword.iskeyword(name):
            # Parameters may be passed on as keyword arguments, so they must be
            # names a Python function can declare.
            raise ValueError(
                f"invalid parameter name {name!r} in route pattern {pattern!r}: "
                "it must be an ASCII Python identifier and not a keyword"
            )
        if name in names:
            raise ValueError(f"duplicate parameter {name!r} in route pattern {pattern!r}")
        if ":" in spec and converter not in _CONVERTERS:
            supported = ", ".join(sorted(_CONVERTERS))
            raise ValueError(
                f"unknown converter {converter!r} for parameter {name!r} in route "
                f"pattern {pattern!r}; supported: {supported}"
            )
        expression = _CONVERTERS[converter or "str"]
        names.append(name)
        regex.append(f"(?P<{name}>{expression})")
        shape.append(f"({expression})")
        previous_was_parameter = True
        position = closing + 1

    return tuple(names), "".join(regex), "".join(shape)


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule: a path pattern and the payload it leads to.

    The pattern is validated and compiled when the route is built; matching
    afterwards is one anchored regular-expression match (or one string
    comparison for a static route).

    Args:
        pattern: A path starting with ``/``. ``{name}`` captures one non-empty
            segment (no ``/``), ``{name:path}`` captures one or more characters
            including ``/``. Literal text is matched against the raw path as
            sent on the wire; non-ASCII literal text is percent-encoded as
            UTF-8 first, so ``/café`` matches ``/caf%C3%A9``.
        target: Anything; the router hands it back on a match (typically the
            behaviour factory to run for the connection).

    Attributes:
        pattern: The pattern as given.
        target: The payload as given.
        param_names: The parameter names, in pattern order.

    Raises:
        ValueError: The pattern does not start with ``/``, has unbalanced
            braces, an invalid or duplicate parameter name, an unknown
            converter, two parameters with nothing between them, or a
            character that cannot appear in a request path (``?``, ``#``,
            whitespace, control characters).
        TypeError: The pattern is not a string.
    """

    pattern: str
    target: object
    param_names: tuple[str, ...] = field(init=False, compare=False)
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _shape: str = field(init=False, repr=False, compare=False)
    _static_path: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names, regex, shape = _parse_pattern(self.pattern)
        # The dataclass is frozen; derived fields are filled in exactly once here.
        object.__setattr__(self, "param_names", names)
        object.__setattr__(self, "_regex", re.compile(regex, re.DOTALL))
        object.__setattr__(self, "_shape", shape)
        object.__setattr__(
            self, "_static_path", None if names else _normalise_literal(self.pattern)
        )

    @property
    def is_static(self) -> bool:
        """Whether the pattern has no parameters and so matches exactly one path."""
        return self._static_path is not None

    def match(self, path: str) -> Mapping[str, str] | None:
        """Match a raw request path against this route.

        Args:
            path: The path part of the request target, without the query
                string, still percent-encoded.

        Returns:
            The parameters, percent-decoded with :func:`urllib.parse.unquote`
            (invalid UTF-8 becomes U+FFFD), or ``None`` if the path does not
            match. A static route returns an empty mapping on a match.
        """
        if self._static_path is not None:
            return types.MappingProxyType({}) if path == self._static_path else None
        found = self._regex.fullmatch(path)
        if found is None:
            return None
        return types.MappingProxyType(
            {name: urllib.parse.unquote(value) for name, value in found.groupdict().items()}
        )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The result of a successful :meth:`Router.match`.

    Attributes:
        route: The route that matched.
        params: The decoded parameter values by name (read-only).
    """

    route: Route
    params: Mapping[str, str]

    @property
    def target(self) -> object:
        """The matched route's payload."""
        return self.route.target


class Router:
    """An ordered set of routes, matched against request paths.

    Static routes (no parameters) always win over parametrised ones, whatever
    the order they were added in; among parametrised routes the first one
    added wins. Two patterns that match exactly the same paths (same literal
    text, same converters in the same places, whatever the parameter names)
    cannot both be added.

    Cost: adding a route compiles it once; matching is a dictionary lookup for
    static routes (the same :class:`RouteMatch` each time), then one
    regular-expression match per parametrised route until one matches.
    """

    def __init__(self) -> None:
        """Create an empty router."""
        #: A static route's match, made once (it is immutable), by its path.
        self._static: dict[str, RouteMatch] = {}
        self._dynamic: list[Route] = []
        self._shapes: dict[str, Route] = {}

    def add(self, pattern: str, target: object) -> Route:
        """Add a route.

        Args:
            pattern: The path pattern; see :class:`Route`.
            target: The payload returned with a match.

        Returns:
            The new route.

        Raises:
            ValueError: The pattern is invalid (see :class:`Route`), or an
                equivalent pattern was added before.
        """
        route = Route(pattern, target)
        existing = self._shapes.get(route._shape)
        if existing is not None:
            if existing.pattern == pattern:
                raise ValueError(f"duplicate route pattern {pattern!r}")
            raise ValueError(
                f"route pattern {pattern!r} matches the same paths as {existing.pattern!r}"
            )
        self._shapes[route._shape] = route
        if route._static_path is not None:
            self._static[route._static_path] = RouteMatch(route, _NO_PARAMS)
        else:
            self._dynamic.append(route)
        return route

    def match(self, path: str) -> RouteMatch | None:
        """Find the route for a request path.

        Args:
            path: The raw (still percent-encoded) path, without the query string.

        Returns:
            The match, or ``None`` if no route matches.
        """
        static = self._static.get(path)
        if static is not None:
            return static
        for route in self._dynamic:
            params = route.match(path)
            if params is not None:
                return RouteMatch(route, params)
        return None

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route, in the order it was added."""
        return tuple(self._shapes.values())

    def __iter__(self) -> Iterator[Route]:
        """Iterate over the routes in the order they were added."""
        return iter(self.routes)

    def __len__(self) -> int:
        """Return the number of routes."""
        return len(self._shapes)

    def __repr__(self) -> str:
        """Show the patterns, for debugging."""
        patterns = ", ".join(repr(route.pattern) for route in self._shapes.values())
        return f"Router([{patterns}])"
