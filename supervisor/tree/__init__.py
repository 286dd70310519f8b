"""The supervision tree: supervisors, the actor system, singletons.

Generic: it imports :mod:`actors` and nothing of the server, the metrics or
the cluster, so a program that only runs actors does not load them.
Private: what users import is in :mod:`supervisor`. See docs/architecture.md.
"""
