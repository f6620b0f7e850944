"""Slack as a customer channel (shared / Slack Connect channels and DMs with the app).

``POST /webhooks/slack/events``: the URL-verification handshake, request signatures checked with
slack-sdk's ``SignatureVerifier`` over the raw body (stale timestamps rejected; the verifier
reads our Clock), retries (same ``event_id``) deduplicated by ingest, the app's own messages
ignored. The message is committed before the 200 (ingest takes milliseconds, far inside Slack's
3 s); everything else happens after the ack, from the outbox.

Threads: a top-level message in a channel starts a conversation whose thread key is
``<channel>:<ts>``; replies in that Slack thread join it; in a DM every message continues the
customer's active conversation. Replies are posted with ``AsyncWebClient.chat_postMessage``
into the same thread.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from litestar import Request, Response, post
from litestar.exceptions import ClientException, PermissionDeniedException
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import Clock as SlackClock
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from channels.webhooks import WEBHOOK_MAX_BODY, runtime_of
from contact_center.clock import Clock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import Inbox
from contact_center.outbound import OutboundMessage, SendError, SendResult

log = logging.getLogger(__name__)

# Message subtypes that are not a person writing (joins, topic changes, our own bot, ...).
IGNORED_SUBTYPES = frozenset(
    {
        "bot_message",
        "message_changed",
        "message_deleted",
        "channel_join",
        "channel_leave",
        "channel_topic",
        "channel_purpose",
        "channel_name",
        "group_join",
        "group_leave",
    }
)
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class _ClockAdapter(SlackClock):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.now().timestamp()


def _client(token: str, api_base_url: str | None) -> AsyncWebClient:
    client = AsyncWebClient(token=token, base_url=api_base_url or AsyncWebClient.BASE_URL)
    client.proxy = None  # AsyncWebClient ignores NO_PROXY: never route loopback via a proxy
    return client


@post(
    "/webhooks/slack/events",
    tags=["webhooks"],
    status_code=200,
    request_max_body_size=WEBHOOK_MAX_BODY,
)
async def slack_events(request: Request[Any, Any, Any]) -> Response[Any]:
    rt = runtime_of(request)
    body = await request.body()
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("not an object")
    except ValueError:
        raise ClientException("malformed Slack event: body is not a JSON object") from None
    team = str(payload.get("team_id") or payload.get("team") or "")
    async with rt.db.read() as session:
        inboxes = list(
            (
                await session.scalars(
                    select(Inbox).where(Inbox.kind == "slack", Inbox.is_active.is_(True))
                )
            ).all()
        )
    # The inbox whose signing secret verifies the request (one per Slack app); prefer the one
    # for this workspace.
    inboxes.sort(key=lambda i: i.address != team)
    timestamp = request.headers.get("x-slack-request-timestamp", "")
    signature = request.headers.get("x-slack-signature", "")
    if not timestamp.isdigit() or not signature:
        raise PermissionDeniedException("missing Slack signature")
    inbox = next(
        (
            i
            for i in inboxes
            if SignatureVerifier(
                str(i.credentials.get("signing_secret", "")), clock=_ClockAdapter(rt.clock)
            ).is_valid(body, timestamp, signature)
        ),
        None,
    )
    if inbox is None:
        raise PermissionDeniedException("invalid or stale Slack signature")
    kind = payload.get("type")
    if kind == "url_verification":
        return Response({"challenge": str(payload.get("challenge", ""))})
    if kind != "event_callback":
        return Response({"ok": True, "ignored": kind})
    event = payload.get("event")
    event_id = payload.get("event_id")
    if not isinstance(event, dict) or not isinstance(event_id, str):
        raise ClientException("malformed Slack event: event and event_id are required")
    if not _is_customer_message(event, inbox):
        return Response({"ok": True, "ignored": True})
    channel, ts = str(event["channel"]), str(event["ts"])
    thread_ts = event.get("thread_ts")
    is_dm = event.get("channel_type") == "im"
    user = f"{team}:{event['user']}" if team else str(event["user"])
    result = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id=inbox.id,
            provider_message_id=event_id,
            sender=IdentityRef.of("slack", user),
            text=str(event.get("text", "")),
            thread_refs=(f"{channel}:{thread_ts}",) if thread_ts and not is_dm else (),
            thread_key=None if is_dm else f"{channel}:{thread_ts or ts}",
            continuous=is_dm,
            extra={
                "slack": {
                    "channel": channel,
                    "ts": ts,
                    "thread_ts": thread_ts,
                    "retry": request.headers.get("x-slack-retry-num"),
                }
            },
        )
    )
    (DUPLICATES if result.duplicate else INGESTED).labels("slack").inc()
    if not result.duplicate:
        await rt.committed()
    return Response({"ok": True})


def _is_customer_message(event: dict[str, Any], inbox: Inbox) -> bool:
    if event.get("type") != "message" or event.get("subtype") in IGNORED_SUBTYPES:
        return False
    own_app = inbox.credentials.get("app_id")
    if event.get("bot_id") or (own_app and event.get("app_id") == own_app):
        return False  # our own (or another app's) message: never a customer
    own_user = inbox.credentials.get("bot_user_id")
    if own_user and event.get("user") == own_user:
        return False
    return bool(event.get("user") and event.get("channel") and event.get("ts"))


class SlackSender:
    async def send(self, message: OutboundMessage) -> SendResult:
        inbox = message.inbox
        token = str(inbox.credentials.get("bot_token", ""))
        if not token:
            raise SendError("the inbox has no Slack bot_token", retryable=False)
        if message.thread_key and ":" in message.thread_key:
            channel, thread_ts = message.thread_key.split(":", 1)
        else:  # a DM: posting to the user's id opens the DM with the app
            channel, thread_ts = message.to_address.split(":")[-1], None
        client = _client(token, inbox.api_base_url)
        try:
            response = await client.chat_postMessage(
                channel=channel, text=message.text, thread_ts=thread_ts
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "unknown"))
            raise SendError(f"Slack refused: {error}", retryable=error in RETRYABLE_ERRORS) from exc
        except (SlackClientError, OSError) as exc:
            raise SendError(f"Slack unreachable: {exc}", retryable=True) from exc
        return SendResult(f"{response['channel']}:{response['ts']}")


class SlackNotifier:
    """Staff notifications (SLA escalations) posted to a channel by the inbox's bot."""

    async def notify(self, inbox: Inbox, to: str, subject: str, text: str) -> None:
        token = str(inbox.credentials.get("bot_token", ""))
        if not token:
            raise SendError("the inbox has no Slack bot_token", retryable=False)
        client = _client(token, inbox.api_base_url)
        try:
            await client.chat_postMessage(channel=to, text=f"*{subject}*\n{text}")
        except SlackApiError as exc:
            error = str(exc.response.get("error", "unknown"))
            raise SendError(f"Slack refused: {error}", retryable=error in RETRYABLE_ERRORS) from exc
        except (SlackClientError, OSError) as exc:
            raise SendError(f"Slack unreachable: {exc}", retryable=True) from exc


route_handlers = [slack_events]
