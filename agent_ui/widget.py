"""``/widget.js``: the embeddable chat widget (a static module, no build step)."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get

STATIC = Path(__file__).parent / "static"


@get("/widget.js", include_in_schema=False, sync_to_thread=False)
def widget_js() -> Response[bytes]:
    return Response(
        (STATIC / "widget.js").read_bytes(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


route_handlers = [widget_js]
