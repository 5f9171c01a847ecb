"""Garbage collection for long-running processes that hold many live objects.

CPython's cycle collector runs a young collection every 700 new container objects and, every
hundred of those, a full one that walks every tracked object of the process: the imported
framework (FastAPI's routes and models, pydantic, psycopg, aio-pika, Celery) and whatever the
process holds (thousands of waiting long polls, the device cache). Under load a replica spent
about a tenth of its CPU there (perf, docs/decisions.md "Garbage collection").

``settle()`` runs once a process has started: one collection, then ``gc.freeze()`` moves every
object alive at that moment out of the collector's reach (they stay alive as before; they are
only no longer walked), and young collections run every ``young`` allocations instead of 700.
Reference counting still frees almost everything at once; the collector only finds cycles,
so a larger young generation holds at most that many cyclic objects a little longer.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle(young: int = YOUNG_THRESHOLD) -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
