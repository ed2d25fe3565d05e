"""Shared core: settings, event contract, Kafka/S3/Redis helpers, metrics, feature math."""
