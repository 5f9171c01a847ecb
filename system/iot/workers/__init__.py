"""Celery workers: they consume the queues the API publishes to, by task name only.

``app`` is the Celery application (``celery -A iot.workers.app``), ``sensors`` stores batches
of readings (``worker-sensors``), ``commandlog`` stores commands and events and runs the
history maintenance (``worker-commandlog``), ``storage`` retries writes through an outage,
``metrics`` serves each worker's Prometheus metrics.

Nothing is re-exported here: the Celery app would load Celery for users of ``storage`` or
``metrics`` alone, and its name would hide the ``app`` module.
"""
