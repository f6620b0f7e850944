"""A Telegram Bot API stand-in: getMe, sendMessage, getFile and file downloads, answered in
the Bot API's JSON shapes (``{"ok": true, "result": ...}``) for one bot token."""

from __future__ import annotations

import itertools
import time
from typing import Any

from tests.standins.base import Recorded, StandIn

BOT_ID = 777000


class TelegramStandIn(StandIn):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.files: dict[str, bytes] = {}
        self.fail_next: list[tuple[int, str]] = []
        self._ids = itertools.count(500)

    def respond(self, request: Recorded) -> tuple[int, Any, str]:
        prefix = f"/bot{self.token}/"
        file_prefix = f"/file/bot{self.token}/"
        if request.path.startswith(file_prefix):
            data = self.files.get(request.path.removeprefix(file_prefix))
            if data is None:
                return 404, b"", "application/octet-stream"
            return 200, data, "application/octet-stream"
        if not request.path.startswith(prefix):
            return (
                401,
                {"ok": False, "error_code": 401, "description": "Unauthorized"},
                "application/json",
            )
        method = request.path.removeprefix(prefix)
        params = request.form or (request.json() if request.body else {})
        if method == "getMe":
            return (
                200,
                {
                    "ok": True,
                    "result": {
                        "id": BOT_ID,
                        "is_bot": True,
                        "first_name": "Support",
                        "username": "demo_bot",
                    },
                },
                "application/json",
            )
        if self.fail_next:
            code, description = self.fail_next.pop(0)
            return (
                code,
                {"ok": False, "error_code": code, "description": description},
                "application/json",
            )
        if method == "sendMessage":
            chat_id = int(params["chat_id"])
            return (
                200,
                {
                    "ok": True,
                    "result": {
                        "message_id": next(self._ids),
                        "date": int(time.time()),
                        "chat": {"id": chat_id, "type": "private"},
                        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Support"},
                        "text": params.get("text", ""),
                    },
                },
                "application/json",
            )
        if method == "getFile":
            file_id = params["file_id"]
            path = f"documents/{file_id}"
            return (
                200,
                {
                    "ok": True,
                    "result": {
                        "file_id": file_id,
                        "file_unique_id": f"u{file_id}",
                        "file_size": len(self.files.get(path, b"")),
                        "file_path": path,
                    },
                },
                "application/json",
            )
        return (
            400,
            {"ok": False, "error_code": 400, "description": f"unknown method {method}"},
            "application/json",
        )

    def sent(self) -> list[dict[str, str]]:
        return [r.form for r in self.calls("/sendMessage")]
