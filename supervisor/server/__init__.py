"""The WebSocket server: the app, the handshake, connections and their drivers.

Private: what users import is in :mod:`supervisor`. See docs/architecture.md.
"""
