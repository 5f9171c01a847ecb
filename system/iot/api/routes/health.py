"""Liveness and readiness of one API replica, and a do-nothing endpoint for benchmarks."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from iot import db
from iot.api.deps import AppState
from iot.api.schemas import EVERY_ROUTE
from iot.errors import DatabaseUnavailable

router = APIRouter(tags=["health"], responses=EVERY_ROUTE)


@router.get("/ping")
async def ping() -> dict[str, bool]:
    """Does nothing: the baseline that benchmarks compare real routes with."""
    return {"ok": True}


@router.get("/health")
async def health(state: AppState) -> JSONResponse:
    """Each dependency's state; 200 when this replica can accept writes (broker connected)."""
    checks: dict[str, str] = {"broker": "ok" if state.publisher.connected else "down"}
    try:
        async with db.connection(state.pool) as conn:
            await conn.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseUnavailable:
        checks["database"] = "down"
    try:
        await state.redis.ping()
        checks["cache"] = "ok"
    except (redis.RedisError, OSError):
        checks["cache"] = "down"
    status = 200 if checks["broker"] == "ok" else 503
    return JSONResponse(
        {"status": "ok" if status == 200 else "degraded", "checks": checks}, status_code=status
    )
