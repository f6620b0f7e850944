"""The ASGI application factory (part of the composition root)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig
from sqlalchemy.exc import DBAPIError

import channels
from agent_ui import console, supervisor, widget
from agent_ui import socket as agent_socket
from contact_center import __version__
from contact_center.api.admin import AgentController, InboxController, TeamController
from contact_center.api.auth import AuthController
from contact_center.api.canned import CannedResponseController
from contact_center.api.conversations import AttachmentController, ConversationController
from contact_center.api.customers import CustomerController
from contact_center.api.health import MetricsController, healthz, readyz
from contact_center.auth import TokenAuthMiddleware
from contact_center.runtime import Runtime, settle_heap
from contact_center.settings import Settings, get_settings
from contact_center.wiring import build_runtime, build_scheduler
from routing import api as routing_api
from routing import metrics_api, sla_api
from tickets import api as tickets_api
from tickets import pages as survey_pages
from tickets import survey_api

log = logging.getLogger(__name__)

# Paths with their own authentication (provider signatures, visitor tokens) or none.
PUBLIC_PATHS = [
    "^/schema",
    "^/healthz",
    "^/readyz",
    "^/metrics",
    "^/webhooks/",
    "^/webchat/",
    "^/ws/chat",
    "^/ws/agent",  # authenticates itself, to close with a clear code
    "^/ws/supervisor",  # the same
    "^/widget.js",
    "^/demo/",
    "^/agent",  # the console's pages check the session cookie themselves
    "^/supervisor",  # the wallboard's page, the same
    "^/survey/",  # the satisfaction survey's page: its token is the credential
]


def _out_of_range(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Numbers beyond what the database stores (an id of 10^20) are the client's error."""
    causes = (
        exc,
        getattr(exc, "orig", None),
        getattr(getattr(exc, "orig", None), "__cause__", None),
    )
    data_error = any(type(c).__name__ == "DataError" for c in causes)
    if isinstance(exc, DBAPIError) and not data_error and "out of" not in str(exc.orig):
        log.error("database error", exc_info=exc)
        return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)
    return Response(
        {"status_code": 400, "detail": "a number in the request is out of range"},
        status_code=400,
    )


def _too_large(request: Request[Any, Any, Any], exc: RequestEntityTooLarge) -> Response[Any]:
    """413 naming the route's limit, so a relay's operator sees why the body was refused."""
    limit = request.route_handler.resolve_request_max_body_size()
    detail = "request body too large" + (f": at most {limit} bytes here" if limit else "")
    return Response({"status_code": 413, "detail": detail}, status_code=413)


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    run_scheduler: bool | None = None,
    extra_route_handlers: list[Any] | None = None,
) -> Litestar:
    """Build the app. With ``runtime`` given (tests, demo) it is used and not closed here.

    The scheduler (relay + sweeps) runs inside the app when there is no Redis (embedded), or
    when ``run_scheduler`` says so; with Redis it is its own process.
    """
    settings = settings or (runtime.settings if runtime else get_settings())
    own_runtime = runtime is None
    embed_scheduler = settings.embedded if run_scheduler is None else run_scheduler

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        rt = runtime or await build_runtime(settings)
        await rt.db.check_migrated()
        app.state.runtime = rt
        if own_runtime:  # a served process (not a test or the demo, which settle themselves)
            settle_heap()
        stop = asyncio.Event()
        task = None
        if embed_scheduler:
            task = asyncio.create_task(build_scheduler(rt).run(stop), name="scheduler")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait([task], timeout=5)
                task.cancel()
            if own_runtime:
                await rt.close()

    prometheus = PrometheusConfig(
        app_name="contact_center", prefix="cc", group_path=True, exclude=["^/metrics"]
    )
    auth = DefineMiddleware(TokenAuthMiddleware, exclude=PUBLIC_PATHS)
    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            MetricsController,
            AuthController,
            CannedResponseController,
            CustomerController,
            ConversationController,
            AttachmentController,
            InboxController,
            AgentController,
            TeamController,
            *channels.route_handlers(settings),
            *widget.route_handlers,
            *console.route_handlers,
            *agent_socket.route_handlers,
            *routing_api.route_handlers,
            *sla_api.route_handlers,
            *metrics_api.route_handlers,
            *tickets_api.route_handlers,
            *supervisor.route_handlers,
            *survey_pages.route_handlers,
            *survey_api.route_handlers,
            *(extra_route_handlers or []),
        ],
        lifespan=[lifespan],
        middleware=[prometheus.middleware, auth],
        # A given runtime is reachable without the lifespan too (same-loop ASGI tests).
        state=State({"runtime": runtime} if runtime is not None else {}),
        openapi_config=OpenAPIConfig(
            title="Contact center API", version=__version__, path="/schema"
        ),
        cors_config=CORSConfig(allow_origins=settings.allowed_origins)
        if settings.allowed_origins
        else None,
        exception_handlers={
            OverflowError: _out_of_range,
            DBAPIError: _out_of_range,
            RequestEntityTooLarge: _too_large,
        },
        debug=False,
    )
