"""The demo's provider sandbox: answers like each provider's API, records what it received
(listed at ``/demo/outbox``) and, like Twilio, calls back with delivery statuses.

Only the demo mounts it; tests use their own stand-ins under ``tests/``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import deque
from datetime import UTC, datetime
from typing import Any

import httpx
from litestar import Request, Response, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.params import FromPath
from twilio.request_validator import RequestValidator

log = logging.getLogger(__name__)

_outbox: deque[dict[str, Any]] = deque(maxlen=500)
_counter = itertools.count(1)
_tasks: set[asyncio.Task[None]] = set()
TWILIO_TOKENS: dict[str, str] = {}  # account sid -> auth token, set by the demo


def received() -> list[dict[str, Any]]:
    return list(_outbox)


async def _twilio_status_callbacks(url: str, sid: str, account: str) -> None:
    token = TWILIO_TOKENS.get(account, "")
    async with httpx.AsyncClient(timeout=5) as client:
        for status in ("sent", "delivered"):
            await asyncio.sleep(0.5)
            params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": account}
            signature = RequestValidator(token).compute_signature(url, params)
            try:
                await client.post(url, data=params, headers={"X-Twilio-Signature": signature})
            except httpx.HTTPError as exc:
                log.warning("sandbox status callback failed: %s", exc)


@post("/demo/sandbox/twilio/2010-04-01/Accounts/{account:str}/Messages.json", status_code=201)
async def twilio_create_message(
    request: Request[Any, Any, Any], account: FromPath[str]
) -> dict[str, Any]:
    if account not in TWILIO_TOKENS or request.headers.get("authorization") is None:
        raise NotAuthorizedException("Authenticate")
    form = dict((await request.form()).items())
    sid = "SM" + secrets.token_hex(16)
    record = {
        "n": next(_counter),
        "provider": "twilio",
        "at": datetime.now(UTC).isoformat(),
        "to": form.get("To"),
        "from": form.get("From"),
        "body": form.get("Body"),
        "sid": sid,
    }
    _outbox.appendleft(record)
    if callback := form.get("StatusCallback"):
        task = asyncio.create_task(_twilio_status_callbacks(str(callback), sid, account))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    return {
        "sid": sid,
        "account_sid": account,
        "to": form.get("To"),
        "from": form.get("From"),
        "body": form.get("Body"),
        "status": "queued",
        "num_segments": "1",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "date_created": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000"),
        "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
    }


class _SmtpSink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        import email.policy

        raw = envelope.original_content or envelope.content or b""
        msg = email.message_from_bytes(bytes(raw), policy=email.policy.default)
        body = msg.get_body(("plain",))
        _outbox.appendleft(
            {
                "n": next(_counter),
                "provider": "smtp",
                "at": datetime.now(UTC).isoformat(),
                "to": ", ".join(envelope.rcpt_tos),
                "from": envelope.mail_from,
                "body": body.get_content() if body is not None else "",
                "subject": str(msg.get("Subject", "")),
                "sid": str(msg.get("Message-ID", "")),
            }
        )
        return "250 2.0.0 Message accepted by the sandbox"


async def serve_smtp_sink(host: str, port: int) -> asyncio.Server:
    """An SMTP server that accepts everything and lists it in the outbox (the demo's relay)."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(_SmtpSink(), enable_SMTPUTF8=True, hostname="sandbox", loop=loop),
        host=host,
        port=port,
    )


@get("/demo/outbox", sync_to_thread=False)
def outbox(request: Request[Any, Any, Any]) -> Response[Any]:
    """What the demo's inboxes sent, newest first (JSON with ``?format=json``)."""
    if request.query_params.get("format") == "json" or "json" in request.headers.get("accept", ""):
        return Response({"items": received()})
    from html import escape

    rows = "".join(
        f"<tr><td>{r['n']}</td><td>{escape(r['at'])}</td><td>{escape(r['provider'])}</td>"
        f"<td>{escape(str(r['from']))}</td><td>{escape(str(r['to']))}</td>"
        f"<td>{escape(str(r['body']))}</td></tr>"
        for r in received()
    )
    page = (
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5>"
        "<title>Demo provider outbox</title><h1>Demo provider outbox</h1>"
        "<p>Every message the demo's inboxes sent to the provider sandbox.</p>"
        "<table border=1 cellpadding=4><tr><th>#</th><th>at</th><th>provider</th><th>from</th>"
        f"<th>to</th><th>body</th></tr>{rows}</table>"
    )
    return Response(page, media_type="text/html")


