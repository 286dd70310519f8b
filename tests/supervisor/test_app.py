"""``App`` configuration: mistakes are refused when made, and running-only calls say so."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from actors import Actor
from supervisor import (
    Accept,
    App,
    Connection,
    Handler,
    HTTPResponse,
    Reject,
    Request,
    RouteOptions,
    Server,
)
from supervisor.metrics import Metrics


class Echo(Handler):
    """A handler for routes that are never connected to."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


class Idle(Actor):
    """A service actor for ``spawn``."""

    async def on_receive(self, message: Any) -> Any:
        return message


def page(request: Request) -> HTTPResponse:
    """A plain HTTP route."""
    return HTTPResponse("hi")


def route_options(app: App, path: str) -> RouteOptions:
    """Return the options of the route that matches ``path``."""
    match = app.router.match(path)
    assert match is not None
    options = match.target
    assert isinstance(options, RouteOptions)
    return options


# --- routes ---------------------------------------------------------------------------------


def test_a_pattern_routed_twice_is_refused() -> None:
    """The same pattern, or one matching exactly the same paths, cannot be routed twice."""
    app = App()
    app.add_route("/chat/{room}", Echo)
    with pytest.raises(ValueError, match="duplicate"):
        app.add_route("/chat/{room}", Echo)
    with pytest.raises(ValueError, match="same paths"):
        app.add_route("/chat/{name}", Echo)
    with pytest.raises(ValueError, match="duplicate"):
        app.route("/chat/{room}")(Echo)
    assert [route.pattern for route in app.router] == ["/chat/{room}"]


@pytest.mark.parametrize("pattern", ["chat", "/chat/{room", "/chat/room}", "/a?b", "/{a}{b}"])
def test_an_invalid_pattern_is_refused(pattern: str) -> None:
    """A malformed pattern raises ValueError when the route is added."""
    app = App()
    with pytest.raises(ValueError, match="route pattern"):
        app.add_route(pattern, Echo)
    assert len(app.router) == 0


def test_an_unknown_route_option_is_refused_and_adds_nothing() -> None:
    """A misspelt option is a TypeError, and the route is not half-added."""
    app = App()
    with pytest.raises(TypeError, match="outbound_limt"):
        app.add_route("/echo", Echo, outbound_limt=1024)
    assert len(app.router) == 0
    app.add_route("/echo", Echo, outbound_limit=1024)
    assert route_options(app, "/echo").outbound_limit == 1024


def test_a_route_with_an_outbound_limit_below_one_byte_is_refused() -> None:
    """``outbound_limit=0`` is refused when the route is added, not at the first connection."""
    app = App()
    with pytest.raises(ValueError, match="outbound limit"):
        app.add_route("/echo", Echo, outbound_limit=0)


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 1016, 2000, 2999, 5000])
def test_a_slow_consumer_code_no_close_frame_can_carry_is_refused(code: int) -> None:
    """A code outside RFC 6455's sendable ones and 3000-4999 is refused when the route is
    added (2000 passed before, and the close frame then failed to serialize)."""
    app = App()
    with pytest.raises(ValueError, match=f"slow_consumer_code {code} cannot be sent"):
        app.add_route("/echo", Echo, slow_consumer_code=code)


@pytest.mark.parametrize("code", [1000, 1008, 1011, 1013, 3000, 4999])
def test_a_sendable_slow_consumer_code_is_kept(code: int) -> None:
    """Protocol codes a close frame may carry and application codes are accepted."""
    app = App()
    app.add_route("/echo", Echo, slow_consumer_code=code)
    assert route_options(app, "/echo").slow_consumer_code == code


def test_the_route_decorator_returns_the_handler_and_keeps_its_options() -> None:
    """``@app.route`` hands the class back unchanged; options and kwargs reach the route."""
    app = App()
    decorated = app.route("/rooms/{room}", kwargs={"greeting": "hi"}, outbound_limit=4096)(Echo)
    assert decorated is Echo
    options = route_options(app, "/rooms/lobby")
    assert options.handler is Echo
    assert dict(options.kwargs) == {"greeting": "hi"}
    assert options.outbound_limit == 4096


def test_a_websockets_style_function_becomes_a_handler_class() -> None:
    """``async def handler(conn)`` is wrapped in a Handler subclass named after it."""

    async def count(conn: Connection) -> None:
        await conn.send("hi")

    app = App()
    app.add_route("/count", count)
    handler = route_options(app, "/count").handler
    assert isinstance(handler, type)
    assert issubclass(handler, Handler)
    assert "count" in handler.__name__


