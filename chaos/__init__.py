"""Chaos experiments: faults through toxiproxy and the supervisor, a fleet of simulated devices,
and a ledger checker that proves no accepted command or reading was lost (docs/design.md §6
Failure behaviour).

Entry points: ``cli`` (``iotctl chaos``, a plugin) and ``experiment`` (run one experiment of
``experiments/*.yml``). The parts: ``actions`` (faults and rollbacks), ``probes`` (observing,
never acting), ``toxiproxy`` (its API), ``fleet`` (devices and operators on the firmware's
core), ``ledger`` (every 2xx, and the checker), ``report`` (JSON, Markdown, plot).

Nothing is re-exported here: the plugin is loaded on every ``iotctl`` call, and the tests
import single modules.
"""
