"""Every public exception of :mod:`supervisor`, in one module.

They join the tree whose root, :class:`~actors.WsupError`, and runtime part are
defined in :mod:`actors._exceptions`. The whole tree (``docs/exceptions.md``
draws the same one, and ``tests/test_public_api.py`` checks both drawings
against the classes)::

    WsupError
    ├── ActorError                      (actors) an actor could not take or answer a message
    │   ├── MailboxFull
    │   ├── MailboxClosed
    │   ├── NoRecipient
    │   ├── AmbiguousAddress
    │   └── AskFailed
    │       ├── AskTimeout
    │       ├── ActorStopped
    │       └── ActorRestarted
    ├── SupervisionError                (actors)
    │   ├── Escalation
    │   │   └── CriticalFailure
    │   └── SystemFailed
    ├── BackplaneError                  (actors)
    │   ├── BackplaneUnavailable        the cluster backplane is down; remote sends fail fast
    │   └── RedisUnavailable            Redis could not be reached when the backplane started
    ├── ConnectionError_                a WebSocket connection could not do what was asked
    │   ├── ConnectionClosed            the connection is closed or closing: nothing can be sent
    │   │   ├── ConnectionClosedOK      ... cleanly (1000/1001), by either side
    │   │   └── ConnectionClosedError   ... with an error code, or the peer broke the TCP connection
    │   └── OutboundFull                the outbound buffer is full and the call could not wait
    ├── ListenError                     the server could not listen on an address
    └── StartupError                    an ``on_startup`` hook or the ``lifespan`` of the app raised

Exceptions that never leave wsup (the command line's usage error, the Redis
link's internal signals, :class:`actors._inline.TaskRunning`) stay private
beside the code that raises and catches them.
"""

from __future__ import annotations

from actors import BackplaneError, WsupError

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionError_",
    "ListenError",
    "OutboundFull",
    "RedisUnavailable",
    "StartupError",
    "find_exception",
]


class ConnectionError_(WsupError):
    """Base of WebSocket connection errors.

    Attributes:
        address: the connection's address (``conn:…``).
    """

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class ConnectionClosed(ConnectionError_):
    """The connection is closed or closing.

    Attributes:
        code: the close code (1006 when no close frame was exchanged).
        reason: the close reason.
        initiator: ``server``, ``client`` or ``network``.
    """

    def __init__(self, address: str, *, code: int, reason: str, initiator: str) -> None:
        super().__init__(
            f"{address} is closed (code {code}{', ' + reason if reason else ''}; by {initiator})",
            address=address,
        )
        self.code = code
        self.reason = reason
        self.initiator = initiator


class ConnectionClosedOK(ConnectionClosed):
    """Closed cleanly: code 1000 or 1001."""


class ConnectionClosedError(ConnectionClosed):
    """Closed with an error code, or broken without a closing handshake."""


class OutboundFull(ConnectionError_):
    """``send_nowait`` on a full outbound buffer whose policy is ``block``.

    Attributes:
        limit: the buffer's limit in bytes.
    """

    def __init__(self, address: str, *, limit: int) -> None:
        super().__init__(f"outbound buffer of {address} is full ({limit} bytes)", address=address)
        self.limit = limit


def find_exception(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """Return the first ``kind`` inside ``exc``, looking into exception groups.

    Task groups wrap errors in groups; the CLI and ``serve()`` unwrap the ones
    a user should see as themselves (e.g. :class:`ListenError`).
    """
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, kind)
            if found is not None:
                return found
    return None


class ListenError(WsupError):
    """The server could not listen on an address.

    Attributes:
        host: the host it tried.
        port: the port it tried.
        hint: what to do about it.
    """

    def __init__(self, host: str, port: int, error: OSError, hint: str) -> None:
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {shown}:{port}: {error.strerror or error} — {hint}")
        self.host = host
        self.port = port
        self.hint = hint


class StartupError(WsupError):
    """The app failed to start: an ``on_startup`` hook or entering its ``lifespan`` raised.

    The server closes its listeners and stops; the app's own exception is the
    ``__cause__``.

    Attributes:
        step: what failed, e.g. ``"on_startup hook open_db"`` or ``"lifespan"``.
    """

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"app startup failed: {step} raised {type(error).__name__}: {error}")
        self.step = step


class RedisUnavailable(BackplaneError):
    """Redis could not be reached when the backplane started (and it was required).

    Attributes:
        url: the Redis URL, password removed.
        detail: what went wrong, as the client reported it.
    """

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot connect to Redis at {url}: {detail}")
        self.url = url
        self.detail = detail
