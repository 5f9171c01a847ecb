"""The IoT remote-control product: the HTTP API (``iot.api``), the command core
(``iot.commands``), the Celery workers (``iot.workers``), SQL per table family (``iot.sql``),
the native stack (``iot.stack``) and the ``iotctl`` command line (``iot.cli``).

Shared by all of them: ``settings`` (every ``IOT_*`` setting), ``errors`` (the one error
tree), ``messages`` (the API-worker contract), ``db`` (Postgres), ``cache`` (Redis),
``security`` (passwords and tokens), ``heap`` (garbage collection), ``maintenance`` (history
retention). Nothing is imported here: every process, down to a one-line ``iotctl`` call,
loads only the modules it uses.
"""
