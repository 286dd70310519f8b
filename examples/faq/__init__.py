"""Runnable answers to the server FAQ of the ``websockets`` library (see docs/faq.md).

Each module exposes ``app``: serve it with ``wsup serve examples.faq.NAME:app``.
"""
