"""Examples of the presence guide (docs/presence.md)."""