def _record(provider: str, to: Any, sender: Any, body: Any, sid: str) -> None:
    _outbox.appendleft(
        {
            "n": next(_counter),
            "provider": provider,
            "at": datetime.now(UTC).isoformat(),
            "to": to,
            "from": sender,
            "body": body,
            "sid": sid,
        }
    )


async def _params(request: Request[Any, Any, Any]) -> dict[str, Any]:
    if "json" in request.headers.get("content-type", ""):
        data = await request.json()
        return data if isinstance(data, dict) else {}
    return dict((await request.form()).items())


@post("/demo/sandbox/telegram/{bot:str}/{method:str}", status_code=200)
async def telegram_api(
    request: Request[Any, Any, Any], bot: FromPath[str], method: FromPath[str]
) -> dict[str, Any]:
    """The Bot API methods the product calls (getMe, sendMessage) at ``/bot<token>/<method>``."""
    if not bot.startswith("bot"):
        raise NotAuthorizedException("Unauthorized")
    params = await _params(request)
    if method == "getMe":
        return {
            "ok": True,
            "result": {"id": 1, "is_bot": True, "first_name": "Demo", "username": "demo_bot"},
        }
    if method != "sendMessage":
        return {"ok": False, "error_code": 400, "description": f"sandbox: no {method}"}
    message_id = next(_counter)
    _record("telegram", params.get("chat_id"), "demo_bot", params.get("text"), str(message_id))
    chat = {"id": int(params.get("chat_id", 0)), "type": "private"}
    return {
        "ok": True,
        "result": {
            "message_id": message_id,
            "chat": chat,
            "date": int(datetime.now(UTC).timestamp()),
            "text": params.get("text"),
        },
    }


@post("/demo/sandbox/slack/api/chat.postMessage", status_code=200)
async def slack_post(request: Request[Any, Any, Any]) -> dict[str, Any]:
    params = await _params(request)
    ts = f"{datetime.now(UTC).timestamp():.6f}"
    _record("slack", params.get("channel"), "demo app", params.get("text"), ts)
    return {"ok": True, "channel": params.get("channel"), "ts": ts}


@post("/demo/sandbox/meta/{version:str}/me/messages", status_code=200)
async def meta_send(request: Request[Any, Any, Any], version: FromPath[str]) -> dict[str, Any]:
    params = await _params(request)
    mid = "m_" + secrets.token_hex(8)
    _record(
        "meta",
        (params.get("recipient") or {}).get("id"),
        "demo page",
        (params.get("message") or {}).get("text"),
        mid,
    )
    return {"recipient_id": (params.get("recipient") or {}).get("id"), "message_id": mid}


@get("/demo/widget", sync_to_thread=False)
def demo_widget() -> Response[str]:
    """A page with the chat widget, as a customer's website would embed it."""
    page = (
        "<!doctype html><meta charset=utf-8><title>Demo shop</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<body style='font:16px system-ui;margin:40px'><h1>Demo shop</h1>"
        "<p>This page embeds the contact center's chat widget, like any website would:</p>"
        '<pre>&lt;script src="/widget.js" data-inbox="webchat" async&gt;&lt;/script&gt;</pre>'
        "<script src='/widget.js' data-inbox='webchat' data-title='Chat with us' async></script>"
    )
    return Response(page, media_type="text/html")


route_handlers = [twilio_create_message, telegram_api, slack_post, meta_send, outbox, demo_widget]
