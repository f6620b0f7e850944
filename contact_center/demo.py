"""The demo organisation (deterministic; the README and tests rely on it) and the customer
simulator. Part of the composition root: it is only used by ``contact-center demo``."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from twilio.request_validator import RequestValidator

from contact_center.auth import hash_password
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.models import (
    Agent,
    CannedResponse,
    Conversation,
    CustomerIdentity,
    Inbox,
    Priority,
    Role,
    Team,
    TeamMember,
)
from contact_center.runtime import Runtime
from routing.models import BusinessHours, Queue, RoutingRule, SlaPolicy
from tickets.models import SatisfactionSurvey, SurveyStatus, Ticket, TicketStatus, TicketType
from tickets.service import change_ticket, create_ticket

log = logging.getLogger(__name__)

TWILIO_ACCOUNT = "AC00000000000000000000000000000000"
TWILIO_TOKEN = "demo-twilio-token"  # noqa: S105 - documented demo credential
SMS_NUMBER = "+15005550006"

SKILLS = {
    "ayse@example.com": {"billing": 4},
    "john@example.com": {"technical": 4},
    "elif@example.com": {"technical": 3, "billing": 3},
}

# Queues (name, skills, team, keywords of the rule that sends conversations there); the last
# one is the default for everything else.
QUEUES = [
    (
        "Billing",
        {"billing": 1},
        "Billing",
        ["charged", "refund", "invoice", "bill", "fatura", "iade", "ücret", "ödeme"],
    ),
    (
        "Technical",
        {"technical": 1},
        "Technical",
        ["password", "login", "error", "crash", "şifre", "hata", "giriş"],
    ),
    ("General", {}, None, []),
]

PEOPLE = [
    # email, name, role, password, languages, teams
    ("admin@example.com", "Ada Admin", Role.admin, "demo-admin", ["en"], []),
    (
        "supervisor@example.com",
        "Sam Supervisor",
        Role.supervisor,
        "demo-supervisor",
        ["en", "tr"],
        [],
    ),
    ("ayse@example.com", "Ayşe Yılmaz", Role.agent, "demo-agent", ["tr", "en"], ["Billing"]),
    ("john@example.com", "John Smith", Role.agent, "demo-agent", ["en"], ["Technical"]),
    ("elif@example.com", "Elif Demir", Role.agent, "demo-agent", ["tr"], ["Technical", "Billing"]),
]


def inboxes(public_url: str, smtp_port: int) -> list[dict[str, Any]]:
    """The demo's inboxes. Replies by email go to the sandbox's SMTP relay, which the demo
    runs on the port after its own SMTP server (``smtp_port + 1``) and lists in the outbox."""
    sandbox = f"{public_url}/demo/sandbox"
    meta = {
        "app_secret": "demo-meta-secret",
        "verify_token": "demo-verify-token",
        "page_access_token": "demo-page-token",
    }
    twilio = {"account_sid": TWILIO_ACCOUNT, "auth_token": TWILIO_TOKEN}
    return [
        {
            "id": "email",
            "name": "Support email",
            "kind": "email",
            "address": "support@example.com",
            "credentials": {"smtp_host": "127.0.0.1", "smtp_port": smtp_port + 1},
            "api_base_url": None,
        },
        {
            "id": "sms",
            "name": "SMS",
            "kind": "sms",
            "address": SMS_NUMBER,
            "credentials": twilio,
            "api_base_url": f"{sandbox}/twilio",
        },
        {
            "id": "whatsapp",
            "name": "WhatsApp",
            "kind": "whatsapp",
            "address": "whatsapp:+15005550007",
            "credentials": twilio,
            "api_base_url": f"{sandbox}/twilio",
        },
        {
            "id": "voice",
            "name": "Phone",
            "kind": "voice",
            "address": "+15005550008",
            "credentials": twilio,
            "api_base_url": f"{sandbox}/twilio",
        },
        {
            "id": "telegram",
            "name": "Telegram",
            "kind": "telegram",
            "address": "demo_bot",
            "credentials": {"secret_token": "demo-telegram-secret", "bot_token": "123456:demo"},
            "api_base_url": f"{sandbox}/telegram",
        },
        {
            "id": "slack",
            "name": "Slack",
            "kind": "slack",
            "address": "T0DEMO",
            "credentials": {"signing_secret": "demo-slack-secret", "bot_token": "xoxb-demo"},
            "api_base_url": f"{sandbox}/slack/api/",
        },
        {
            "id": "meta",
            "name": "Messenger",
            "kind": "messenger",
            "address": "demo-page",
            "credentials": meta,
            "api_base_url": f"{sandbox}/meta",
        },
        {
            # Webhooks with "object": "instagram" find their inbox by kind and account id.
            "id": "instagram",
            "name": "Instagram",
            "kind": "instagram",
            "address": "demo-instagram",
            "credentials": meta,
            "api_base_url": f"{sandbox}/meta",
        },
        {
            "id": "webchat",
            "name": "Web chat",
            "kind": "webchat",
            "address": "demo-widget",
            "credentials": {},
            "api_base_url": None,
        },
    ]


CUSTOMERS = [
    ("+905321112233", "Mehmet Kaya", "Merhaba, faturamda iki kez ücret alınmış görünüyor."),
    ("+14155550123", "Jane Doe", "Hi, my router keeps dropping the connection every hour."),
    ("+447700900123", "Oliver Brown", "Can I change the date of my next payment?"),
]


async def seed(rt: Runtime) -> bool:
    """Create the demo organisation unless it exists, and its tickets unless they exist.
    Returns whether the organisation was created."""
    created = await seed_organisation(rt)
    await seed_tickets(rt)
    return created


async def seed_organisation(rt: Runtime) -> bool:
    now = rt.clock.now()
    async with rt.db.write() as session:
        if await session.scalar(select(Agent.id).where(Agent.email == "admin@example.com")):
            # A demo database from an earlier version: add the inboxes it lacks.
            have = {i.id: i for i in (await session.scalars(select(Inbox))).all()}
            for spec in inboxes(rt.settings.public_url, rt.settings.smtp_port):
                if spec["id"] not in have:
                    session.add(Inbox(**spec, settings={}, is_active=True, created_at=now))
                elif spec["id"] == "email" and not (have["email"].credentials or {}):
                    have["email"].credentials = spec["credentials"]  # was seeded without
            return False
        teams = {
            name: Team(name=name, description=f"{name} questions", created_at=now)
            for name in ("Billing", "Technical")
        }
        session.add_all(teams.values())
        await session.flush()
        for email, name, role, password, languages, team_names in PEOPLE:
            agent = Agent(
                email=email,
                name=name,
                role=role.value,
                password_hash=hash_password(password),
                languages=languages,
                timezone="Europe/Istanbul",
                locale=languages[0],
                skills=SKILLS.get(email, {}),
                capacity={"chat": 3, "email": 8, "voice": 1},
                is_active=True,
                created_at=now,
            )
            session.add(agent)
            await session.flush()
            session.add_all(TeamMember(team_id=teams[t].id, agent_id=agent.id) for t in team_names)
        for spec in inboxes(rt.settings.public_url, rt.settings.smtp_port):
            session.add(Inbox(**spec, settings={}, is_active=True, created_at=now))
        for position, (name, skills, team, keywords) in enumerate(QUEUES, start=1):
            queue = Queue(
                name=name,
                priority=0,
                skills=skills,
                team_id=teams[team].id if team else None,
                strategy="longest_idle",
                offer_timeout_seconds=30,
                auto_accept=[],
                overflow=[{"after_seconds": 120, "action": "drop_skills"}] if skills else [],
                sticky_seconds=300,
                requeue_on_disconnect=True,
                is_default=not keywords,
                created_at=now,
            )
            session.add(queue)
            await session.flush()
            if keywords:
                session.add(
                    RoutingRule(
                        position=position,
                        name=f"{name} keywords",
                        queue_id=queue.id,
                        conditions={"keywords": keywords},
                        created_at=now,
                    )
                )
        session.add_all(
            CannedResponse(
                title=title, shortcut=shortcut, body=body, created_at=now, updated_at=now
            )
            for title, shortcut, body in CANNED
        )
        await seed_sla(session, now)
    for i, (phone, name, text) in enumerate(CUSTOMERS):
        await rt.ingestor.ingest(
            InboundMessage(
                inbox_id="sms",
                provider_message_id=f"SMdemo{i:030d}",
                sender=IdentityRef.of("phone", phone, name),
                text=text,
            )
        )
    await rt.committed()
    return True


# Tickets of the demo customers (docs/architecture.md §16): (phone, subject, type, status,
# priority, assignee, tags, the customer's rating and comment).
TICKETS: list[tuple[str, str, TicketType, TicketStatus, Priority, str, list[str], Any]] = [
    (
        "+905321112233",
        "Charged twice for the March invoice",
        TicketType.complaint,
        TicketStatus.solved,
        Priority.high,
        "ayse@example.com",
        ["billing", "refund"],
        (4, "İade hızlı geldi, teşekkürler."),
    ),
    (
        "+14155550123",
        "Router drops the connection every hour",
        TicketType.incident,
        TicketStatus.open,
        Priority.normal,
        "john@example.com",
        ["router"],
        None,
    ),
]


async def seed_tickets(rt: Runtime) -> int:
    """The demo customers' tickets, each raised from their conversation unless the customer
    already has a ticket of that subject (so a demo database of any age gets them once).
    The solved complaint carries the customer's answered survey. Returns tickets created."""
    made = 0
    now = rt.clock.now()
    async with rt.db.write() as session:
        for phone, subject, kind, status, priority, email, tags, rating in TICKETS:
            customer_id = await session.scalar(
                select(CustomerIdentity.customer_id).where(
                    CustomerIdentity.kind == "phone", CustomerIdentity.address == phone
                )
            )
            conversation_id = await session.scalar(
                select(Conversation.id)
                .where(Conversation.customer_id == customer_id)
                .order_by(Conversation.id)
                .limit(1)
            )
            agent_id = await session.scalar(select(Agent.id).where(Agent.email == email))
            if customer_id is None or conversation_id is None or agent_id is None:
                continue
            exists = await session.scalar(
                select(Ticket.id).where(
                    Ticket.customer_id == customer_id, Ticket.subject == subject
                )
            )
            if exists is not None:
                continue
            ticket = await create_ticket(
                session,
                clock=rt.clock,
                subject=subject,
                conversation_id=conversation_id,
                type=kind,
                priority=priority,
                assignee_id=agent_id,
                tags=tags,
                acting_agent_id=agent_id,
            )
            if status != ticket.status:
                await change_ticket(
                    session, ticket, clock=rt.clock, acting_agent_id=agent_id, status=status
                )
            if rating is not None:
                # Answered already: the survey job finds it and sends nothing (one per ticket).
                score, comment = rating
                session.add(
                    SatisfactionSurvey(
                        ticket_id=ticket.id,
                        customer_id=ticket.customer_id,
                        agent_id=agent_id,
                        conversation_id=conversation_id,
                        inbox_id="sms",
                        token=secrets.token_urlsafe(32),
                        language="tr" if phone.startswith("+90") else "en",
                        status=SurveyStatus.answered.value,
                        score=score,
                        comment=comment,
                        created_at=now,
                        answered_at=now,
                        expires_at=now + timedelta(days=7),
                    )
                )
            made += 1
    if made:
        await rt.committed()
    return made


