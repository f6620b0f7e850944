"""Role checks of every REST route under /api/v1.

``ROUTES`` decides, for each (method, path template) the app serves, the least role that may
call it ("public" for no sign-in at all). One test walks the app's real routes and fails when a
route is served without a decided role, or when the table names a route that is gone. The
parametrized test then calls each route without a token, with a bad token, with every role
below the minimum (403), with the minimum role (the handler's success status) and with the
roles above it (not 401/403).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import select

import contact_center.api.auth as api_auth
import contact_center.auth as core_auth
from contact_center.app import create_app
from contact_center.auth import LoginThrottle
from contact_center.ingest import InboundAttachment
from contact_center.models import Agent, Attachment, CannedResponse, Team
from contact_center.runtime import Runtime
from contact_center.settings import Settings
from routing.engine import engine_of
from routing.models import BusinessHours, Offer, Presence, RoutingRule, SlaPolicy
from tests.helpers import Org, Person, ingest, make_inbox, make_org, sms
from tests.routing_helpers import make_queue, make_rule, presence
from tickets.service import create_ticket

API_PREFIX = "/api/v1"
RANKS = {"agent": 1, "supervisor": 2, "admin": 3}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class Ctx:
    """Objects that exist before each route is called, to fill path params and bodies."""

    org: Org
    inbox_id: str
    conversation_id: int
    customer_id: int
    other_customer_id: int
    attachment_id: int
    spare_team_id: int
    queue_id: int
    rule_id: int
    offer_id: int
    other_conversation_id: int
    canned_id: int
    hours_id: int
    policy_id: int
    ticket_id: int

    def person(self, role: str) -> Person:
        return {
            "agent": self.org.agent,
            "supervisor": self.org.supervisor,
            "admin": self.org.admin,
        }[role]


# A request: (concrete path, JSON body or None, status the minimum role gets).
Call = tuple[str, Any, int]


@dataclass(frozen=True)
class Rule:
    role: str  # "public", "agent", "supervisor" or "admin"
    call: Callable[[Ctx], Call]


ROUTES: dict[tuple[str, str], Rule] = {
    # auth
    ("POST", "/api/v1/auth/login"): Rule(
        "public",
        lambda c: (
            "/api/v1/auth/login",
            {"email": "agent@test.local", "password": "password-123"},
            200,
        ),
    ),
    ("POST", "/api/v1/auth/logout"): Rule("agent", lambda c: ("/api/v1/auth/logout", None, 200)),
    ("GET", "/api/v1/auth/me"): Rule("agent", lambda c: ("/api/v1/auth/me", None, 200)),
    ("PATCH", "/api/v1/auth/me"): Rule(
        "agent", lambda c: ("/api/v1/auth/me", {"timezone": "Europe/Istanbul"}, 200)
    ),
    # customers
    ("GET", "/api/v1/customers"): Rule("agent", lambda c: ("/api/v1/customers", None, 200)),
    ("POST", "/api/v1/customers"): Rule(
        "agent",
        lambda c: (
            "/api/v1/customers",
            {"name": "Ann", "identities": [{"kind": "email", "address": "ann@example.com"}]},
            201,
        ),
    ),
    ("GET", "/api/v1/customers/{customer_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/customers/{c.customer_id}", None, 200)
    ),
    ("PATCH", "/api/v1/customers/{customer_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/customers/{c.customer_id}", {"tier": "gold"}, 200)
    ),
    ("POST", "/api/v1/customers/{customer_id:int}/identities"): Rule(
        "agent",
        lambda c: (
            f"/api/v1/customers/{c.customer_id}/identities",
            {"kind": "email", "address": "first@example.com"},
            201,
        ),
    ),
    ("POST", "/api/v1/customers/merge"): Rule(
        "agent",
        lambda c: (
            "/api/v1/customers/merge",
            {"source_id": c.other_customer_id, "target_id": c.customer_id},
            200,
        ),
    ),
    # conversations and attachments
    ("GET", "/api/v1/conversations"): Rule("agent", lambda c: ("/api/v1/conversations", None, 200)),
    ("GET", "/api/v1/conversations/{conversation_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/conversations/{c.conversation_id}", None, 200)
    ),
    ("PATCH", "/api/v1/conversations/{conversation_id:int}"): Rule(
        "agent",
        lambda c: (f"/api/v1/conversations/{c.conversation_id}", {"priority": "high"}, 200),
    ),
    ("POST", "/api/v1/conversations/{conversation_id:int}/read"): Rule(
        "agent", lambda c: (f"/api/v1/conversations/{c.conversation_id}/read", None, 200)
    ),
    ("GET", "/api/v1/conversations/{conversation_id:int}/reply-channels"): Rule(
        "agent", lambda c: (f"/api/v1/conversations/{c.conversation_id}/reply-channels", None, 200)
    ),
    ("GET", "/api/v1/conversations/{conversation_id:int}/messages"): Rule(
        "agent", lambda c: (f"/api/v1/conversations/{c.conversation_id}/messages", None, 200)
    ),
    ("POST", "/api/v1/conversations/{conversation_id:int}/messages"): Rule(
        "agent",
        lambda c: (
            f"/api/v1/conversations/{c.conversation_id}/messages",
            {"text": "We are on it"},
            201,
        ),
    ),
    ("GET", "/api/v1/attachments/{attachment_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/attachments/{c.attachment_id}", None, 200)
    ),
    # inboxes (admin only)
    ("GET", "/api/v1/inboxes"): Rule("admin", lambda c: ("/api/v1/inboxes", None, 200)),
    ("POST", "/api/v1/inboxes"): Rule(
        "admin",
        lambda c: (
            "/api/v1/inboxes",
            {"id": "mail", "name": "Mail", "kind": "email", "address": "help@test.local"},
            201,
        ),
    ),
    ("GET", "/api/v1/inboxes/{inbox_id:str}"): Rule(
        "admin", lambda c: (f"/api/v1/inboxes/{c.inbox_id}", None, 200)
    ),
    ("PATCH", "/api/v1/inboxes/{inbox_id:str}"): Rule(
        "admin", lambda c: (f"/api/v1/inboxes/{c.inbox_id}", {"name": "Texts"}, 200)
    ),
    ("DELETE", "/api/v1/inboxes/{inbox_id:str}"): Rule(
        "admin", lambda c: (f"/api/v1/inboxes/{c.inbox_id}", None, 200)
    ),
    # agents (supervisors read, admins write)
    ("GET", "/api/v1/agents"): Rule("supervisor", lambda c: ("/api/v1/agents", None, 200)),
    ("POST", "/api/v1/agents"): Rule(
        "admin",
        lambda c: (
            "/api/v1/agents",
            {"email": "new@test.local", "name": "New", "password": "long-enough-1"},
            201,
        ),
    ),
    ("GET", "/api/v1/agents/{agent_id:int}"): Rule(
        "supervisor", lambda c: (f"/api/v1/agents/{c.org.other_agent.id}", None, 200)
    ),
    ("PATCH", "/api/v1/agents/{agent_id:int}"): Rule(
        "admin",
        lambda c: (f"/api/v1/agents/{c.org.other_agent.id}", {"name": "Renamed"}, 200),
    ),
    ("POST", "/api/v1/agents/{agent_id:int}/invite"): Rule(
        "admin", lambda c: (f"/api/v1/agents/{c.org.other_agent.id}/invite", None, 201)
    ),
    # canned responses (agents read, supervisors write)
    ("GET", "/api/v1/canned-responses"): Rule(
        "agent", lambda c: ("/api/v1/canned-responses", None, 200)
    ),
    ("POST", "/api/v1/canned-responses"): Rule(
        "supervisor",
        lambda c: (
            "/api/v1/canned-responses",
            {"title": "Hi", "shortcut": "hi", "body": "Hello {{customer.name}}"},
            201,
        ),
    ),
    ("PATCH", "/api/v1/canned-responses/{canned_id:int}"): Rule(
        "supervisor",
        lambda c: (f"/api/v1/canned-responses/{c.canned_id}", {"title": "Thank you"}, 200),
    ),
    ("DELETE", "/api/v1/canned-responses/{canned_id:int}"): Rule(
        "supervisor", lambda c: (f"/api/v1/canned-responses/{c.canned_id}", None, 204)
    ),
    # SLA: business hours and policies (supervisors read, admins write); a conversation's clocks
    ("GET", "/api/v1/business-hours"): Rule(
        "supervisor", lambda c: ("/api/v1/business-hours", None, 200)
    ),
    ("POST", "/api/v1/business-hours"): Rule(
        "admin",
        lambda c: (
            "/api/v1/business-hours",
            {"name": "24/7", "calendar": {"always_open": True}},
            201,
        ),
    ),
    ("GET", "/api/v1/business-hours/{hours_id:int}"): Rule(
        "supervisor", lambda c: (f"/api/v1/business-hours/{c.hours_id}", None, 200)
    ),
    ("PATCH", "/api/v1/business-hours/{hours_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/business-hours/{c.hours_id}", {"name": "Office"}, 200)
    ),
    ("DELETE", "/api/v1/business-hours/{hours_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/business-hours/{c.hours_id}", None, 204)
    ),
    ("GET", "/api/v1/sla-policies"): Rule(
        "supervisor", lambda c: ("/api/v1/sla-policies", None, 200)
    ),
    ("POST", "/api/v1/sla-policies"): Rule(
        "admin",
        lambda c: (
            "/api/v1/sla-policies",
            {"name": "VIP", "targets": {"urgent": {"first_response": {"minutes": 5}}}},
            201,
        ),
    ),
    ("GET", "/api/v1/sla-policies/{policy_id:int}"): Rule(
        "supervisor", lambda c: (f"/api/v1/sla-policies/{c.policy_id}", None, 200)
    ),
    ("PATCH", "/api/v1/sla-policies/{policy_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/sla-policies/{c.policy_id}", {"warn_at": 0.5}, 200)
    ),
    ("DELETE", "/api/v1/sla-policies/{policy_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/sla-policies/{c.policy_id}", None, 204)
    ),
    ("GET", "/api/v1/conversations/{conversation_id:int}/sla"): Rule(
        "agent", lambda c: (f"/api/v1/conversations/{c.conversation_id}/sla", None, 200)
    ),
    # teams (supervisors read, admins write)
    ("GET", "/api/v1/teams"): Rule("supervisor", lambda c: ("/api/v1/teams", None, 200)),
    ("POST", "/api/v1/teams"): Rule(
        "admin", lambda c: ("/api/v1/teams", {"name": "Escalations"}, 201)
    ),
    ("GET", "/api/v1/teams/{team_id:int}"): Rule(
        "supervisor", lambda c: (f"/api/v1/teams/{c.org.billing_team_id}", None, 200)
    ),
    ("PATCH", "/api/v1/teams/{team_id:int}"): Rule(
        "admin",
        lambda c: (f"/api/v1/teams/{c.spare_team_id}", {"description": "Spare seats"}, 200),
    ),
    ("DELETE", "/api/v1/teams/{team_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/teams/{c.spare_team_id}", None, 204)
    ),
    # routing: queues and rules (admins write), presence, offers, assignment, transfer
    ("GET", "/api/v1/queues"): Rule("agent", lambda c: ("/api/v1/queues", None, 200)),
    ("POST", "/api/v1/queues"): Rule(
        "admin", lambda c: ("/api/v1/queues", {"name": "VIP", "priority": 2}, 201)
    ),
    ("GET", "/api/v1/queues/{queue_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/queues/{c.queue_id}", None, 200)
    ),
    ("PATCH", "/api/v1/queues/{queue_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/queues/{c.queue_id}", {"offer_timeout_seconds": 45}, 200)
    ),
    ("DELETE", "/api/v1/queues/{queue_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/queues/{c.queue_id}", None, 204)
    ),
    ("GET", "/api/v1/routing-rules"): Rule(
        "supervisor", lambda c: ("/api/v1/routing-rules", None, 200)
    ),
    ("POST", "/api/v1/routing-rules"): Rule(
        "admin",
        lambda c: ("/api/v1/routing-rules", {"queue_id": c.queue_id, "keywords": ["iade"]}, 201),
    ),
    ("DELETE", "/api/v1/routing-rules/{rule_id:int}"): Rule(
        "admin", lambda c: (f"/api/v1/routing-rules/{c.rule_id}", None, 204)
    ),
    ("GET", "/api/v1/presence"): Rule("supervisor", lambda c: ("/api/v1/presence", None, 200)),
    ("PUT", "/api/v1/agents/{agent_id:int}/presence"): Rule(
        "agent",
        lambda c: (f"/api/v1/agents/{c.org.agent.id}/presence", {"state": "away"}, 200),
    ),
    ("POST", "/api/v1/offers/{offer_id:int}/accept"): Rule(
        "agent", lambda c: (f"/api/v1/offers/{c.offer_id}/accept", None, 200)
    ),
    ("POST", "/api/v1/offers/{offer_id:int}/decline"): Rule(
        "agent", lambda c: (f"/api/v1/offers/{c.offer_id}/decline", None, 200)
    ),
    ("POST", "/api/v1/conversations/{conversation_id:int}/assign"): Rule(
        "supervisor",
        lambda c: (
            f"/api/v1/conversations/{c.other_conversation_id}/assign",
            {"agent_id": c.org.other_agent.id},
            200,
        ),
    ),
    ("POST", "/api/v1/conversations/{conversation_id:int}/transfer"): Rule(
        "agent",
        lambda c: (
            f"/api/v1/conversations/{c.conversation_id}/transfer",
            {"queue_id": c.queue_id, "note": "needs billing"},
            200,
        ),
    ),
    # tickets (every agent; what they see follows tickets.access)
    ("GET", "/api/v1/tickets"): Rule("agent", lambda c: ("/api/v1/tickets", None, 200)),
    ("POST", "/api/v1/tickets"): Rule(
        "agent",
        lambda c: (
            "/api/v1/tickets",
            {"conversation_id": c.conversation_id, "subject": "Charged twice", "type": "complaint"},
            201,
        ),
    ),
    ("GET", "/api/v1/tickets/{ticket_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/tickets/{c.ticket_id}", None, 200)
    ),
    ("PATCH", "/api/v1/tickets/{ticket_id:int}"): Rule(
        "agent", lambda c: (f"/api/v1/tickets/{c.ticket_id}", {"status": "pending"}, 200)
    ),
    # satisfaction surveys (every agent, like the customer directory)
    ("GET", "/api/v1/surveys"): Rule(
        "agent", lambda c: (f"/api/v1/surveys?customer_id={c.customer_id}", None, 200)
    ),
    ("GET", "/api/v1/surveys/summary"): Rule(
        "agent", lambda c: ("/api/v1/surveys/summary?from=2026-01-01&to=2026-02-01", None, 200)
    ),
    # metrics (supervisors and admins)
    ("GET", "/api/v1/metrics"): Rule(
        "supervisor",
        lambda c: ("/api/v1/metrics?from=2026-01-01&to=2026-01-02&group_by=agent", None, 200),
    ),
    ("GET", "/api/v1/metrics.csv"): Rule(
        "supervisor",
        lambda c: ("/api/v1/metrics.csv?from=2026-01-01&to=2026-01-02", None, 200),
    ),
}


def api_routes(app: Litestar) -> set[tuple[str, str]]:
    """(method, path template) of every handler the app serves under /api/v1, leaving out the
    OPTIONS handlers Litestar generates itself."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if route.path != API_PREFIX and not route.path.startswith(API_PREFIX + "/"):
            continue
        if not isinstance(route, HTTPRoute):
            found.add((type(route).__name__.upper(), route.path))
            continue
        for handler in route.route_handlers:
            if handler.fn.__module__.startswith("litestar."):
                continue
            found.update((method, route.path) for method in handler.http_methods)
    return found


