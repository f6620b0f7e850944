"""Telegram: ``POST /webhooks/telegram/{inbox_id}`` and replies through the Bot API.

The webhook is checked against the inbox's ``secret_token`` (the
``X-Telegram-Bot-Api-Secret-Token`` header Telegram sends), parsed with python-telegram-bot's
``Update.de_json``, and deduplicated on ``update_id``. Photos and documents are fetched with the
bot before the update is acknowledged (Telegram redelivers until it gets 2xx). Replies use
``telegram.Bot``, created per send: a Bot is bound to the event loop it was initialized in.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from litestar import Request, Response, post
from litestar.exceptions import ClientException, PermissionDeniedException
from litestar.params import FromPath
from sqlalchemy import select
from telegram import Bot, Update
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from channels.webhooks import WEBHOOK_MAX_BODY, runtime_of
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundAttachment, InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import Conversation, CustomerIdentity, Direction, Inbox, Message
from contact_center.outbound import InboxConfig, OutboundMessage, SendError, SendResult
from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.telegram.org"
MAX_FILE = 20 * 1024 * 1024  # the Bot API's own download limit


def make_bot(inbox: InboxConfig | Inbox) -> Bot:
    token = str(inbox.credentials.get("bot_token", ""))
    if not token:
        raise SendError("the inbox has no Telegram bot_token", retryable=False)
    base = (inbox.api_base_url or DEFAULT_API).rstrip("/")
    return Bot(token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot")


async def _download(
    bot: Bot, file_id: str, filename: str | None, mime: str | None
) -> InboundAttachment:
    file = await bot.get_file(file_id)
    if file.file_size and file.file_size > MAX_FILE:
        raise ValueError("file too large")
    data = await file.download_as_bytearray()
    return InboundAttachment(filename, mime, bytes(data))


@post(
    "/webhooks/telegram/{inbox_id:str}",
    tags=["webhooks"],
    status_code=200,
    request_max_body_size=WEBHOOK_MAX_BODY,
)
async def telegram_webhook(
    request: Request[Any, Any, Any], inbox_id: FromPath[str]
) -> Response[dict[str, Any]]:
    """One Telegram update. 403 on a wrong secret, 400 on a malformed update (Telegram does
    not redeliver 4xx); updates that carry no customer message are acknowledged and ignored."""
    rt = runtime_of(request)
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, inbox_id)
    if inbox is None or inbox.kind != "telegram" or not inbox.is_active:
        raise ClientException("no such Telegram inbox", status_code=404)
    expected = str(inbox.credentials.get("secret_token", ""))
    given = request.headers.get("x-telegram-bot-api-secret-token", "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise PermissionDeniedException("wrong secret token")
    try:
        data = json.loads(await request.body())
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise ValueError("not an update")
        update = Update.de_json(data, None)
    except (ValueError, TypeError, KeyError) as exc:
        raise ClientException(f"malformed Telegram update: {exc}") from None
    message = update.message or update.edited_message
    if message is None or message.from_user is None or message.from_user.is_bot:
        return Response({"ok": True, "ignored": True})
    user = message.from_user
    sender = IdentityRef.of("telegram", str(message.chat.id), user.full_name or None)
    attachments: list[InboundAttachment] = []
    rejected: list[str] = []
    wanted: list[tuple[str, str | None, str | None]] = []
    if message.photo:
        wanted.append((message.photo[-1].file_id, "photo.jpg", "image/jpeg"))
    if message.document:
        doc = message.document
        wanted.append((doc.file_id, doc.file_name, doc.mime_type))
    if wanted:
        bot = make_bot(inbox)
        async with bot:
            for file_id, name, mime in wanted:
                try:
                    attachments.append(await _download(bot, file_id, name, mime))
                except (TelegramError, ValueError) as exc:
                    rejected.append(f"{name or file_id}: {exc}")
    extra: dict[str, Any] = {"telegram_message_id": message.message_id}
    if update.edited_message is not None:
        extra["edited"] = True
        original = await _original_of(rt, inbox.id, str(message.chat.id), message.message_id)
        if original is not None:
            extra["edited_of"] = original  # the timeline links the edit to what it changes
    if rejected:
        extra["download_failed"] = rejected
    text = message.text or message.caption or ""
    result = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id=inbox.id,
            provider_message_id=f"update:{update.update_id}",
            sender=sender,
            text=f"(edited) {text}" if update.edited_message is not None else text,
            language=user.language_code,
            attachments=tuple(attachments),
            sent_at=message.date,
            extra=extra,
        )
    )
    (DUPLICATES if result.duplicate else INGESTED).labels("telegram").inc()
    if not result.duplicate:
        await rt.committed()
    return Response({"ok": True})


async def _original_of(rt: Runtime, inbox_id: str, chat_id: str, message_id: int) -> int | None:
    """Our id for the chat's Telegram message ``message_id`` (ids are unique per chat): the
    first message stored for it, or the one an earlier edit of it names."""
    customers = select(CustomerIdentity.customer_id).where(
        CustomerIdentity.kind == "telegram", CustomerIdentity.address == chat_id
    )
    conversations = select(Conversation.id).where(
        Conversation.inbox_id == inbox_id, Conversation.customer_id.in_(customers)
    )
    async with rt.db.read() as session:
        row = (
            await session.execute(
                select(Message.id, Message.extra)
                .where(
                    Message.conversation_id.in_(conversations),
                    Message.direction == Direction.inbound.value,
                    Message.extra["telegram_message_id"].as_integer() == message_id,
                )
                .order_by(Message.id)
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    found, extra = row
    if (extra or {}).get("edited"):
        earlier = (extra or {}).get("edited_of")
        return int(earlier) if isinstance(earlier, int) else None
    return int(found)


class TelegramSender:
    async def send(self, message: OutboundMessage) -> SendResult:
        bot = make_bot(message.inbox)
        try:
            async with bot:
                sent = await bot.send_message(chat_id=int(message.to_address), text=message.text)
        except RetryAfter as exc:
            raise SendError(f"Telegram rate limit: {exc}", retryable=True) from exc
        except (BadRequest, Forbidden, InvalidToken) as exc:
            raise SendError(f"Telegram refused: {exc}", retryable=False) from exc
        except (NetworkError, TelegramError) as exc:
            raise SendError(f"Telegram unreachable: {exc}", retryable=True) from exc
        except ValueError as exc:
            raise SendError(
                f"bad Telegram chat id {message.to_address!r}", retryable=False
            ) from exc
        return SendResult(f"msg:{sent.chat_id}:{sent.message_id}")


route_handlers = [telegram_webhook]
