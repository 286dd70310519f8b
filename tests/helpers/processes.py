"""Small helpers for tests that run child processes on loopback ports."""

from __future__ import annotations

import socket
from types import TracebackType


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StopsOnExit:
    """Mixin: a child process handle whose ``with`` block ends with :meth:`stop`."""

    def stop(self) -> None:
        """Stop the child for good; subclasses say how."""
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
