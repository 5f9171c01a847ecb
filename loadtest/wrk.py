"""Run ``wrk`` with the bench's Lua script (``loadtest/wrk/bench.lua``) and read its results.

wrk drives the load of ``iotctl bench``: a Python client would be the bottleneck on a small
machine. The script's ``done(summary, latency, requests)`` hook writes every figure as one JSON
object to the file ``BENCH_RESULT`` names, so nothing depends on wrk's text output. Its
parameters (method, path, tokens file, batch, first timestamp) come from the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "wrk" / "bench.lua"
THREADS = 2


class WrkError(RuntimeError):
    """wrk is missing, failed, or wrote no readable results; the message says which."""


@dataclass
class WrkResult:
    """The figures of one wrk run; latencies in milliseconds. ``non_2xx`` counts what wrk
    counts as status errors (answers of 400 and above)."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    duration_s: float
    non_2xx: int = 0
    socket_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def result_from_json(data: dict[str, Any]) -> WrkResult:
    """The figures of what the Lua ``done()`` hook wrote (durations in microseconds).

    Raises:
        WrkError: a required figure is missing or not a number.
    """
    try:
        duration = int(data["duration_us"]) / 1e6
        requests = int(data["requests"])
        latency = data["latency_us"]
        errors = data["errors"]
        return WrkResult(
            requests_per_s=round(requests / duration, 2) if duration else 0.0,
            p50_ms=int(latency["p50"]) / 1000,
            p99_ms=int(latency["p99"]) / 1000,
            requests=requests,
            duration_s=duration,
            non_2xx=int(errors["status"]),
            socket_errors=sum(int(errors[k]) for k in ("connect", "read", "write", "timeout")),
            statuses={int(code): int(n) for code, n in (data.get("statuses") or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WrkError(f"wrk's results lack a figure ({exc!r}): {data}") from exc


def read_result(path: Path) -> WrkResult:
    """Read the JSON the Lua ``done()`` hook wrote.

    Raises:
        WrkError: no file (wrk did not finish) or not the expected JSON.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WrkError(f"wrk wrote no readable results to {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise WrkError(f"wrk's results in {path} are not a JSON object")
    return result_from_json(data)


def binary() -> str:
    """The path of wrk.

    Raises:
        WrkError: wrk is not installed (with how to install it).
    """
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed: run `make up` (it installs the wrk package)")
    return found


def run(
    url: str,
    method: str,
    path: str,
    tokens: list[str],
    connections: int,
    duration: int,
    batch: int = 1,
    base: int = 0,
) -> WrkResult:
    """Send ``method path`` to ``url`` (the base URL) for ``duration`` seconds over
    ``connections`` connections and THREADS threads, rotating through ``tokens``; POST
    /sensors sends ``batch`` readings per request with timestamps from ``base`` (epoch s).

    Raises:
        WrkError: wrk is missing, failed, or wrote no results.
    """
    wrk = binary()
    with tempfile.TemporaryDirectory(prefix="iot-bench-") as tmp:
        token_file, result = Path(tmp) / "tokens", Path(tmp) / "result.json"
        token_file.write_text("\n".join(tokens) + "\n")
        env = {
            **os.environ,
            "BENCH_METHOD": method,
            "BENCH_PATH": path,
            "BENCH_TOKENS": str(token_file),
            "BENCH_BATCH": str(batch),
            "BENCH_BASE": str(base),
            "BENCH_RESULT": str(result),
        }
        cmd = [wrk, "-t", str(THREADS), "-c", str(connections), "-d", f"{duration}s"]
        cmd += ["-s", str(SCRIPT), url.rstrip("/") + path]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + 60, env=env
            )
        except subprocess.TimeoutExpired as exc:
            raise WrkError(f"wrk did not end within {duration + 60} s") from exc
        if proc.returncode != 0:
            message = proc.stderr.strip() or proc.stdout.strip()
            raise WrkError(f"wrk failed ({proc.returncode}): {message}")
        return read_result(result)
