"""Operations: liveness, readiness (database, migrations, Redis) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.plugins.prometheus import PrometheusController

from contact_center.api.common import runtime_of
from contact_center.models import RelayState


@get("/healthz", exclude_from_auth=True, tags=["operations"], sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@get("/readyz", exclude_from_auth=True, tags=["operations"])
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Ready to serve: the database answers and is migrated, Redis answers (when configured)."""
    rt = runtime_of(request)
    checks: dict[str, str] = {}
    try:
        await rt.db.ping()
        await rt.db.check_migrated()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    if rt.settings.redis_url:
        try:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(rt.settings.redis_url, socket_timeout=2)
            try:
                await client.ping()
            finally:
                await client.aclose()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {exc}"
    try:
        async with rt.db.read() as session:
            state = await session.get(RelayState, "main")
        lag = (state.sequenced - state.published) if state else 0
        checks["outbox_lag"] = str(lag)
    except Exception as exc:
        checks["outbox_lag"] = f"error: {exc}"
    ok = all(v == "ok" for k, v in checks.items() if k != "outbox_lag")
    return Response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False
    opt = {"exclude_from_auth": True}
