"""The client: numbered rows at a steady rate through libpq's multi-host string
(``target_session_attrs=read-write``), connecting again after any error, every attempt recorded
(when sent, when answered, which server, what went wrong)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import psycopg

TABLE = "ha_bench"
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (seq bigint PRIMARY KEY, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp(), source text NOT NULL DEFAULT 'client')"
)


@dataclass
class Attempt:
    seq: int  # 0 for a connection attempt that failed
    sent: float
    done: float
    server: str  # the address that acknowledged, "" when it failed
    error: str  # "" when acknowledged, else the error class (and SQLSTATE)


def error_class(exc: BaseException) -> str:
    """What the client saw, short enough to count: the class and its SQLSTATE, if any, and the
    gist of the message (libpq's multi-host message names every host it tried)."""
    state = getattr(exc, "sqlstate", None)
    full = str(exc).strip()
    low = full.lower()
    if "read-write" in low or "read only" in low or "read-only" in low:
        text = "no read-write server"
    elif "timeout" in low or "timed out" in low:
        text = "timeout"
    elif "refused" in low:
        text = "connection refused"
    elif "no route" in low or "unreachable" in low:
        text = "no route to host"
    elif "closed" in low or "terminat" in low or "lost" in low or "shutting down" in low:
        text = "connection lost"
    elif "starting up" in low or "recovery" in low:
        text = "server starting up"
    else:
        text = full.splitlines()[0][:60] if full else ""
    return f"{type(exc).__name__}{f'[{state}]' if state else ''}: {text}"


class Writer:
    """Writes ``rate`` rows a second from a thread until ``stop``."""

    def __init__(self, dsn: str, rate: float = 20) -> None:
        self.dsn = dsn
        self.interval = 1 / rate
        self.attempts: list[Attempt] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ha-writer", daemon=True)
        self._seq = 0

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> list[Attempt]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.attempts

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        server = ""
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.interval
            if conn is None:
                sent = time.time()
                try:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                    row = conn.execute("SELECT host(inet_server_addr())").fetchone()
                    server = str(row[0]) if row and row[0] else ""
                except psycopg.Error as exc:
                    conn = None
                    self.attempts.append(Attempt(0, sent, time.time(), "", error_class(exc)))
            if conn is not None:
                self._seq += 1
                sent = time.time()
                try:
                    conn.execute(f"INSERT INTO {TABLE} (seq) VALUES (%s)", (self._seq,))
                    self.attempts.append(Attempt(self._seq, sent, time.time(), server, ""))
                except psycopg.Error as exc:
                    self.attempts.append(Attempt(self._seq, sent, time.time(), "",
                                                 error_class(exc)))
                    conn.close()
                    conn = None
            pause = next_at - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)
            else:
                next_at = time.monotonic()
        if conn is not None:
            conn.close()


def as_dicts(attempts: list[Attempt]) -> list[dict[str, object]]:
    return [asdict(a) for a in attempts]


def present(dsn: str, table: str = TABLE, timeout: float = 60) -> set[int]:
    """The sequence numbers the primary holds now (asked until it answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                rows = conn.execute(f"SELECT seq FROM {table}").fetchall()
                return {int(r[0]) for r in rows}
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
