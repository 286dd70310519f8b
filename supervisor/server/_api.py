"""The server API: send, broadcast and presence over HTTP, for services outside wsup.

Theory of operation: a request under ``/api/`` (or any request on ``--api-port``)
is answered here once the server has read its body. :func:`parse` is pure: from
the method, path, query, headers, body and the configured key it returns either
an :class:`Answer` (the request is wrong: 401, 400, 404, 405) or a :class:`Call`
to perform. :func:`perform` performs a call on the runtime, the same way
``app.send``, ``app.broadcast`` and ``runtime.presence`` do, and returns the
answer: what the send reached (its ``Delivery``), or the members found. The
server turns the answer into HTTP, counts it and logs it.

Keys are compared in constant time (:func:`hmac.compare_digest`). A message is
JSON: a string is sent as that text, any other value as the object it decodes
to, which a connection sends on as JSON text (the rule of ``app.send``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors import BackplaneUnavailable, Delivery, MailboxFull, Runtime

from ..metrics import ApiEndpoint, ApiResult

__all__ = [
    "API_PREFIX",
    "MAX_BATCH",
    "Answer",
    "Call",
    "endpoint_of",
    "error",
    "is_api_path",
    "parse",
    "perform",
]

API_PREFIX: Final = "/api/"
MAX_BATCH: Final = 1000
"""Addresses one ``POST /api/send`` may name in ``"addresses"``."""
SEND_TIMEOUT: Final = 1.0
"""Seconds an API send waits for room in a single recipient's mailbox (``block``)."""

_ENDPOINTS: Final[Mapping[str, tuple[ApiEndpoint, str]]] = {
    "/api/send": ("send", "POST"),
    "/api/broadcast": ("broadcast", "POST"),
    "/api/presence": ("presence", "GET"),
}
_RESULTS: Final[Mapping[int, ApiResult]] = {
    200: "ok",
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    411: "bad_request",
    413: "too_large",
    503: "unavailable",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """An API answer: a status and a JSON object.

    Attributes:
        status: the HTTP status.
        body: the JSON object sent back.
        endpoint: the endpoint called, for metrics.
        headers: extra response headers.
    """

    status: int
    body: Mapping[str, Any]
    endpoint: ApiEndpoint = "other"
    headers: Sequence[tuple[str, str]] = ()

    @property
    def result(self) -> ApiResult:
        """The ``result`` label of ``wsup_api_requests_total``."""
        return _RESULTS.get(self.status, "bad_request")

    def json(self) -> bytes:
        """The body, encoded."""
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Call:
    """A valid API request, to perform.

    Attributes:
        endpoint: ``send``, ``broadcast`` or ``presence``.
        addresses: the addresses to send to (``send``: one or more), or the one
            whose presence is asked.
        message: the message (already decoded from JSON).
        batch: whether the request named ``"addresses"`` (the answer lists each).
    """

    endpoint: ApiEndpoint
    addresses: tuple[str, ...] = ()
    message: Any = None
    batch: bool = False


def is_api_path(path: str) -> bool:
    """Whether ``path`` is under ``/api/`` (the server API's, when it is on)."""
    return path.startswith(API_PREFIX)


def endpoint_of(path: str) -> ApiEndpoint:
    """The endpoint ``path`` names (``other`` for none), for metrics."""
    known = _ENDPOINTS.get(path.rstrip("/"))
    return known[0] if known is not None else "other"


def error(status: int, message: str, endpoint: ApiEndpoint = "other", **extra: Any) -> Answer:
    """An error answer: ``{"error": message}``."""
    return Answer(status, {"error": message}, endpoint, **extra)


def _authorized(headers: Sequence[tuple[str, str]], key: str) -> bool:
    given = ""
    for name, value in headers:
        if name.lower() == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = token.strip()
            break
    # Both sides as bytes: compare_digest refuses non-ASCII str, and a wrong key
    # must cost the same time as a right one whatever it holds.
    return hmac.compare_digest(given.encode("utf-8", "replace"), key.encode())


def parse(
    method: str,
    path: str,
    query: Mapping[str, Sequence[str]],
    headers: Sequence[tuple[str, str]],
    body: bytes,
    key: str,
) -> Call | Answer:
    """Check one API request and say what to do. Pure: no I/O, no clock.

    Returns:
        A :class:`Call` to perform, or the :class:`Answer` to a wrong request:
        401 without the right key (checked first, so nothing else leaks), 404 for
        an unknown endpoint, 405 for a wrong method, 400 naming what is wrong
        with the JSON or which field is missing.
    """
    known = _ENDPOINTS.get(path.rstrip("/"))
    endpoint = known[0] if known is not None else "other"
    if not _authorized(headers, key):
        return error(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            endpoint,
            headers=[("WWW-Authenticate", 'Bearer realm="wsup"')],
        )
    if known is None:
        return error(404, f"no API endpoint {path}: use /api/send, /api/broadcast or /api/presence")
    allowed = known[1]
    if method != allowed:
        return error(
            405, f"{path} takes {allowed}, not {method}", endpoint, headers=[("Allow", allowed)]
        )
    if endpoint == "presence":
        addresses = query.get("address") or []
        if not addresses or not addresses[0]:
            return error(400, "missing query parameter 'address'", endpoint)
        if addresses[0] == "all":
            return error(
                400,
                "presence is not kept for 'all' (every connection): "
                "read wsup_connections from /metrics",
                endpoint,
            )
        return Call(endpoint, (addresses[0],))
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"the body is not valid JSON: {exc}", endpoint)
    if not isinstance(data, dict):
        return error(400, f"the body must be a JSON object, got {type(data).__name__}", endpoint)
    if "message" not in data:
        return error(400, "missing field 'message'", endpoint)
    message = data["message"]
    if endpoint == "broadcast":
        return Call(endpoint, message=message)
    if "addresses" in data:
        batch = data["addresses"]
        if "address" in data:
            return error(400, "give 'address' or 'addresses', not both", endpoint)
        if not isinstance(batch, list) or not batch:
            return error(400, "field 'addresses' must be a non-empty list of strings", endpoint)
        if len(batch) > MAX_BATCH:
            return error(400, f"field 'addresses' holds more than {MAX_BATCH} addresses", endpoint)
        if not all(isinstance(a, str) and a for a in batch):
            return error(400, "field 'addresses' must hold non-empty strings only", endpoint)
        return Call(endpoint, tuple(batch), message, batch=True)
    if "address" not in data:
        return error(400, "missing field 'address'", endpoint)
    address = data["address"]
    if not isinstance(address, str) or not address:
        return error(400, "field 'address' must be a non-empty string", endpoint)
    return Call(endpoint, (address,), message)


