"""The web chat's offline form: when the inbox is closed (its business hours), the widget
shows a form (name, email, message) instead of the live chat and posts it here.

``POST /webchat/offline?inbox=<id>`` with a form-encoded (what the widget sends: a simple
request, so no CORS preflight) or JSON body: ``client_id`` (chosen by the widget, 1-64
characters: a double submit is one message), ``name``, ``email``, ``message`` and optionally
``visitor`` (the widget's visitor token). 201 with ``{message_id, conversation_id, duplicate,
next_open}``; 400 with ``extra.field`` naming the bad field; 403 for an origin outside the
inbox's ``allowed_origins``; 404 for an unknown inbox.

The message goes through the normal ingest path with the customer's **email** identity, so a
later email or chat from that address joins the same customer. With a valid visitor token the
visitor and the email are tied together where that exposes nobody's history: the email is added
to the visitor's customer only if no one has it yet, and the visitor's chat identity is added to
the email's customer only if the visitor has none and that customer began with this message.
A message sent with a visitor token opens (or continues) that visitor's own conversation, so the
widget shows the visitor what they wrote and the answer, and nothing another visitor wrote.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from litestar import Request, Response, post
from litestar.exceptions import ClientException, NotFoundException, PermissionDeniedException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromQuery
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from channels.webchat import (
    MAX_TEXT,
    VISITOR_SCOPE,
    availability,
    find_inbox,
    origin_allowed,
    visitor_from,
)
from channels.webhooks import WEBHOOK_MAX_BODY, runtime_of
from contact_center.customers import find_by_identity
from contact_center.identities import IdentityRef, InvalidIdentity
from contact_center.ingest import InboundMessage, IngestResult
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import Customer, CustomerIdentity, IdentityKind, Inbox, Message
from contact_center.runtime import Runtime

MAX_NAME = 200
MAX_EMAIL = 254


def _bad(field: str, problem: str) -> ClientException:
    return ClientException(f"{field}: {problem}", extra={"field": field})


async def _fields(request: Request[Any, Any, Any]) -> dict[str, Any]:
    if (request.headers.get("content-type") or "").startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ClientException("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ClientException("the body must be a JSON object")
        return body
    return dict((await request.form()).items())


def _text(fields: dict[str, Any], name: str, limit: int) -> str:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _bad(name, "required")
    if not isinstance(value, str):
        raise _bad(name, "must be text")
    value = value.strip()
    if len(value) > limit:
        raise _bad(name, f"at most {limit} characters")
    return value


def _cors(inbox_origins: list[str], origin: str | None) -> dict[str, str]:
    """Let the widget on the customer's site read the answer (a form post needs no preflight)."""
    if not inbox_origins:
        return {"Access-Control-Allow-Origin": "*"}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}


@post(
    "/webchat/offline",
    tags=["webhooks"],
    status_code=201,
    request_max_body_size=WEBHOOK_MAX_BODY,  # a form of four short fields
)
async def offline_message(
    request: Request[Any, Any, Any], inbox: FromQuery[str]
) -> Response[dict[str, Any]]:
    """A message left through the widget's offline form (see the module docstring)."""
    rt = runtime_of(request)
    row = await find_inbox(rt, inbox)
    if row is None:
        raise NotFoundException("unknown web chat inbox")
    origin = request.headers.get("origin")
    if origin is not None and not origin_allowed(row, origin):
        raise PermissionDeniedException("origin not allowed for this inbox")
    cors = _cors(list(row.settings.get("allowed_origins") or []), origin)
    try:
        answer = await _accept(rt, row, await _fields(request))
    except RequestEntityTooLarge:
        return Response(
            {
                "status_code": 413,
                "detail": f"request body too large: at most {WEBHOOK_MAX_BODY} bytes here",
            },
            status_code=413,
            headers=cors,
        )
    except ClientException as exc:
        # An error the widget on the customer's site must be able to read: with CORS headers.
        return Response(
            {"status_code": exc.status_code, "detail": exc.detail, "extra": exc.extra},
            status_code=exc.status_code,
            headers=cors,
        )
    return Response(answer, status_code=201, headers=cors)


async def _accept(rt: Runtime, row: Inbox, fields: dict[str, Any]) -> dict[str, Any]:
    client_id = _text(fields, "client_id", 64)
    name = _text(fields, "name", MAX_NAME)
    email = _text(fields, "email", MAX_EMAIL)
    text = _text(fields, "message", MAX_TEXT)
    try:
        sender = IdentityRef.of("email", email, name)
    except InvalidIdentity:
        raise _bad("email", "that email address does not look right") from None
    visitor = fields.get("visitor")
    visitor_id = (
        visitor_from(rt.settings.derive_key("visitor-token"), row.id, visitor)
        if isinstance(visitor, str)
        else None
    )
    visitor_ref = IdentityRef.of("webchat", visitor_id) if visitor_id else None
    if visitor_ref is not None:
        await _email_to_visitor(rt, visitor_ref, sender)
    key = hashlib.sha256(f"{sender.address}\n{client_id}".encode()).hexdigest()[:40]
    result = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id=row.id,
            provider_message_id=f"offline:{key}",
            sender=sender,
            text=text,
            # With a visitor token the conversation is this visitor's (the widget shows it to
            # them, and it never continues another visitor's conversation of that customer).
            thread_key=f"{VISITOR_SCOPE}{visitor_id}" if visitor_id else None,
            scoped=visitor_id is not None,
            extra={
                "client_id": client_id,
                "offline_form": True,
                "identified_email": sender.address,
                "email_verified": False,
            },
        )
    )
    (DUPLICATES if result.duplicate else INGESTED).labels("webchat").inc()
    if not result.duplicate:
        await rt.committed()
    if visitor_ref is not None:
        await _visitor_to_customer(rt, visitor_ref, result)
    return {
        "message_id": result.message_id,
        "conversation_id": result.conversation_id,
        "duplicate": result.duplicate,
        "next_open": availability(row, rt.clock.now())["next_open"],
    }


async def _add_identity(rt: Runtime, customer_id: int, ref: IdentityRef) -> None:
    try:
        async with rt.db.write() as session:
            session.add(
                CustomerIdentity(
                    customer_id=customer_id,
                    kind=ref.kind,
                    address=ref.address,
                    display_name=ref.display_name,
                    created_at=rt.clock.now(),
                )
            )
            customer = await session.get(Customer, customer_id)
            if customer is not None and ref.kind == IdentityKind.email:
                customer.email = customer.email or ref.address
                customer.name = customer.name or (ref.display_name or "")
    except IntegrityError:
        pass  # someone took the address meanwhile: leave it with them


async def _email_to_visitor(rt: Runtime, visitor: IdentityRef, email: IdentityRef) -> None:
    """A visitor who chatted before leaves a message: their unclaimed email joins them."""
    async with rt.db.read() as session:
        mine = await find_by_identity(session, visitor)
        owner = await find_by_identity(session, email)
    if mine is not None and owner is None:
        await _add_identity(rt, mine.id, email)


async def _visitor_to_customer(rt: Runtime, visitor: IdentityRef, result: IngestResult) -> None:
    """A new visitor's chat joins the email's customer when that customer began with this very
    message (so the widget shows the visitor only what they wrote, and the agent's reply)."""
    async with rt.db.read() as session:
        if await find_by_identity(session, visitor) is not None:
            return
        first = await session.scalar(
            select(func.min(Message.id)).where(Message.customer_id == result.customer_id)
        )
    if first == result.message_id:
        await _add_identity(rt, result.customer_id, visitor)


route_handlers = [offline_message]
