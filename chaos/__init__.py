"""Chaos experiments: faults through toxiproxy and the supervisor, a fleet of simulated devices,
and a ledger checker that proves no accepted command or reading was lost (docs/design.md §6
Failure behaviour)."""
