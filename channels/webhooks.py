"""What every webhook shares: the runtime, the public URL signatures are computed over, and
the rule that a provider hears 2xx only after the message is committed."""

from __future__ import annotations

from typing import Any

from litestar import Request

from contact_center.runtime import Runtime


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def public_url(request: Request[Any, Any, Any]) -> str:
    """The URL the provider called, as configured (never the one seen behind a proxy)."""
    rt = runtime_of(request)
    query = request.scope.get("query_string", b"").decode("latin-1")
    return rt.settings.public_url + request.url.path + (f"?{query}" if query else "")
