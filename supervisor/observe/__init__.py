"""Observability: metrics batching, structured logs, the event-loop watchdog.

The metrics themselves are the public module :mod:`supervisor.metrics`.
Private: see docs/architecture.md.
"""
