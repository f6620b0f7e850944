"""A Slack Web API stand-in: chat.postMessage (form or JSON body, bearer token checked)."""

from __future__ import annotations

import itertools
from typing import Any

from tests.standins.base import Recorded, StandIn


class SlackStandIn(StandIn):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.fail_next: list[str] = []
        self._ts = itertools.count(1)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def respond(self, request: Recorded) -> tuple[int, Any, str]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}, "application/json"
        if not request.path.endswith("/chat.postMessage"):
            return 200, {"ok": False, "error": "unknown_method"}, "application/json"
        if self.fail_next:
            error = self.fail_next.pop(0)
            status = 429 if error == "ratelimited" else 200
            return status, {"ok": False, "error": error}, "application/json"
        params = self.params(request)
        ts = f"1700000{next(self._ts):03d}.000100"
        return (
            200,
            {
                "ok": True,
                "channel": params["channel"],
                "ts": ts,
                "message": {"text": params.get("text"), "ts": ts},
            },
            "application/json",
        )

    @staticmethod
    def params(request: Recorded) -> dict[str, Any]:
        return request.form or (request.json() if request.body else {})

    def posted(self) -> list[dict[str, Any]]:
        return [self.params(r) for r in self.calls("/chat.postMessage")]
