"""Customers and their identities: resolution (merge-aware) and merging."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.clock import Clock
from contact_center.identities import PHONE_FAMILY, IdentityRef
from contact_center.models import Conversation, Customer, CustomerIdentity, IdentityKind, Message
from contact_center.views import customer_view

MAX_MERGE_CHAIN = 32


def active_key(inbox_id: str, customer_id: int, scope: str | None = None) -> str:
    """The key that keeps one active chat-like conversation per (inbox, customer), or per
    (inbox, scope, customer) where one customer talks from several independent places (each
    web chat visitor: ``scope`` is the conversation's thread key, "visitor:<id>")."""
    if scope:
        return f"{inbox_id}:{scope}:{customer_id}"
    return f"{inbox_id}:{customer_id}"


def rekey(key: str, customer_id: int) -> str:
    """An active key moved to another customer, keeping its inbox and scope."""
    return f"{key.rsplit(':', 1)[0]}:{customer_id}"


class MergeError(ValueError):
    pass


async def follow_merges(session: AsyncSession, customer: Customer) -> Customer:
    """The customer that now stands for ``customer`` (merged customers point to the survivor)."""
    seen = 0
    while customer.merged_into_id is not None and seen < MAX_MERGE_CHAIN:
        target = await session.get(Customer, customer.merged_into_id)
        if target is None:
            break
        customer = target
        seen += 1
    return customer


async def _identity_rows(session: AsyncSession, ref: IdentityRef) -> list[CustomerIdentity]:
    """Identities with this address, of this kind or its family; the exact kind first."""
    kinds = sorted(PHONE_FAMILY) if ref.kind in PHONE_FAMILY else [ref.kind]
    rows = (
        await session.execute(
            select(CustomerIdentity).where(
                CustomerIdentity.kind.in_(kinds), CustomerIdentity.address == ref.address
            )
        )
    ).scalars()
    return sorted(rows, key=lambda i: (i.kind != ref.kind, i.id))


async def find_by_identity(session: AsyncSession, ref: IdentityRef) -> Customer | None:
    rows = await _identity_rows(session, ref)
    if not rows:
        return None
    customer = await session.get(Customer, rows[0].customer_id)
    assert customer is not None
    return await follow_merges(session, customer)


async def resolve_customer(
    session: AsyncSession, ref: IdentityRef, *, clock: Clock
) -> tuple[Customer, bool]:
    """Find the customer behind an identity, creating customer and identity as needed.

    Two concurrent first messages from one new address race on the identity's unique key;
    the loser's transaction fails with IntegrityError and the caller retries it.
    """
    rows = await _identity_rows(session, ref)
    customer = None
    if rows:
        customer = await session.get(Customer, rows[0].customer_id)
        assert customer is not None
        customer = await follow_merges(session, customer)
    now = clock.now()
    created = False
    if customer is None:
        customer = Customer(
            name=ref.display_name or "",
            email=ref.address if ref.kind == IdentityKind.email else None,
            phone=ref.address if ref.kind in PHONE_FAMILY else None,
            attributes={},
            created_at=now,
            updated_at=now,
        )
        session.add(customer)
        await session.flush()
        created = True
        events.append(
            session,
            "customer.created",
            customer_view(customer),
            clock=clock,
            customer_id=customer.id,
        )
    if not rows or rows[0].kind != ref.kind:
        session.add(
            CustomerIdentity(
                customer_id=customer.id,
                kind=ref.kind,
                address=ref.address,
                display_name=ref.display_name,
                created_at=now,
            )
        )
        await session.flush()
    if not customer.name and ref.display_name:
        customer.name = ref.display_name
        customer.updated_at = now
    return customer, created


async def merge_customers(
    session: AsyncSession,
    *,
    source_id: int,
    target_id: int,
    clock: Clock,
    acting_agent_id: int | None,
) -> Customer:
    """Fold ``source`` into ``target``: identities, conversations and messages move over,
    and ``source`` keeps pointing at ``target`` so later lookups land on the survivor."""
    if source_id == target_id:
        raise MergeError("a customer cannot be merged into itself")
    source = await session.get(Customer, source_id, with_for_update=True)
    target = await session.get(Customer, target_id, with_for_update=True)
    if source is None or target is None:
        raise LookupError("customer not found")
    if source.merged_into_id is not None:
        raise MergeError(f"customer {source_id} was already merged")
    if target.merged_into_id is not None:
        raise MergeError(f"customer {target_id} was merged into {target.merged_into_id}")
    now = clock.now()
    await session.execute(
        update(CustomerIdentity)
        .where(CustomerIdentity.customer_id == source.id)
        .values(customer_id=target.id)
    )
    # The survivor keeps its own active conversation per inbox; a source's active conversation
    # takes over only in inboxes where the survivor has none (else it stays open as history).
    moved = (
        await session.execute(select(Conversation).where(Conversation.customer_id == source.id))
    ).scalars()
    for conversation in moved:
        conversation.customer_id = target.id
        if conversation.active_key is not None:
            key = rekey(conversation.active_key, target.id)
            conversation.active_key = None
            await session.flush()
            taken = await session.scalar(
                select(Conversation.id).where(Conversation.active_key == key)
            )
            if taken is None:
                conversation.active_key = key
    await session.flush()
    await session.execute(
        update(Message).where(Message.customer_id == source.id).values(customer_id=target.id)
    )
    for field in ("email", "phone", "locale"):
        if getattr(target, field) is None and getattr(source, field) is not None:
            setattr(target, field, getattr(source, field))
    if not target.name:
        target.name = source.name
    target.attributes = {**source.attributes, **target.attributes}
    target.updated_at = now
    source.merged_into_id = target.id
    source.updated_at = now
    await session.flush()
    events.append(
        session,
        "customer.merged",
        {"source_id": source.id, "target_id": target.id, "by_agent_id": acting_agent_id},
        clock=clock,
        customer_id=target.id,
    )
    return target
