"""The one JSON shape of each core object, shared by the REST API, events and websockets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contact_center.models import (
    Agent,
    Attachment,
    Conversation,
    Customer,
    CustomerIdentity,
    Inbox,
    Message,
    Priority,
    Team,
)


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def attachment_view(att: Attachment) -> dict[str, Any]:
    return {
        "id": att.id,
        "filename": att.filename,
        "content_type": att.content_type,
        "size": att.size,
        "url": f"/api/v1/attachments/{att.id}",
    }


def message_view(
    msg: Message, channel: str, attachments: list[Attachment] | None = None
) -> dict[str, Any]:
    return {
        "id": msg.id,
        "conversation_id": msg.conversation_id,
        "inbox_id": msg.inbox_id,
        "channel": channel,
        "direction": msg.direction,
        "author_type": msg.author_type,
        "agent_id": msg.agent_id,
        "customer_id": msg.customer_id,
        "private": msg.private,
        "text": msg.text,
        "html": msg.html,
        # Email: the history under the new text, for the console to fold (channels/email_quotes).
        "quoted_text": (msg.extra or {}).get("quoted_text"),
        # Web chat: the pre-chat email the visitor gave, and whether the site vouched for it.
        "identified_email": (msg.extra or {}).get("identified_email"),
        "email_verified": (msg.extra or {}).get("email_verified"),
        "subject": msg.subject,
        "delivery_status": msg.delivery_status,
        "status_reason": msg.status_reason,
        "provider_message_id": msg.provider_message_id,
        "client_id": msg.client_id,
        "to_address": msg.to_address,
        "attachments": [attachment_view(a) for a in (attachments or [])],
        # Telegram: an edit is stored as a new message naming the message it changes.
        "edited_of": (msg.extra or {}).get("edited_of"),
        "created_at": ts(msg.created_at),
        "sent_at": ts(msg.sent_at),
    }


def conversation_view(conv: Conversation, channel: str | None = None) -> dict[str, Any]:
    return {
        "id": conv.id,
        "inbox_id": conv.inbox_id,
        "channel": channel,
        "customer_id": conv.customer_id,
        "status": conv.status,
        "priority": Priority(conv.priority).name,
        "subject": conv.subject,
        "language": conv.language,
        "assignee_id": conv.assignee_id,
        "team_id": conv.team_id,
        "created_at": ts(conv.created_at),
        "updated_at": ts(conv.updated_at),
        "last_message_at": ts(conv.last_message_at),
        "resolved_at": ts(conv.resolved_at),
    }


def identity_view(identity: CustomerIdentity) -> dict[str, Any]:
    return {
        "id": identity.id,
        "kind": identity.kind,
        "address": identity.address,
        "display_name": identity.display_name,
        # A web chat visitor linked by a pre-chat email: {"email", "email_verified"}.
        "extra": identity.extra or {},
    }


def customer_view(
    customer: Customer, identities: list[CustomerIdentity] | None = None
) -> dict[str, Any]:
    return {
        "id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "phone": customer.phone,
        "locale": customer.locale,
        "tier": customer.tier,
        "attributes": customer.attributes,
        "merged_into_id": customer.merged_into_id,
        "identities": [identity_view(i) for i in (identities or [])],
        "created_at": ts(customer.created_at),
        "updated_at": ts(customer.updated_at),
    }


def agent_view(agent: Agent, team_ids: list[int] | None = None) -> dict[str, Any]:
    return {
        "id": agent.id,
        "email": agent.email,
        "name": agent.name,
        "role": agent.role,
        "languages": agent.languages,
        "timezone": agent.timezone,
        "locale": agent.locale,
        "is_active": agent.is_active,
        "skills": agent.skills,
        "capacity": agent.capacity,
        "voice_blocks_chat": agent.voice_blocks_chat,
        "team_ids": team_ids if team_ids is not None else [t.id for t in agent.teams],
    }


def team_view(team: Team, member_ids: list[int] | None = None) -> dict[str, Any]:
    return {
        "id": team.id,
        "name": team.name,
        "description": team.description,
        "member_ids": member_ids if member_ids is not None else [m.id for m in team.members],
    }


SECRET_MASK = "********"  # noqa: S105


def inbox_view(inbox: Inbox) -> dict[str, Any]:
    """Credentials are never returned: their names are, their values masked."""
    return {
        "id": inbox.id,
        "name": inbox.name,
        "kind": inbox.kind,
        "address": inbox.address,
        "credentials": dict.fromkeys(inbox.credentials, SECRET_MASK),
        "api_base_url": inbox.api_base_url,
        "settings": inbox.settings,
        "team_id": inbox.team_id,
        "is_active": inbox.is_active,
        "created_at": ts(inbox.created_at),
    }
