"""The HTTP API: one FastAPI application per replica process.

Entry points: ``serve`` (``python -m iot.api.serve``, one replica) around ``app.create_app``.
The parts: ``routes/`` (one module per resource), ``schemas`` (bodies), ``deps`` (the caller's
identity, the replica's ``State``), ``access`` (who sees which device), ``broker`` and
``amqp`` (confirmed publishing), ``ingest`` and ``shortcut`` (the devices' hot paths, answered
before FastAPI's routing), ``auth_cache`` (device credentials the shortcuts read),
``sensor_names`` (the sensor-name cap), ``metrics``.

Nothing is re-exported here: importing ``create_app`` would load FastAPI and every route for
a user that wants one light module (``schemas``, ``auth_cache``); import from the modules.
"""
