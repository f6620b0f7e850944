"""Conversation actions that are not messages: status and priority changes."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.clock import Clock
from contact_center.customers import active_key
from contact_center.models import Conversation, ConversationStatus, Inbox, Priority
from contact_center.views import conversation_view


class ConversationError(ValueError):
    pass


async def change_conversation(
    session: AsyncSession,
    conversation: Conversation,
    *,
    clock: Clock,
    acting_agent_id: int | None,
    status: ConversationStatus | None = None,
    priority: Priority | None = None,
) -> bool:
    """Apply a status and/or priority change and append ``conversation.updated``.

    Resolving releases the conversation's active key (the customer's next chat message opens a
    new conversation); reopening takes the key back if no newer conversation holds it.
    """
    changed: dict[str, object] = {}
    now = clock.now()
    if status is not None and status != conversation.status:
        previous = ConversationStatus(conversation.status)
        conversation.status = status.value
        if status == ConversationStatus.resolved:
            conversation.resolved_at = now
            conversation.active_key = None
        elif previous == ConversationStatus.resolved:
            conversation.resolved_at = None
            inbox = await session.get(Inbox, conversation.inbox_id)
            if inbox is not None and inbox.kind != "email":
                scope = conversation.thread_key if inbox.kind == "webchat" else None
                key = active_key(conversation.inbox_id, conversation.customer_id, scope)
                holder = await session.scalar(
                    select(Conversation.id).where(Conversation.active_key == key)
                )
                if holder is not None:
                    raise ConversationError(
                        f"the customer has another active conversation (#{holder}) in this inbox"
                    )
                conversation.active_key = key
        changed["status"] = {"from": previous.value, "to": status.value}
    if priority is not None and priority != conversation.priority:
        changed["priority"] = {"from": Priority(conversation.priority).name, "to": priority.name}
        conversation.priority = priority.value
    if not changed:
        return False
    conversation.updated_at = now
    await session.flush()
    events.append(
        session,
        "conversation.updated",
        {**conversation_view(conversation), "changes": changed, "by_agent_id": acting_agent_id},
        clock=clock,
        conversation_id=conversation.id,
        customer_id=conversation.customer_id,
        agent_id=acting_agent_id,
    )
    return True
