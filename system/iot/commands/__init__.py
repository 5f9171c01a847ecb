"""The command core, free of HTTP: a command's life from send to its final status.

``lifecycle`` holds the pure rules (statuses, claim, sweep, ack, cancel, requeue); ``store`` the
SQL of the ``commands`` and ``command_events`` tables that applies them (insert, claim, sweep,
ack, cancel, requeue, reads); ``cleanup`` deletes commands (a device's, a person's devices',
finished ones past their retention); ``service`` is ``Commands``, what an API replica runs
(send, poll, ack, cancel, requeue, the sweep); ``wakeups`` the LISTEN connection that wakes long
polls; ``metrics`` their Prometheus metrics. Everything else that touches the command tables
(the API's routes, rollouts, the commands worker, ``iotctl commands``, ``sql/devices.py`` and
``sql/users.py``, the history maintenance) goes through these modules; only the chaos ledger
reads the tables itself, on purpose.

Nothing is re-exported here: ``service`` loads Redis and the connection pool, which the
commands worker, ``iotctl`` and the rules' users do not need; import from the modules.
"""