def _reached(delivery: Delivery) -> dict[str, Any]:
    return {"reached": delivery.reached, "local": delivery.local, "remote": delivery.remote}


async def perform(call: Call, runtime: Runtime) -> Answer:
    """Perform a checked call on ``runtime`` and say what it reached.

    A backplane that is down gets 503 before anything is sent (a client may
    then retry without a duplicate); so does a single local recipient whose
    mailbox stays full for :data:`SEND_TIMEOUT`.
    """
    endpoint = call.endpoint
    if not runtime.backplane.up:
        return error(503, "the backplane is down: nothing was sent, try again later", endpoint)
    try:
        if endpoint == "presence":
            (address,) = call.addresses
            found = await runtime.presence(address)
            meta = {member: value for member, value in found.items() if value is not None}
            body = {"address": address, "count": len(found), "members": list(found), "meta": meta}
            return Answer(200, body, endpoint)
        if endpoint == "broadcast":
            return Answer(200, _reached(await runtime.broadcast(call.message)), endpoint)
        results = []
        for address in call.addresses:
            delivery = await runtime.send(address, call.message, timeout=SEND_TIMEOUT)
            results.append({"address": address, **_reached(delivery)})
    except BackplaneUnavailable as exc:
        return error(503, f"the backplane is down: {exc}", endpoint)
    except MailboxFull as exc:
        return error(503, f"the recipient's mailbox is full: {exc}", endpoint)
    if call.batch:
        return Answer(200, {"results": results}, endpoint)
    return Answer(200, results[0], endpoint)
