"""Send to wsup addresses from other Python processes, through Redis.

A Django view, a Celery task or a script that shares the cluster's Redis can
reach any connection, name or group without running wsup::

    from supervisor.publisher import Publisher

    publisher = Publisher("redis://127.0.0.1:6379/0")
    publisher.send("user:42", {"type": "order", "status": "shipped"})

:class:`Publisher` is synchronous (it blocks on one ``PUBLISH``);
:class:`AsyncPublisher` is its asyncio twin. Both need only the ``redis``
package and write the backplane's wire format (version
:data:`~supervisor.redis.WIRE_VERSION`, see ``docs/messaging.md``): one
``PUBLISH`` to ``<prefix>:addr:<address>`` per send, so delivery is what the
backplane gives: at most once, to the nodes subscribed at that moment.

A message follows the rule of ``app.send``: ``str`` arrives as text, ``bytes``
as binary, anything else as its JSON text (a handler's ``on_receive`` gets the
decoded value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from actors import ALL

from .redis import encode_payload, redact_url

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncPublisher", "Publisher"]

_OUTSIDE: Final = b"\x00"
"""The sender tag of a publisher: no node id (every node delivers it)."""


def _channel(prefix: str, address: str) -> str:
    if not address:
        raise ValueError("an address must be a non-empty string")
    return f"{prefix}:addr:{address}"


def _check_prefix(prefix: str) -> str:
    if not prefix or "\x00" in prefix:
        raise ValueError("prefix must be a non-empty string without NUL")
    return prefix


class Publisher:
    """Publishes messages to a wsup cluster's addresses, synchronously.

    Args:
        url: the cluster's Redis, as given to ``wsup serve --redis``.
        prefix: the cluster's ``--redis-prefix`` (default ``wsup``).
        client: an existing ``redis.Redis`` to use instead of ``url``.

    Raises:
        ImportError: the ``redis`` package is missing (install ``wsup[redis]``).
        ValueError: the URL or the prefix is invalid.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "wsup",
        client: redis.Redis | None = None,
    ) -> None:
        self.prefix = _check_prefix(prefix)
        self.display_url = redact_url(url)
        if client is None:
            import redis as redis_module

            client = redis_module.Redis.from_url(url)
        self.client = client

    def send(self, address: str, message: Any) -> int:
        """Send ``message`` to every actor at ``address`` (a connection, a name, a group).

        Returns:
            How many wsup nodes received it (0: nobody holds the address now).

        Raises:
            TypeError: the message is not ``str``, ``bytes`` or JSON-serialisable.
            redis.RedisError: Redis could not be reached.
        """
        payload = encode_payload(_OUTSIDE, address, message)
        return int(self.client.publish(_channel(self.prefix, address), payload))

    def broadcast(self, message: Any) -> int:
        """Send ``message`` to every connection of the cluster; see :meth:`send`."""
        return self.send(ALL, message)

    def close(self) -> None:
        """Close the Redis connections."""
        self.client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPublisher:
    """:class:`Publisher` for asyncio code (``redis.asyncio``).

    Args:
        url: the cluster's Redis, as given to ``wsup serve --redis``.
        prefix: the cluster's ``--redis-prefix`` (default ``wsup``).
        client: an existing ``redis.asyncio.Redis`` to use instead of ``url``.

    Raises:
        ImportError: the ``redis`` package is missing (install ``wsup[redis]``).
        ValueError: the URL or the prefix is invalid.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "wsup",
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        self.prefix = _check_prefix(prefix)
        self.display_url = redact_url(url)
        if client is None:
            import redis.asyncio as redis_asyncio

            client = redis_asyncio.Redis.from_url(url)
        self.client = client

    async def send(self, address: str, message: Any) -> int:
        """Send ``message`` to every actor at ``address``; see :meth:`Publisher.send`."""
        payload = encode_payload(_OUTSIDE, address, message)
        return int(await self.client.publish(_channel(self.prefix, address), payload))

    async def broadcast(self, message: Any) -> int:
        """Send ``message`` to every connection of the cluster; see :meth:`send`."""
        return await self.send(ALL, message)

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self.client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
