"""Examples of the delivery guarantees page (docs/delivery.md)."""
