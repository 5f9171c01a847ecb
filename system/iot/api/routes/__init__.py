"""The API's routes, one module per resource, each with its ``router``: ``auth``
(``POST /auth/token``), ``devices``, ``sensors``, ``commands``, ``health``. ``app.create_app``
includes them; a new module goes into its ``for module in (...)`` loop."""
