"""A Graph API stand-in: ``POST /{version}/me/messages`` (Send API) and media downloads."""

from __future__ import annotations

import itertools
from typing import Any

from tests.standins.base import Recorded, StandIn


class MetaStandIn(StandIn):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.media: dict[str, tuple[bytes, str]] = {}
        self.fail_next: list[tuple[int, dict[str, Any]]] = []
        self._ids = itertools.count(1)

    def respond(self, request: Recorded) -> tuple[int, Any, str]:
        if request.method == "GET" and request.path in self.media:
            data, content_type = self.media[request.path]
            return 200, data, content_type
        if not request.path.endswith("/me/messages"):
            return 404, {"error": {"message": "Unknown path", "code": 803}}, "application/json"
        if request.query.get("access_token") != [self.token]:
            return (
                400,
                {
                    "error": {
                        "message": "Invalid OAuth access token.",
                        "type": "OAuthException",
                        "code": 190,
                    }
                },
                "application/json",
            )
        if self.fail_next:
            status, error = self.fail_next.pop(0)
            return status, {"error": error}, "application/json"
        body = request.json()
        return (
            200,
            {"recipient_id": body["recipient"]["id"], "message_id": f"m_out{next(self._ids)}"},
            "application/json",
        )

    def sent(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.calls("/me/messages")]