# --- plain HTTP routes and handshake hooks ----------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_operational_paths_cannot_be_taken(path: str) -> None:
    """wsup answers /healthz, /readyz and /metrics itself: an HTTP route there is refused."""
    app = App()
    with pytest.raises(ValueError, match="served by wsup"):
        app.http(path)
    assert app.http_routes == {}


def test_an_http_path_registered_twice_is_refused() -> None:
    """A second HTTP route for one path raises ValueError and keeps the first."""
    app = App()
    app.http("/")(page)
    with pytest.raises(ValueError, match="exists already"):
        app.http("/")
    assert app.http_routes == {"/": page}


def test_an_http_route_may_share_a_path_with_a_websocket_route() -> None:
    """``GET /`` and the WebSocket route ``/`` are two different things: both are allowed."""
    app = App()
    app.http("/")(page)
    app.add_route("/", Echo)
    assert app.router.match("/") is not None
    assert app.http_routes["/"] is page


def test_handshake_hooks_keep_their_order() -> None:
    """``@app.handshake`` registers hooks in order and returns each unchanged."""
    app = App()

    def first(request: Request) -> None:
        return None

    async def second(request: Request) -> Accept:
        return Accept()

    assert app.handshake(first) is first
    assert app.handshake(second) is second
    assert app.hooks == [first, second]


@pytest.mark.parametrize("status", [100, 101, 200, 302, 399, 600, 999])
def test_a_rejection_needs_a_4xx_or_5xx_status(status: int) -> None:
    """``Reject`` with any other status raises ValueError at once."""
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Reject(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503, 599])
def test_a_rejection_keeps_a_4xx_or_5xx_status(status: int) -> None:
    """``Reject`` accepts every 4xx and 5xx status (403 by default)."""
    assert Reject(status, "why\n").status == status
    assert Reject().status == 403


# --- methods that need a running app --------------------------------------------------


ASYNC_CALLS: list[tuple[str, Callable[[App], Any]]] = [
    ("send", lambda app: app.send("user:ada", "hi")),
    ("publish", lambda app: app.publish("room:lobby", "hi")),
    ("broadcast", lambda app: app.broadcast("hi")),
    ("ask", lambda app: app.ask("counter", "incr")),
    ("spawn", lambda app: app.spawn(Idle)),
]

THREADSAFE_CALLS: list[tuple[str, Callable[[App], Any]]] = [
    ("send_threadsafe", lambda app: app.send_threadsafe("user:ada", "hi")),
    ("publish_threadsafe", lambda app: app.publish_threadsafe("room:lobby", "hi")),
    ("broadcast_threadsafe", lambda app: app.broadcast_threadsafe("hi")),
    ("ask_threadsafe", lambda app: app.ask_threadsafe("counter", "incr")),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "call"), ASYNC_CALLS, ids=[n for n, _ in ASYNC_CALLS])
async def test_async_calls_raise_runtime_error_when_not_running(
    name: str, call: Callable[[App], Any]
) -> None:
    """``send``, ``publish``, ``broadcast``, ``ask`` and ``spawn`` need a running app."""
    with pytest.raises(RuntimeError, match="not running"):
        await call(App())


@pytest.mark.parametrize(("name", "call"), THREADSAFE_CALLS, ids=[n for n, _ in THREADSAFE_CALLS])
def test_threadsafe_calls_raise_runtime_error_when_not_running(
    name: str, call: Callable[[App], Any]
) -> None:
    """The ``*_threadsafe`` twins raise RuntimeError too, without blocking."""
    with pytest.raises(RuntimeError, match="not running"):
        call(App())


@pytest.mark.anyio
async def test_an_app_is_served_by_one_server_at_a_time() -> None:
    """A second server for a running app is refused; once stopped, the app is idle again."""
    app = App()
    app.add_route("/echo", Echo)
    config = dataclasses.replace(app.config, hosts=("127.0.0.1",), port=0)
    first = Server(app, config, metrics=Metrics())
    async with anyio.create_task_group() as tg:
        await tg.start(first.serve)
        assert app.server is first
        second = Server(app, config, metrics=Metrics())
        with pytest.raises(RuntimeError, match="already being served"):
            await second.serve()
        assert app.server is first
        await app.broadcast("nobody listens")  # running: no RuntimeError
        await first.shutdown(drain_timeout=5)
    assert app.server is None
    with pytest.raises(RuntimeError, match="not running"):
        await app.broadcast("hi")
