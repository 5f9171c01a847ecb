"""The native stack that ``iotctl up`` runs on one machine (or a machine's part of it).

``setup`` prepares ``var/`` (secrets, TLS, the Postgres cluster, configs rendered from
``templates/``, migrations); ``processes`` lists every supervisord program with its health
probe; ``control`` starts, stops and inspects them (``Supervisor``, ``probe``,
``wait_healthy``); ``cluster`` forms and shrinks the RabbitMQ cluster; ``connections`` sizes
nginx and the replicas for their connections; ``external`` prepares backing services that run
elsewhere; ``roles`` the least-privilege Postgres roles; ``rabbitnode`` starts a RabbitMQ node.

Nothing is re-exported here: ``rabbitnode`` runs as a program with the standard library only,
and would otherwise load httpx, psycopg and redis before RabbitMQ starts.
"""
