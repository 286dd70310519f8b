"""Examples of the history guide (docs/history.md)."""
