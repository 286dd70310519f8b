"""The runnable examples of docs/server.md, one small app per file.

Each module exposes ``app``: ``wsup serve examples.server.NAME:app``.
"""
