"""Capacity planning with locust: emulated devices, operators and web viewers over the real HTTP
API, load shapes, a capacity report per run and a sizing plan (``iotctl load``).

Entry points: ``cli`` (``iotctl load``, a plugin), ``bench`` (``iotctl bench``), ``runner`` (one
run, start to finish), ``background`` (load behind a chaos experiment); scenarios are
``locustfiles/<name>.py``. The parts: ``device`` and ``rawhttp`` (devices on the firmware's
core), ``fleet`` (their registration), ``profiles`` and ``shapes`` (load shapes), ``samples``,
``collect``, ``cpu`` and ``prom`` (what a run measures), ``report``, ``render`` and ``plots``
(the capacity report), ``plan`` (sizing), ``verify`` (the readings ledger against Postgres).

Nothing is re-exported here: locust's processes import single modules (under gevent), and the
plugin is loaded on every ``iotctl`` call.
"""
