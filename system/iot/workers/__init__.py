"""Celery workers: they consume the queues the API publishes to, by task name only."""
