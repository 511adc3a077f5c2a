"""Implementations of the ports: event and read stores, Kafka relay, exchanges, settings."""
