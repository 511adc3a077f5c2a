"""Kafka adapters: the relay, topics, and a Kafka-protocol broker for development and tests."""
