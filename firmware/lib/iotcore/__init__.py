"""The device protocol core (MicroPython and CPython). Its public surface is ``iotcore.core``
(``Device``, ``Registry``, ``Reject``, ``Request``, ``Response``, ``Sleep``, ``drive``, the
stores), which gathers the parts: ``device``, ``effects``, ``registry``, ``buffer``,
``recent_ids``, ``backoff``, ``clock``, ``store``. Transports: ``http`` (the board's sockets),
``host`` (httpx, CPython only); ``handlers`` holds the built-in commands. Nothing is imported
here, so a board loads only the modules it uses."""
