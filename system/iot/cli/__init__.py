"""``iotctl``, the command line: ``main.app`` is the entry point (``pyproject.toml``) and
registers each command from the module of its name: ``stack`` (up, down, status, logs, stop,
start, restart, migrate), ``queues``, ``users``, ``commands``, ``cache``, ``device``; ``common``
holds what they share. Nothing is imported here: ``main`` loads the plugins, and
``loadtest``'s imports ``iot.cli.users`` in turn."""