# Business hours and SLA policies (docs/architecture.md §14): urgent conversations on the
# clock around the clock, the rest on the Istanbul office's hours with Turkey's holidays.
OFFICE_HOURS = {
    "timezone": "Europe/Istanbul",
    "weekly": {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
    "holidays": {"country": "TR"},
}


def _targets(first: int, nxt: int, update: int, resolution: int, business: bool) -> dict[str, Any]:
    return {
        "first_response": {"minutes": first, "business": business},
        "next_response": {"minutes": nxt, "business": business},
        "periodic_update": {"minutes": update, "business": business},
        "resolution": {"minutes": resolution, "business": business},
    }


async def seed_sla(session: AsyncSession, now: datetime) -> None:
    office = BusinessHours(
        name="Istanbul office", calendar=OFFICE_HOURS, created_at=now, updated_at=now
    )
    session.add(office)
    await session.flush()
    breach_to_slack = {
        "on": "breach",
        "action": "slack",
        "inbox_id": "slack",
        "channel": "C-SUPERVISORS",
    }
    session.add_all(
        [
            SlaPolicy(
                name="Urgent, around the clock",
                position=1,
                active=True,
                conditions={"priorities": ["urgent"]},
                targets={"urgent": _targets(15, 30, 60, 8 * 60, business=False)},
                warn_at=0.8,
                escalations=[breach_to_slack],
                created_at=now,
                updated_at=now,
            ),
            SlaPolicy(
                name="Standard",
                position=2,
                active=True,
                conditions={},
                targets={
                    "high": _targets(30, 60, 120, 8 * 60, business=True),
                    "normal": _targets(60, 120, 240, 24 * 60, business=True),
                    "low": _targets(240, 480, 480, 3 * 24 * 60, business=True),
                },
                business_hours_id=office.id,
                warn_at=0.8,
                escalations=[{"on": "breach", "action": "raise_priority"}, breach_to_slack],
                created_at=now,
                updated_at=now,
            ),
        ]
    )


CANNED = [
    (
        "Greeting",
        "hello",
        "Hello {{customer.name}}, this is {{agent.name}}. How can I help you today?",
    ),
    (
        "Selamlama",
        "merhaba",
        "Merhaba {{customer.name}}, ben {{agent.name}}. Size nasıl yardımcı olabilirim?",
    ),
]

SIMULATED = [
    "Hello? Is anyone there?",
    "My order hasn't arrived yet.",
    "Şifremi sıfırlayamıyorum, yardım eder misiniz?",
    "I was charged twice this month.",
    "Kargom nerede?",
    "Thanks, that fixed it!",
]


async def simulate_customers(public_url: str, stop: asyncio.Event, every: float = 30.0) -> None:
    """Post signed Twilio webhooks to the running demo, as a customer would by SMS."""
    rng = random.Random(7)
    url = f"{public_url}/webhooks/twilio/messages"
    validator = RequestValidator(TWILIO_TOKEN)
    n = 0
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
                return
            except TimeoutError:
                pass
            n += 1
            phone, name, _ = rng.choice(CUSTOMERS)
            params = {
                "MessageSid": f"SMsim{n:08d}{rng.getrandbits(64):016x}",
                "AccountSid": TWILIO_ACCOUNT,
                "From": phone,
                "To": SMS_NUMBER,
                "Body": rng.choice(SIMULATED),
                "NumMedia": "0",
                "ProfileName": name,
            }
            signature = validator.compute_signature(url, params)
            try:
                await client.post(url, data=params, headers={"X-Twilio-Signature": signature})
            except httpx.HTTPError as exc:
                log.warning("customer simulator could not post: %s", exc)
