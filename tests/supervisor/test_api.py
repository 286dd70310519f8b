"""The server API decision (``supervisor.server._api``) and request bodies (``_body``),
without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import Runtime
from supervisor import ServerConfig
from supervisor.metrics import API_RESULTS
from supervisor.redis import RedisBackplane
from supervisor.server import _api

KEY = "k3y"
AUTH = [("Authorization", f"Bearer {KEY}")]


def parse(method: str, path: str, body: Any = None, **options: Any) -> _api.Call | _api.Answer:
    """``_api.parse`` with the right key unless ``headers`` is given."""
    raw = options.pop("raw", None)
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return _api.parse(
        method, path, options.get("query", {}), options.get("headers", AUTH), data, KEY
    )


def error(result: _api.Call | _api.Answer) -> tuple[int, str]:
    """The status and error text of an answer (fails on a call)."""
    assert isinstance(result, _api.Answer), result
    return result.status, str(result.body["error"])


def test_a_send_becomes_a_call_with_the_decoded_message() -> None:
    """A valid send names its address and keeps the message as JSON decoded it."""
    call = parse("POST", "/api/send", {"address": "user:ada", "message": {"a": [1, "x"]}})
    assert call == _api.Call("send", ("user:ada",), {"a": [1, "x"]})
    assert parse("POST", "/api/send", {"address": "user:ada", "message": "hi"}) == _api.Call(
        "send", ("user:ada",), "hi"
    )


def test_batch_broadcast_and_presence_calls() -> None:
    """``addresses`` makes a batch; broadcast needs only a message; presence reads the query."""
    batch = parse("POST", "/api/send", {"addresses": ["a", "b"], "message": None})
    assert batch == _api.Call("send", ("a", "b"), None, batch=True)
    assert parse("POST", "/api/broadcast", {"message": 1}) == _api.Call("broadcast", message=1)
    presence = parse("GET", "/api/presence", query={"address": ["room:x"]})
    assert presence == _api.Call("presence", ("room:x",))


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Authorization", "Bearer wrong")],
        [("Authorization", f"Basic {KEY}")],
        [("Authorization", f"Bearer {KEY}x")],
        [("Authorization", "Bearer kéy")],
    ],
)
def test_a_missing_or_wrong_key_is_401_before_anything_else(headers: list[Any]) -> None:
    """Without the right key nothing else is looked at: even a bad path is 401."""
    for path in ("/api/send", "/api/nothing"):
        result = parse("POST", path, raw=b"{bad", headers=headers)
        assert error(result)[0] == 401
        assert isinstance(result, _api.Answer)
        assert ("WWW-Authenticate", 'Bearer realm="wsup"') in result.headers


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [
        ("POST", "/api/send", b"{bad", 400, "not valid JSON"),
        ("POST", "/api/send", b"\xff", 400, "not valid JSON"),
        ("POST", "/api/send", b'"x"', 400, "must be a JSON object, got str"),
        ("POST", "/api/send", b'{"address": "a"}', 400, "missing field 'message'"),
        ("POST", "/api/send", b'{"message": 1}', 400, "missing field 'address'"),
        ("POST", "/api/send", b'{"address": "", "message": 1}', 400, "'address' must be"),
        ("POST", "/api/send", b'{"addresses": [], "message": 1}', 400, "non-empty list"),
        ("POST", "/api/send", b'{"addresses": [1], "message": 1}', 400, "non-empty strings"),
        (
            "POST",
            "/api/send",
            b'{"address": "a", "addresses": ["b"], "message": 1}',
            400,
            "not both",
        ),
        ("POST", "/api/broadcast", b"{}", 400, "missing field 'message'"),
        ("GET", "/api/presence", b"", 400, "missing query parameter 'address'"),
        ("GET", "/api/send", b"", 405, "takes POST"),
        ("POST", "/api/presence", b"", 405, "takes GET"),
        ("POST", "/api/other", b"", 404, "no API endpoint"),
    ],
)
def test_wrong_requests_get_an_error_naming_the_problem(
    method: str, path: str, body: bytes, status: int, text: str
) -> None:
    """Each mistake gets its status and a message that names it."""
    got_status, got_text = error(parse(method, path, raw=body))
    assert got_status == status
    assert text in got_text


def test_a_batch_is_bounded_and_presence_of_all_is_refused() -> None:
    """More than MAX_BATCH addresses is a 400; ``all`` has no presence."""
    many = {"addresses": [f"u:{i}" for i in range(_api.MAX_BATCH + 1)], "message": 1}
    assert error(parse("POST", "/api/send", many))[0] == 400
    assert error(parse("GET", "/api/presence", query={"address": ["all"]}))[0] == 400


@given(st.binary(max_size=64))
def test_any_body_gets_a_call_or_a_400_never_an_exception(body: bytes) -> None:
    """Whatever the body holds, the answer is a call or a clear 400."""
    result = parse("POST", "/api/send", raw=body)
    assert isinstance(result, _api.Call) or error(result)[0] == 400


def test_answers_map_to_fixed_result_labels() -> None:
    """Every status the API uses maps to one of the metric's result values."""
    results = {status: _api.error(status, "x").result for status in (200, 400, 401, 411, 413, 503)}
    assert results == {
        200: "ok",
        400: "bad_request",
        401: "unauthorized",
        411: "bad_request",
        413: "too_large",
        503: "unavailable",
    }
    assert {_api.Answer(s, {}).result for s in (404, 405)} <= set(API_RESULTS)
    assert _api.endpoint_of("/api/send/") == "send"
    assert _api.endpoint_of("/api/x") == "other"


@pytest.mark.anyio
async def test_perform_sends_and_reports_what_was_reached() -> None:
    """On a runtime without members a send reaches nobody; presence is empty."""
    runtime = Runtime()
    answer = await _api.perform(_api.Call("send", ("user:x",), "hi"), runtime)
    assert (answer.status, dict(answer.body)) == (
        200,
        {"address": "user:x", "reached": False, "local": 0, "remote": False},
    )
    answer = await _api.perform(_api.Call("presence", ("room:x",)), runtime)
    assert dict(answer.body) == {"address": "room:x", "count": 0, "members": [], "meta": {}}
    answer = await _api.perform(_api.Call("send", ("a", "b"), 1, batch=True), runtime)
    assert [r["address"] for r in answer.body["results"]] == ["a", "b"]


# --- request bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"api_key": ""}, "visible ASCII"),
        ({"api_key": "two words"}, "visible ASCII"),
        ({"api_key": "clé"}, "visible ASCII"),
        ({"api_port": 9000}, "needs an API key"),
        ({"api_key": "k", "api_port": 8765}, "must differ"),
        ({"api_key": "k", "api_port": 70000}, "0..65535"),
        ({"api_max_body": 0}, "api_max_body"),
    ],
)
def test_server_config_checks_the_api_settings(options: dict[str, Any], problem: str) -> None:
    """A bad key, an API port without a key or on another port's number is refused."""
    with pytest.raises(ValueError, match=problem):
        ServerConfig(**options)


def test_the_api_key_is_never_in_the_config_repr() -> None:
    """The key is a secret: ``repr(config)`` (in tracebacks, logs) leaves it out."""
    assert "hunter2" not in repr(ServerConfig(api_key="hunter2"))


def test_presence_metadata_must_be_json_with_redis() -> None:
    """``join(..., meta=...)`` with a Redis backplane refuses metadata JSON cannot carry."""
    backplane = RedisBackplane("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        backplane.member_joined("room:x", "conn:n.1", object())
    backplane.member_joined("room:x", "conn:n.1", {"user": "ada"})  # queued until it runs
