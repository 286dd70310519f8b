"""What the server and a handshake hook need from the request: path, query,
headers that may repeat, cookies, origin check.

Theory of operation:
    Everything here is a pure function of the request line and headers, never
    raises on what a client sends, and treats malformed input as absent
    (garbage cookies are skipped, an unparsable ``Origin`` is refused). Only
    configuration errors raise, and they raise when the configuration is built
    (:class:`OriginPolicy`), so a typo stops the server at start-up instead of
    failing every handshake.

    A header may come on several lines. RFC 9110 §5.3 says what that means: a
    list-valued header (``Connection``, ``Upgrade``, ``Accept``,
    ``Sec-WebSocket-Protocol``...) is the comma-separated list of all its lines
    (:func:`header_list`, :func:`header_tokens`), while a header whose value is
    not a list cannot be combined, so a request that repeats one of
    :data:`SINGLETON_HEADERS` is refused (:func:`repeated_singleton`). Nothing
    in the server looks a request header up by subscript or with ``get``: on
    a repeated header, websockets' ``Headers`` raises ``MultipleValuesError``
    there (``tests/supervisor/test_request.py`` checks the source for it).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Final

from websockets.datastructures import Headers

__all__ = [
    "SINGLETON_HEADERS",
    "CheckedHeaders",
    "OriginPolicy",
    "header_list",
    "header_tokens",
    "origin_allowed",
    "parse_cookies",
    "repeated_singleton",
    "single_header",
    "split_target",
]

#: Request headers that must not appear more than once: ``Host`` (RFC 9112
#: §3.2: a server must answer 400), ``Origin`` (RFC 6454 §7.3),
#: ``Authorization`` (a single credential: which of two would be checked?) and
#: ``Sec-WebSocket-Key`` and ``Sec-WebSocket-Version`` (RFC 6455 §11.3.1,
#: §11.3.5; websockets' own server refuses repeats of these and of ``Origin``).
SINGLETON_HEADERS: Final[tuple[str, ...]] = (
    "Host",
    "Origin",
    "Authorization",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
)


class CheckedHeaders(Headers):
    """websockets' :class:`Headers` made from lines whose values need no check:
    read by llhttp (which refuses control characters in a value) or written by
    the server.

    ``Headers(lines)`` adds each line through ``MutableMapping.update`` and
    ``__setitem__``, which matches the value against a regular expression: some
    10,000 instructions for the empty mapping, 1,000 to 4,000 more per line, as
    much as llhttp's whole parse of a request. This fills the two containers
    ``Headers`` keeps (``_dict``: lower-cased name to values; ``_list``: the
    lines in order) in one loop; ``tests/supervisor/test_request.py`` checks it
    equals ``Headers`` built line by line, so a websockets that stored them
    differently would fail there.

    Args:
        lines: the ``(name, value)`` lines, in order; kept (not copied).
        by_name: their values by lower-cased name, when the caller made them
            as it read the lines (kept, not copied); else made here.
    """

    __slots__ = ()

    def __init__(
        self, lines: list[tuple[str, str]], by_name: dict[str, list[str]] | None = None
    ) -> None:
        if by_name is None:
            by_name = {}
            for name, value in lines:
                key = name.lower()
                values = by_name.get(key)
                if values is None:
                    by_name[key] = [value]
                else:
                    values.append(value)
        self._dict = by_name
        self._list = lines


def repeated_singleton(headers: Headers) -> str | None:
    """Return the first of :data:`SINGLETON_HEADERS` that ``headers`` has more than once.

    Names compare case-insensitively; two lines with the same value are a
    repeat too. ``None`` when every singleton appears at most once.

    Cost: about a microsecond per handshake; never raises.
    """
    if len(list(headers.raw_items())) == len(headers):
        return None  # no name on two lines at all: the common case, checked at C speed
    for name in SINGLETON_HEADERS:
        if len(headers.get_all(name)) > 1:
            return name
    return None


def single_header(headers: Headers, name: str) -> str | None:
    """Return the value of header ``name``, or ``None`` if it is missing.

    For the :data:`SINGLETON_HEADERS`, once :func:`repeated_singleton` has let
    the request through; on a repeated header it returns the first line.
    Never raises.
    """
    values = headers.get_all(name)
    return values[0] if values else None


def header_list(headers: Headers, name: str) -> str | None:
    """Return list-valued header ``name`` as one value: its lines joined with ``", "``.

    RFC 9110 §5.3: a list header sent on several lines means the same as one
    line listing every element in order. ``None`` if the header is missing.
    Never raises.
    """
    values = headers.get_all(name)
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def header_tokens(headers: Headers, name: str) -> list[str]:
    """Return the elements of list header ``name`` over all its lines, lower-cased.

    ``Connection: keep-alive`` and ``Connection: Upgrade`` on two lines give
    ``["keep-alive", "upgrade"]``; empty elements are skipped. Never raises.
    """
    values = headers.get_all(name)
    if len(values) == 1 and "," not in values[0]:  # one line, one element: the usual
        token = values[0].strip().lower()
        return [token] if token else []
    return [
        token
        for value in values
        for element in value.split(",")
        if (token := element.strip().lower())
    ]


def split_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """Split an HTTP request target into its path and its query parameters.

    The path stays percent-encoded (routing matches the raw path and decodes
    parameters itself). A fragment, which clients must not send, is dropped.
    An absolute-form target (``http://host/path?q``), which HTTP/1.1 servers
    must accept, is reduced to its path. An empty path becomes ``/``.

    Args:
        target: The request target from the request line, e.g. ``/chat/x?user=a``.

    Returns:
        The path and a mapping from each query parameter name to its values in
        order, decoded by :func:`urllib.parse.parse_qs` with blank values kept
        (``?flag`` gives ``{"flag": [""]}``). Undecodable bytes become U+FFFD.

    Cost: linear in the length of the target; never raises on any string.
    """
    if target[:1] == "/" and "?" not in target and "#" not in target:
        return target, {}  # the common case: a plain origin-form path
    target, _, _ = target.partition("#")
    path, _, query = target.partition("?")
    if not path.startswith("/") and "://" in path:
        # Absolute form: drop scheme and authority. Not ``urlsplit`` on the whole
        # target, which would read a ``//host``-looking origin-form path as an
        # authority.
        _, _, rest = path.partition("://")
        slash = rest.find("/")
        path = rest[slash:] if slash != -1 else ""
    if not path:
        path = "/"
    return path, urllib.parse.parse_qs(query, keep_blank_values=True)


# RFC 9110 token characters: the only ones a cookie name may contain.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

# Only its value decoding is used: ``SimpleCookie.load`` stops at the first bad
# pair (losing every cookie after it), raises on some names, and reads cookies
# named ``path``, ``expires`` or ``secure`` as attributes of the previous one.
_DECODER: SimpleCookie = SimpleCookie()


def parse_cookies(header_values: Iterable[str]) -> dict[str, str]:
    """Parse ``Cookie`` request headers into a name → value mapping.

    Each header is split into ``name=value`` pairs on ``;``. A pair is skipped
    if it has no ``=``, an empty name, or a name with characters outside the
    HTTP token set; the other pairs are kept. Values are decoded the way
    :class:`http.cookies.SimpleCookie` encodes them: surrounding double quotes
    are removed and backslash and octal escapes inside them are resolved;
    unquoted values are kept as sent (surrounding whitespace stripped).

    When a name repeats, the first occurrence wins: browsers send the cookie
    with the most specific path first (RFC 6265, section 5.4).

    Args:
        header_values: Every ``Cookie`` header value of the request, in order.

    Returns:
        The cookies; empty if there are none.

    Cost: linear in the total header length; never raises on any string.
    """
    cookies: dict[str, str] = {}
    for header in header_values:
        for pair in header.split(";"):
            name, equals, value = pair.partition("=")
            name = name.strip()
            if not equals or not name or not _TOKEN_CHARS.issuperset(name):
                continue
            if name in cookies:
                continue
            try:
                decoded, _ = _DECODER.value_decode(value.strip())
            except Exception:
                # The stdlib decoder does not raise today; a cookie must never
                # be able to fail a handshake if that changes.
                continue
            cookies[name] = decoded
    return cookies


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _parse_origin(text: str) -> tuple[str, str, int | None] | None:
    """Return ``(scheme, host, port)`` of a serialised origin, or ``None`` if malformed.

    Scheme and host are lower-cased; a default port (80 for http/ws, 443 for
    https/wss) is reported as ``None``, so ``https://a:443`` equals ``https://a``.
    """
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        return None
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (
        not parts.scheme
        or not host
        or parts.path
        or parts.query
        or parts.fragment
        or "?" in text
        or "#" in text
        or parts.username is not None
        or parts.password is not None
        or parts.netloc.endswith(":")
    ):
        return None
    scheme = parts.scheme.lower()
    if port is not None and _DEFAULT_PORTS.get(scheme) == port:
        port = None
    return scheme, host, port


@dataclass(frozen=True, slots=True)
class _OriginRule:
    """One allowed-origin entry, parsed."""

    scheme: str
    host: str
    port: int | None
    subdomains: bool

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        if self.subdomains:
            return host.endswith("." + self.host)
        return host == self.host


class OriginPolicy:
    """A validated set of allowed origins, checked against ``Origin`` headers.

    Browsers send ``Origin`` with every WebSocket handshake and let any page
    open a socket to any server, so checking it is the defence against
    cross-site WebSocket hijacking. Build the policy once from configuration;
    checking a header is then a few string comparisons.

    Entries:
        * an exact origin, ``https://example.com`` or ``http://[::1]:8080``:
          scheme and host compare case-insensitively, the port exactly (a
          default port may be written or left out);
        * a wildcard subdomain, ``https://*.example.com``: any subdomain at any
          depth (``a.example.com``, ``a.b.example.com``) with that scheme and
          port, but not ``example.com`` itself;
        * ``*``: any ``Origin`` header that is present, including ``null``;
        * ``"null"``: the opaque origin sent by sandboxed frames and ``file:``
          pages, which only this exact entry (or ``*``) allows;
        * ``None``: requests *without* an ``Origin`` header (non-browser
          clients). A missing header is refused unless ``None`` is listed,
          because a policy that names origins is meant to be a restriction,
          and a client that leaves the header out would otherwise bypass it.

    Args:
        allowed: The entries, or ``None`` to allow everything (no check).

    Raises:
        ValueError: An entry is not one of the forms above (for instance it has
            a path, such as a trailing ``/``, or a non-ASCII host, which must be
            written in its ``xn--`` form); the message names the entry.
    """

    __slots__ = ("_allow_all", "_allow_any_present", "_allow_missing", "_allow_null", "_rules")

    def __init__(self, allowed: Collection[str | None] | None) -> None:
        """Parse and validate the allowed origins."""
        if isinstance(allowed, str):
            # A lone string is a collection of characters; refuse the easy mistake.
            raise TypeError("allowed origins must be a collection of strings, not a str")
        self._allow_all = allowed is None
        self._allow_missing = allowed is None or None in allowed
        self._allow_any_present = allowed is None or "*" in allowed
        self._allow_null = False
        rules: list[_OriginRule] = []
        for entry in allowed or ():
            if entry is None or entry == "*":
                continue
            if not isinstance(entry, str):
                raise TypeError(f"allowed origin must be a str or None, not {entry!r}")
            if entry.lower() == "null":
                self._allow_null = True
                continue
            subdomains = False
            text = entry
            scheme, sep, rest = entry.partition("://")
            if sep and rest.startswith("*."):
                subdomains = True
                text = f"{scheme}://{rest[2:]}"
            parsed = _parse_origin(text)
            if parsed is None or "*" in text:
                raise ValueError(
                    f"invalid allowed origin {entry!r}: expected 'scheme://host[:port]', "
                    "'scheme://*.domain[:port]', '*', 'null' or None"
                )
            rules.append(_OriginRule(*parsed, subdomains=subdomains))
        self._rules = tuple(rules)

    @property
    def allows_all(self) -> bool:
        """Whether every handshake is allowed, so the header need not be read."""
        return self._allow_all

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header value is allowed.

        Args:
            origin: The header value, or ``None`` if the header is missing.

        Returns:
            ``True`` if allowed. A malformed header is refused (unless the
            policy allows everything or lists ``*``); this never raises.
        """
        if self._allow_all:
            return True
        if origin is None:
            return self._allow_missing
        if self._allow_any_present:
            return True
        origin = origin.strip()
        if origin.lower() == "null":
            return self._allow_null
        parsed = _parse_origin(origin)
        if parsed is None:
            return False
        return any(rule.allows(*parsed) for rule in self._rules)


def origin_allowed(origin: str | None, allowed: Collection[str | None] | None) -> bool:
    """Whether a handshake with this ``Origin`` header value is allowed.

    A one-shot form of :class:`OriginPolicy` (see it for the entry syntax);
    servers should build the policy once instead, so a bad entry is reported
    at start-up.

    A missing ``Origin`` header (``origin is None``) is allowed only when
    ``allowed`` is ``None`` (no check at all) or contains ``None``: listing
    origins is a restriction, and non-browser clients that send no
    ``Origin`` must be let in explicitly.

    Args:
        origin: The ``Origin`` header value, or ``None`` if it is missing.
        allowed: The allowed origins, or ``None`` to allow everything.

    Returns:
        ``True`` if the handshake may proceed.

    Raises:
        ValueError: An entry of ``allowed`` is malformed.
    """
    return OriginPolicy(allowed).allows(origin)
