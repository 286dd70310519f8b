"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from tests.helpers.redis_server import SHARED_REDIS, RedisServer, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port, stopped after the test."""
    with running_redis() as server:
        yield server


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys are deleted after."""
    name = f"wsup-test-{secrets.token_hex(6)}"
    yield name
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