@pytest.fixture(autouse=True)
def _fast_and_fresh_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cheap argon2 parameters (same code path) keep the per-test sign-ins fast, and a fresh
    # throttle keeps other tests' failed sign-ins from blocking these.
    monkeypatch.setattr(
        core_auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
    monkeypatch.setattr(api_auth, "throttle", LoginThrottle())


def test_every_api_route_has_a_decided_role(tmp_path: Any) -> None:
    app = create_app(Settings(data_dir=tmp_path), run_scheduler=False)
    served = api_routes(app)
    assert len(served) > 20, served  # the walk itself works
    missing = sorted(served - set(ROUTES))
    assert not missing, f"routes without a decided role in ROUTES: {missing}"
    gone = sorted(set(ROUTES) - served)
    assert not gone, f"ROUTES names routes the app no longer serves: {gone}"


def test_rules_use_known_roles() -> None:
    assert {rule.role for rule in ROUTES.values()} <= {"public", *RANKS}


async def make_ctx(rt: Runtime) -> Ctx:
    org = await make_org(rt)
    inbox_id = await make_inbox(rt)
    first = await ingest(
        rt,
        sms(
            "my bill is wrong, see photo",
            sid="SM1",
            attachments=(InboundAttachment("bill.png", "image/png", PNG),),
        ),
    )
    second = await ingest(rt, sms("hello from my other phone", sid="SM2", phone="+14155550101"))
    async with rt.db.write() as session:
        spare = Team(name="Spare", description="", created_at=rt.clock.now())
        session.add(spare)
        await session.flush()
        spare_id = spare.id
        canned = CannedResponse(
            title="Thanks",
            shortcut="thanks",
            body="Thank you, {{customer.name}}!",
            created_at=rt.clock.now(),
            updated_at=rt.clock.now(),
        )
        session.add(canned)
        now = rt.clock.now()
        hours = BusinessHours(
            name="Weekdays", calendar={"always_open": True}, created_at=now, updated_at=now
        )
        policy = SlaPolicy(
            name="Standard",
            targets={"normal": {"first_response": {"minutes": 30, "business": False}}},
            conditions={},
            escalations=[],
            created_at=now,
            updated_at=now,
        )
        session.add_all([hours, policy])
        await session.flush()
        canned_id, hours_id, policy_id = canned.id, hours.id, policy.id
        attachment_id = await session.scalar(
            select(Attachment.id).where(Attachment.message_id == first.message_id)
        )
    assert attachment_id is not None
    # Routing: a queue and a rule; the agent is available and holds an offer for the first
    # conversation (the second waits: the agent's chat capacity is one).
    queue_id = await make_queue(rt, "Front", is_default=True)
    await make_rule(rt, queue_id, 1, keywords=["bill"])
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        assert agent is not None
        agent.capacity = {"chat": 1}
        rule_id = await session.scalar(select(RoutingRule.id))
    await presence(rt, org.agent.id, Presence.available)
    await engine_of(rt).run_pass()
    async with rt.db.read() as session:
        offer_id = await session.scalar(
            select(Offer.id).where(Offer.conversation_id == first.conversation_id)
        )
    assert rule_id is not None and offer_id is not None
    async with rt.db.write() as session:
        ticket = await create_ticket(
            session, clock=rt.clock, subject="Wrong bill", conversation_id=first.conversation_id
        )
        ticket_id = ticket.id
    return Ctx(
        org=org,
        inbox_id=inbox_id,
        conversation_id=first.conversation_id,
        customer_id=first.customer_id,
        other_customer_id=second.customer_id,
        attachment_id=attachment_id,
        spare_team_id=spare_id,
        queue_id=queue_id,
        rule_id=rule_id,
        offer_id=offer_id,
        other_conversation_id=second.conversation_id,
        canned_id=canned_id,
        hours_id=hours_id,
        policy_id=policy_id,
        ticket_id=ticket_id,
    )


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    # Same-loop ASGI client: Litestar's AsyncTestClient runs the app on another thread's event
    # loop, where the runtime's asyncpg pool (made on the test's loop) cannot be used.
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        yield c


@pytest.mark.parametrize(("method", "template"), sorted(ROUTES), ids=lambda v: str(v))
async def test_route_role(
    rt: Runtime, client: httpx.AsyncClient, method: str, template: str
) -> None:
    rule = ROUTES[(method, template)]
    ctx = await make_ctx(rt)
    path, body, success = rule.call(ctx)

    async def call(headers: dict[str, str] | None) -> int:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            kwargs["json"] = body
        response = await client.request(method, path, **kwargs)
        return response.status_code

    if rule.role == "public":
        assert await call(None) == success
        assert await call({"Authorization": "Bearer not-a-real-token"}) == success
        return

    assert await call(None) == 401
    assert await call({"Authorization": "Bearer not-a-real-token"}) == 401
    assert await call({"Authorization": "Basic YWRtaW46YWRtaW4="}) == 401
    minimum = RANKS[rule.role]
    for role, rank in RANKS.items():
        if rank < minimum:
            assert await call(ctx.person(role).headers) == 403, role
    assert await call(ctx.person(rule.role).headers) == success
    # Higher roles pass the guard too (a repeated write may now be a 404/409, never 401/403).
    for role, rank in RANKS.items():
        if rank > minimum:
            assert await call(ctx.person(role).headers) not in (401, 403), role
