"""The FastAPI application: one per API replica process (started by ``python -m iot.api.serve``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from iot import cache, db
from iot.api.broker import Publisher
from iot.api.dependency_probe import DependencyProbe
from iot.api.deps import DEVICE_CACHE_MAX, State, forget_devices
from iot.api.ingest import Coalescer, IngestShortcut
from iot.api.metrics import UNAVAILABLE, MetricsMiddleware
from iot.api.routes import auth, commands, devices, health, rollouts, sensors
from iot.api.sensor_names import SensorNames
from iot.api.shortcut import IdlePollShortcut
from iot.commands.service import Commands
from iot.commands.wakeups import Wakeups
from iot.errors import AuthError, IotError, QueueFull, Unavailable
from iot.rollouts.service import Rollouts
from iot.settings import Settings, get_settings

log = logging.getLogger("iot.api")


class IotApp(FastAPI):
    """FastAPI behind a short front door: every request is counted and timed, and the devices'
    hot paths (a plainly valid ``POST /sensors``, a poll of an idle device) are answered there,
    before FastAPI's own middleware stack and routing; everything else goes on to FastAPI.
    Measured: docs/decisions.md, "Ingest"."""

    def __init__(self, *, replica: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = MetricsMiddleware(IngestShortcut(IdlePollShortcut(self._fastapi)), replica)

    async def _fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # the shortcuts find the replica's state here, as routes do
        await self._front(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.require_secrets()
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = db.open_pool(settings, fixed=True)
        await pool.open(wait=False)
        publisher = Publisher(settings.broker_url, settings.publish_timeout_seconds)
        await publisher.start()
        redis = cache.async_client(settings.redis_url, settings.redis_timeout_seconds)
        state = State(settings, pool, publisher, redis, {})
        state.ingest = Coalescer(publisher.publish_task, linger=settings.ingest_linger_ms / 1000)
        state.sensor_names = SensorNames(
            lambda device_id: cache.asensor_names(redis, device_id),
            cap=settings.max_sensors_per_device,
            max_devices=DEVICE_CACHE_MAX,
        )
        state.commands = Commands(
            pool,
            publisher.publish_task,
            redis,
            Wakeups(settings.database_url, lambda d: forget_devices(state.device_cache, d)),
            max_attempts=settings.command_max_attempts,
            queue_cap=settings.command_queue_max,
        )
        await state.commands.start()
        state.rollouts = Rollouts(pool, state.commands, settings.replica_name)
        await state.rollouts.start()
        probe = DependencyProbe(settings.database_url, settings.redis_url)
        probe.start()
        app.state.iot = state
        try:
            yield
        finally:
            probe.stop()
            await state.rollouts.stop()
            await state.commands.stop()
            await publisher.stop()
            await redis.aclose()
            await pool.close()

    app = IotApp(
        replica=settings.replica_name,
        title="IoT remote control",
        version="0.1.0",
        description="Devices send readings and fetch commands; people watch and command them. "
        "A 2xx answer means the message is durable; 503 means retry (see Retry-After).",
        lifespan=lifespan,
    )

    @app.exception_handler(IotError)
    async def _iot_error(request: Request, exc: IotError) -> JSONResponse:
        headers: dict[str, str] = {}
        if isinstance(exc, Unavailable):
            UNAVAILABLE.labels(exc.cause).inc()
        if isinstance(exc, Unavailable | QueueFull):
            headers["Retry-After"] = str(settings.retry_after_seconds)
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: echoing the input back could be huge, or not
        # even valid JSON (NaN).
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for module in (auth, devices, sensors, commands, rollouts, health):
        app.include_router(module.router)
    return app
