"""The handshake timeouts of the asyncio path on one timer (``supervisor.server._aio.Deadlines``):
each socket times out as if it had a timer of its own."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.server._aio import Deadlines

TIMEOUT = 10.0


class _Handle:
    def __init__(self, loop: _Loop, when: float) -> None:
        self.loop = loop
        self.when = when
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """A loop's clock and timers, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, _Handle, Callable[[], Any]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], Any]) -> _Handle:
        handle = _Handle(self, when)
        heapq.heappush(self._timers, (when, next(self._seq), handle, callback))
        return handle

    @property
    def pending(self) -> int:
        return sum(not handle.cancelled for _, _, handle, _ in self._timers)

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, handle, callback = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback()
        self.now = until


class _Socket:
    """What the deadlines ask of a ``HandshakeProtocol``."""

    def __init__(self, name: int, log: list[tuple[int, float]], loop: _Loop) -> None:
        self.name = name
        self.log = log
        self.loop = loop

    def timed_out(self) -> None:
        self.log.append((self.name, self.loop.now))

    def abort(self) -> None:
        """Never called: ``timed_out`` does not raise here."""


def test_one_timer_for_many_sockets() -> None:
    """A thousand sockets waiting cost one timer; those decided in time never time out;
    the others time out at their own deadline, in the order they came."""
    loop = _Loop()
    deadlines = Deadlines(loop, TIMEOUT)  # type: ignore[arg-type]
    log: list[tuple[int, float]] = []
    sockets = [_Socket(n, log, loop) for n in range(1000)]
    for n, socket in enumerate(sockets):
        deadlines.add(socket)  # type: ignore[arg-type]
        if n % 2:
            deadlines.discard(socket)  # type: ignore[arg-type]
        loop.advance(0.001)
    assert loop.pending == 1
    assert len(deadlines) == 500
    loop.advance(TIMEOUT)
    assert [name for name, _ in log] == list(range(0, 1000, 2))
    assert all(abs(when - (name * 0.001 + TIMEOUT)) < 1e-6 for name, when in log)
    assert len(deadlines) == 0
    assert loop.pending == 0


# An operation: (socket, what, seconds to advance after it); "add" starts or restarts
# its timeout (a kept-alive socket waits for its next request), "discard" decides it.
_OPERATIONS = st.lists(
    st.tuples(
        st.integers(0, 7),
        st.sampled_from(["add", "discard"]),
        st.sampled_from([0.0, 0.5, 3.0, 9.999, 10.0, 12.0]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_OPERATIONS)
def test_each_socket_times_out_as_with_a_timer_of_its_own(
    operations: list[tuple[int, str, float]],
) -> None:
    """Against a model where every add starts a socket's own timer and a discard
    cancels it: the same sockets time out, at the same moments, in the same order."""
    loop = _Loop()
    deadlines = Deadlines(loop, TIMEOUT)  # type: ignore[arg-type]
    log: list[tuple[int, float]] = []
    sockets = [_Socket(n, log, loop) for n in range(8)]
    expected: list[tuple[int, float]] = []
    armed: dict[int, float] = {}  # the model: socket -> its own timer's deadline

    def model_advance(seconds: float, start: float) -> None:
        until = start + seconds
        for name, deadline in sorted(armed.items(), key=lambda item: (item[1], item[0])):
            if deadline <= until:
                expected.append((name, deadline))
                del armed[name]

    for name, what, seconds in operations:
        if what == "add":
            deadlines.add(sockets[name])  # type: ignore[arg-type]
            armed[name] = loop.now + TIMEOUT
        else:
            deadlines.discard(sockets[name])  # type: ignore[arg-type]
            armed.pop(name, None)
        start = loop.now
        loop.advance(seconds)
        model_advance(seconds, start)
        assert sorted(log) == sorted(expected)
        assert len(deadlines) == len(armed)
        assert loop.pending <= 1
