"""Read models: how each event changes them, the read-store port and queries."""
