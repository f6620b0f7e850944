"""What every webhook shares: the runtime, the public URL signatures are computed over, and
the rule that a provider hears 2xx only after the message is committed."""

from __future__ import annotations

from typing import Any

from litestar import Request

from contact_center.runtime import Runtime

# Request body limits per route (Litestar refuses a larger body with 413 before the handler
# runs; its default, 10 MB, would refuse mail and uploads we accept). Provider webhooks carry
# JSON or form payloads of a few kilobytes: 1 MiB is ample and keeps junk out.
WEBHOOK_MAX_BODY = 1024 * 1024
# Multipart framing and the small fields sent with a chat upload (text is capped at 64 Ki
# characters, at most 256 KiB in UTF-8).
MULTIPART_OVERHEAD = 512 * 1024


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def public_url(request: Request[Any, Any, Any]) -> str:
    """The URL the provider called, as configured (never the one seen behind a proxy)."""
    rt = runtime_of(request)
    query = request.scope.get("query_string", b"").decode("latin-1")
    return rt.settings.public_url + request.url.path + (f"?{query}" if query else "")
