"""Small wsup apps and a child-process harness for the end-to-end tests.

``python -m supervisor serve tests.e2e.apps.slow_app:app`` serves one of them
from the repository root.
"""
