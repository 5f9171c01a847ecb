"""Highly available Postgres: the tooling that measures failover engines on real faults.

- ``netns``: test hosts as network namespaces on one bridge; a host can be cut off
- ``engines``: what every engine offers the bench (members, roles, killing a member's postgres)
- ``patroni``: Patroni 3 with a three-member etcd; ``autofailover``: pg_auto_failover
- ``writer``: the client writing numbered rows; ``probe``: writes from inside a cut-off host
- ``bench``: one fault on one engine, end to end; ``report``: the figures, Markdown and JSON

``iotctl ha bench-engines`` (``iot.cli.ha``) runs it; docs/ha-engines.md has the results.
"""
