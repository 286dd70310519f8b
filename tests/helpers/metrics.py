"""Read the metrics of a server under test."""

from __future__ import annotations

from supervisor import Server


def sample(server: Server, name: str, **labels: str) -> float:
    """Return the current value of one sample of ``server``'s private registry (0 if absent).

    Flushes first: per-message counts reach the registry in batches, as at a scrape.
    """
    server.metrics.flush()
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
