"""Pure domain: aggregates, events, value objects, errors and strategies (no I/O)."""
