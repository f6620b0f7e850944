"""The REST API as users rely on it: sign-in, customers, conversations, replies, admin CRUD,
health endpoints and attachment downloads. Role checks of every route: test_api_roles.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select, update
from twilio.request_validator import RequestValidator

import contact_center.api.auth as api_auth
import contact_center.auth as core_auth
from contact_center.app import create_app
from contact_center.auth import LoginThrottle
from contact_center.clock import ManualClock
from contact_center.ingest import InboundAttachment, IngestResult
from contact_center.models import Agent, Conversation, Customer, Inbox, Message, RelayState
from contact_center.runtime import Runtime
from contact_center.views import SECRET_MASK
from tests.helpers import TWILIO_TOKEN, Org, Person, ingest, make_inbox, make_org, sms

PASSWORD = "password-123"  # make_org's password for everyone
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


@pytest.fixture(autouse=True)
def _fast_and_fresh_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cheap argon2 parameters (same code path) keep sign-ins fast; a fresh login throttle per
    # test keeps failed sign-ins of one test from blocking another.
    monkeypatch.setattr(
        core_auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
    monkeypatch.setattr(api_auth, "throttle", LoginThrottle())


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    # Same-loop ASGI client: Litestar's AsyncTestClient runs the app on another thread's event
    # loop, where the runtime's asyncpg pool (made on the test's loop) cannot be used.
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        yield c


@pytest.fixture
async def org(rt: Runtime) -> Org:
    return await make_org(rt)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get("/api/v1/auth/me", headers=headers)


async def count(rt: Runtime, model: type, *where: Any) -> int:
    async with rt.db.read() as session:
        query = select(func.count()).select_from(model)
        for clause in where:
            query = query.where(clause)
        return int(await session.scalar(query) or 0)


async def conversation_ids(client: httpx.AsyncClient, person: Person, **params: Any) -> list[int]:
    response = await client.get("/api/v1/conversations", params=params, headers=person.headers)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["items"]]


# --- sign-in ------------------------------------------------------------------------------


async def test_login_gives_a_token_that_works(client: httpx.AsyncClient, org: Org) -> None:
    response = await login(client, "  Agent@Test.Local ")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent"]["email"] == "agent@test.local"
    token = body["token"]
    assert token not in (org.agent.token, "")
    mine = await me(client, bearer(token))
    assert mine.status_code == 200
    assert mine.json()["id"] == org.agent.id
    assert mine.json()["role"] == "agent"
    assert mine.json()["team_ids"] == [org.billing_team_id]


async def test_login_refuses_wrong_password_and_unknown_email(
    client: httpx.AsyncClient, org: Org
) -> None:
    wrong = await login(client, "agent@test.local", "password-124")
    assert wrong.status_code == 401
    assert "token" not in wrong.json()
    unknown = await login(client, "nobody@test.local")
    assert unknown.status_code == 401
    assert "token" not in unknown.json()


async def test_login_is_throttled_after_ten_failures(client: httpx.AsyncClient, org: Org) -> None:
    for _ in range(10):
        assert (await login(client, "agent@test.local", "wrong-password")).status_code == 401
    # Blocked now, even with the right password.
    assert (await login(client, "agent@test.local")).status_code == 429


async def test_the_login_throttle_is_shared_by_every_web_process_through_redis(
    rt: Runtime, backend: str
) -> None:
    """Two throttles stand for two web processes behind a load balancer: with Redis they
    count the same failures, so spreading guesses over processes gains nothing; embedded (one
    process) each counts its own. A success clears the email's count, not the address's."""
    url = rt.settings.redis_url
    first, second = LoginThrottle(limit=10), LoginThrottle(limit=10)
    keys = ("email:ann@example.com", "ip:203.0.113.9")
    for _ in range(6):
        await first.failed(url, *keys)
    for _ in range(4):
        await second.failed(url, *keys)
    if backend == "sqlite":
        assert url is None
        assert not await first.blocked(url, *keys)
        return
    assert await first.blocked(url, *keys)
    assert await second.blocked(url, *keys)
    assert await second.blocked(url, "email:someone-else@example.com", "ip:203.0.113.9")
    await first.succeeded(url, "email:ann@example.com")
    assert not await second.blocked(url, "email:ann@example.com")
    assert await second.blocked(url, "ip:203.0.113.9")


async def test_logout_revokes_only_that_token(client: httpx.AsyncClient, org: Org) -> None:
    token = (await login(client, "agent@test.local")).json()["token"]
    assert (await me(client, bearer(token))).status_code == 200
    out = await client.post("/api/v1/auth/logout", headers=bearer(token))
    assert out.status_code == 200
    assert (await me(client, bearer(token))).status_code == 401
    assert (await client.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 401
    # The agent's other token (another device) still works.
    assert (await me(client, org.agent.headers)).status_code == 200


async def test_token_expires_after_its_ttl(
    client: httpx.AsyncClient, org: Org, rt: Runtime, clock: ManualClock
) -> None:
    ttl = timedelta(hours=rt.settings.token_ttl_hours)
    clock.advance((ttl - timedelta(seconds=1)).total_seconds())
    assert (await me(client, org.agent.headers)).status_code == 200
    clock.advance(2)
    assert (await me(client, org.agent.headers)).status_code == 401


async def test_deactivated_agent_is_signed_out(client: httpx.AsyncClient, org: Org) -> None:
    assert (await me(client, org.other_agent.headers)).status_code == 200
    response = await client.patch(
        f"/api/v1/agents/{org.other_agent.id}",
        json={"is_active": False},
        headers=org.admin.headers,
    )
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert (await me(client, org.other_agent.headers)).status_code == 401
    assert (await login(client, "other@test.local")).status_code == 401


# --- customers ----------------------------------------------------------------------------


async def create_customer(
    client: httpx.AsyncClient, person: Person, name: str, *identities: tuple[str, str]
) -> httpx.Response:
    return await client.post(
        "/api/v1/customers",
        json={"name": name, "identities": [{"kind": k, "address": a} for k, a in identities]},
        headers=person.headers,
    )


async def test_create_customer_with_identities(client: httpx.AsyncClient, org: Org) -> None:
    response = await create_customer(
        client, org.agent, "Ann Lee", ("phone", "+1 (415) 555-0199"), ("email", "Ann@Example.COM")
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["phone"] == "+14155550199"
    assert created["email"] == "ann@example.com"
    assert sorted((i["kind"], i["address"]) for i in created["identities"]) == [
        ("email", "ann@example.com"),
        ("phone", "+14155550199"),
    ]
    shown = await client.get(f"/api/v1/customers/{created['id']}", headers=org.agent.headers)
    assert shown.status_code == 200
    assert shown.json()["name"] == "Ann Lee"
    assert len(shown.json()["identities"]) == 2
    missing = await client.get("/api/v1/customers/999999", headers=org.agent.headers)
    assert missing.status_code == 404


async def test_duplicate_identity_and_bad_addresses_are_refused(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    first = await create_customer(client, org.agent, "Ann", ("email", "ann@example.com"))
    assert first.status_code == 201
    again = await create_customer(client, org.agent, "Ann 2", ("email", "ANN@example.com"))
    assert again.status_code == 409
    bad_phone = await create_customer(client, org.agent, "Bob", ("phone", "not-a-number"))
    assert bad_phone.status_code == 400
    short_phone = await create_customer(client, org.agent, "Bob", ("phone", "+1 12"))
    assert short_phone.status_code == 400
    bad_kind = await create_customer(client, org.agent, "Bob", ("fax", "12345"))
    assert bad_kind.status_code == 400
    assert await count(rt, Customer) == 1


async def test_search_customers(client: httpx.AsyncClient, org: Org) -> None:
    ann = (await create_customer(client, org.agent, "Ann Lee", ("email", "ann@example.com"))).json()
    bob = (await create_customer(client, org.agent, "Bob Stone", ("phone", "+14155550111"))).json()
    cem = (await create_customer(client, org.agent, "Cem", ("telegram", "cem_the_great"))).json()

    async def search(q: str | None = None, **extra: Any) -> dict[str, Any]:
        params = {"q": q, **extra} if q is not None else extra
        response = await client.get("/api/v1/customers", params=params, headers=org.agent.headers)
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    everyone = await search()
    assert [c["id"] for c in everyone["items"]] == [cem["id"], bob["id"], ann["id"]]
    assert everyone["total"] == 3
    assert [c["id"] for c in (await search("ANN"))["items"]] == [ann["id"]]  # name, any case
    assert [c["id"] for c in (await search("stone"))["items"]] == [bob["id"]]
    assert [c["id"] for c in (await search("5550111"))["items"]] == [bob["id"]]  # phone
    assert [c["id"] for c in (await search("THE_GREAT"))["items"]] == [cem["id"]]  # identity
    none = await search("nobody-like-this")
    assert none["items"] == []
    assert none["total"] == 0
    paged = await search(limit=2, offset=2)
    assert [c["id"] for c in paged["items"]] == [ann["id"]]
    assert paged["total"] == 3


async def test_patch_customer_changes_only_given_fields(
    client: httpx.AsyncClient, org: Org
) -> None:
    created = await client.post(
        "/api/v1/customers",
        json={"name": "Ann", "locale": "tr", "tier": "standard", "attributes": {"plan": "pro"}},
        headers=org.agent.headers,
    )
    cid = created.json()["id"]
    url = f"/api/v1/customers/{cid}"
    patched = await client.patch(url, json={"tier": "gold"}, headers=org.agent.headers)
    assert patched.status_code == 200
    body = patched.json()
    assert (body["name"], body["locale"], body["tier"], body["attributes"]) == (
        "Ann",
        "tr",
        "gold",
        {"plan": "pro"},
    )
    cleared = await client.patch(url, json={"locale": None}, headers=org.agent.headers)
    assert cleared.json()["locale"] is None
    shown = (await client.get(url, headers=org.agent.headers)).json()
    assert (shown["name"], shown["locale"], shown["tier"]) == ("Ann", None, "gold")
    missing = await client.patch(
        "/api/v1/customers/999999", json={"tier": "gold"}, headers=org.agent.headers
    )
    assert missing.status_code == 404


async def test_customer_fields_are_bounded(client: httpx.AsyncClient, org: Org) -> None:
    """Profile fields are free-form but bounded: 400 naming the field, nothing changed."""
    created = await client.post(
        "/api/v1/customers",
        json={"name": "Ann", "attributes": {"plan": "pro"}},
        headers=org.agent.headers,
    )
    url = f"/api/v1/customers/{created.json()['id']}"
    too_much: list[dict[str, object]] = [
        {"name": "x" * 201},
        {"tier": ""},
        {"locale": "<script>"},
        {"attributes": {f"f{i}": i for i in range(51)}},
        {"attributes": {"k" * 65: 1}},
        {"attributes": {"notes": "x" * 17_000}},
    ]
    for body in too_much:
        refused = await client.patch(url, json=body, headers=org.agent.headers)
        assert refused.status_code == 400, (body, refused.text)
        field = next(iter(body))
        assert field in refused.text, refused.text
    created_big = await client.post(
        "/api/v1/customers",
        json={"name": "Bo", "attributes": {"notes": "x" * 17_000}},
        headers=org.agent.headers,
    )
    assert created_big.status_code == 400
    shown = (await client.get(url, headers=org.agent.headers)).json()
    assert (shown["name"], shown["tier"], shown["attributes"]) == (
        "Ann",
        "standard",
        {"plan": "pro"},
    )
    fine = await client.patch(
        url,
        json={"locale": "tr-TR", "attributes": {"plan": "pro", "notes": "x" * 1000}},
        headers=org.agent.headers,
    )
    assert fine.status_code == 200, fine.text


async def test_add_identity(client: httpx.AsyncClient, org: Org) -> None:
    ann = (await create_customer(client, org.agent, "Ann", ("email", "ann@example.com"))).json()
    bob = (await create_customer(client, org.agent, "Bob", ("email", "bob@example.com"))).json()
    url = f"/api/v1/customers/{ann['id']}/identities"
    added = await client.post(
        url, json={"kind": "whatsapp", "address": "+44 7700 900123"}, headers=org.agent.headers
    )
    assert added.status_code == 201, added.text
    assert ("whatsapp", "+447700900123") in {
        (i["kind"], i["address"]) for i in added.json()["identities"]
    }
    taken = await client.post(
        url, json={"kind": "email", "address": "BOB@example.com"}, headers=org.agent.headers
    )
    assert taken.status_code == 409
    bad = await client.post(
        url, json={"kind": "email", "address": "not an email"}, headers=org.agent.headers
    )
    assert bad.status_code == 400
    shown = (await client.get(f"/api/v1/customers/{ann['id']}", headers=org.agent.headers)).json()
    assert len(shown["identities"]) == 2
    bob_now = (await client.get(f"/api/v1/customers/{bob['id']}", headers=org.agent.headers)).json()
    assert [i["address"] for i in bob_now["identities"]] == ["bob@example.com"]


async def test_merge_customers(client: httpx.AsyncClient, org: Org, rt: Runtime) -> None:
    await make_inbox(rt)
    target = await ingest(rt, sms("hi from phone one", sid="SM1", phone="+14155550100"))
    source = await ingest(rt, sms("hi from phone two", sid="SM2", phone="+14155550101"))
    assert target.customer_id != source.customer_id
    merge = {"source_id": source.customer_id, "target_id": target.customer_id}
    response = await client.post("/api/v1/customers/merge", json=merge, headers=org.agent.headers)
    assert response.status_code == 200, response.text
    merged = response.json()
    assert merged["id"] == target.customer_id
    assert sorted(i["address"] for i in merged["identities"]) == ["+14155550100", "+14155550101"]

    gone = await client.get(f"/api/v1/customers/{source.customer_id}", headers=org.agent.headers)
    assert gone.json()["merged_into_id"] == target.customer_id
    assert gone.json()["identities"] == []
    listed = await client.get("/api/v1/customers", headers=org.agent.headers)
    assert [c["id"] for c in listed.json()["items"]] == [target.customer_id]
    moved = await conversation_ids(client, org.agent, customer_id=target.customer_id)
    assert sorted(moved) == sorted([target.conversation_id, source.conversation_id])
    assert await conversation_ids(client, org.agent, customer_id=source.customer_id) == []
    assert await count(rt, Message, Message.customer_id == source.customer_id) == 0

    itself = {"source_id": target.customer_id, "target_id": target.customer_id}
    response = await client.post("/api/v1/customers/merge", json=itself, headers=org.agent.headers)
    assert response.status_code == 409
    response = await client.post("/api/v1/customers/merge", json=merge, headers=org.agent.headers)
    assert response.status_code == 409
    unknown = {"source_id": 999999, "target_id": target.customer_id}
    response = await client.post("/api/v1/customers/merge", json=unknown, headers=org.agent.headers)
    assert response.status_code == 404

    later: IngestResult = await ingest(rt, sms("me again", sid="SM3", phone="+14155550101"))
    assert later.customer_id == target.customer_id


# --- conversations ------------------------------------------------------------------------


async def test_list_conversations_filters_paginates_and_orders(
    client: httpx.AsyncClient, org: Org, rt: Runtime, clock: ManualClock
) -> None:
    await make_inbox(rt)
    await make_inbox(rt, "wa", "whatsapp", "whatsapp:+15005550007")
    c1 = await ingest(rt, sms("one", sid="SM1", phone="+14155550101"))
    clock.advance(60)
    c2 = await ingest(rt, sms("two", sid="SM2", phone="+14155550102"))
    clock.advance(60)
    c3 = await ingest(rt, sms("three", sid="WA3", phone="+14155550103", inbox_id="wa"))
    async with rt.db.write() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == c2.conversation_id)
            .values(assignee_id=org.agent.id)
        )
    resolved = await client.patch(
        f"/api/v1/conversations/{c3.conversation_id}",
        json={"status": "resolved"},
        headers=org.supervisor.headers,
    )
    assert resolved.status_code == 200
    one, two, three = c1.conversation_id, c2.conversation_id, c3.conversation_id

    # Most recently active first.
    assert await conversation_ids(client, org.agent) == [three, two, one]
    assert await conversation_ids(client, org.agent, status="open") == [two, one]
    assert await conversation_ids(client, org.agent, status="resolved") == [three]
    assert await conversation_ids(client, org.agent, inbox_id="wa") == [three]
    assert await conversation_ids(client, org.agent, assignee="me") == [two]
    assert await conversation_ids(client, org.supervisor, assignee="me") == []
    assert await conversation_ids(client, org.agent, assignee="none") == [three, one]
    assert await conversation_ids(client, org.supervisor, assignee=str(org.agent.id)) == [two]
    assert await conversation_ids(client, org.agent, customer_id=c1.customer_id) == [one]
    assert await conversation_ids(
        client, org.agent, status="open", inbox_id="sms", assignee="none"
    ) == [one]
    bad = await client.get(
        "/api/v1/conversations", params={"assignee": "bob"}, headers=org.agent.headers
    )
    assert bad.status_code == 400
    bad = await client.get(
        "/api/v1/conversations", params={"status": "closed"}, headers=org.agent.headers
    )
    assert bad.status_code == 400

    first = await client.get(
        "/api/v1/conversations", params={"limit": 2}, headers=org.agent.headers
    )
    body = first.json()
    assert [c["id"] for c in body["items"]] == [three, two]
    assert (body["total"], body["limit"], body["offset"]) == (3, 2, 0)
    rest = (
        await client.get(
            "/api/v1/conversations", params={"limit": 2, "offset": 2}, headers=org.agent.headers
        )
    ).json()
    assert [c["id"] for c in rest["items"]] == [one]
    assert (rest["total"], rest["offset"]) == (3, 2)
    huge = await client.get(
        "/api/v1/conversations", params={"limit": 100000}, headers=org.agent.headers
    )
    assert huge.json()["limit"] == 200

    # A new customer message moves the oldest conversation to the top.
    clock.advance(60)
    await ingest(rt, sms("one again", sid="SM4", phone="+14155550101"))
    assert await conversation_ids(client, org.agent) == [one, three, two]


async def test_get_conversation_with_messages_and_customer(
    client: httpx.AsyncClient, org: Org, rt: Runtime, clock: ManualClock
) -> None:
    await make_inbox(rt)
    first = await ingest(rt, sms("first", sid="SM1"))
    clock.advance(5)
    await ingest(rt, sms("second", sid="SM2"))
    response = await client.get(
        f"/api/v1/conversations/{first.conversation_id}", headers=org.agent.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == first.conversation_id
    assert body["channel"] == "sms"
    assert body["customer"]["id"] == first.customer_id
    assert body["customer"]["identities"][0]["address"] == "+14155550100"
    assert [m["text"] for m in body["messages"]] == ["first", "second"]
    assert {m["direction"] for m in body["messages"]} == {"in"}
    messages = await client.get(
        f"/api/v1/conversations/{first.conversation_id}/messages",
        params={"before_id": body["messages"][1]["id"]},
        headers=org.agent.headers,
    )
    assert [m["text"] for m in messages.json()] == ["first"]
    missing = await client.get("/api/v1/conversations/999999", headers=org.agent.headers)
    assert missing.status_code == 404


async def test_team_inbox_is_invisible_to_other_teams(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    await make_inbox(rt)
    await make_inbox(rt, "tech", address="+15005550008", team_id=org.technical_team_id)
    open_conv = await ingest(rt, sms("billing question", sid="SM1"))
    tech_conv = await ingest(rt, sms("router broken", sid="SM2", inbox_id="tech"))
    tech_url = f"/api/v1/conversations/{tech_conv.conversation_id}"

    assert await conversation_ids(client, org.agent) == [open_conv.conversation_id]
    assert (await client.get(tech_url, headers=org.agent.headers)).status_code == 403
    assert (await client.get(f"{tech_url}/messages", headers=org.agent.headers)).status_code == 403
    reply = await client.post(
        f"{tech_url}/messages", json={"text": "sneaky"}, headers=org.agent.headers
    )
    assert reply.status_code == 403
    patch = await client.patch(tech_url, json={"status": "resolved"}, headers=org.agent.headers)
    assert patch.status_code == 403
    assert await count(rt, Message, Message.direction == "out") == 0
    async with rt.db.read() as session:
        conv = await session.get(Conversation, tech_conv.conversation_id)
        assert conv is not None
        assert conv.status == "open"

    both = sorted([open_conv.conversation_id, tech_conv.conversation_id], reverse=True)
    assert await conversation_ids(client, org.supervisor) == both
    assert (await client.get(tech_url, headers=org.supervisor.headers)).status_code == 200
    assert await conversation_ids(client, org.other_agent) == both
    assert (await client.get(tech_url, headers=org.other_agent.headers)).status_code == 200


async def test_reply_is_queued_and_idempotent_by_client_id(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    await make_inbox(rt)
    conv = await ingest(rt, sms("hello?", sid="SM1"))
    url = f"/api/v1/conversations/{conv.conversation_id}/messages"
    body = {"text": "Hi, how can I help?", "client_id": "draft-1"}
    first = await client.post(url, json=body, headers=org.agent.headers)
    assert first.status_code == 201, first.text
    sent = first.json()
    assert sent["delivery_status"] == "queued"
    assert (sent["direction"], sent["author_type"], sent["private"]) == ("out", "agent", False)
    assert sent["agent_id"] == org.agent.id
    assert sent["to_address"] == "+14155550100"
    assert sent["text"] == "Hi, how can I help?"

    again = await client.post(url, json=body, headers=org.agent.headers)
    assert again.status_code == 200
    assert again.json()["id"] == sent["id"]
    assert await count(rt, Message, Message.direction == "out") == 1
    listed = (await client.get(url, headers=org.agent.headers)).json()
    assert [m["direction"] for m in listed] == ["in", "out"]


async def test_private_note_is_never_sent(client: httpx.AsyncClient, org: Org, rt: Runtime) -> None:
    await make_inbox(rt)
    conv = await ingest(rt, sms("hello?", sid="SM1"))
    url = f"/api/v1/conversations/{conv.conversation_id}/messages"
    note = await client.post(
        url, json={"text": "VIP, be nice", "private": True}, headers=org.agent.headers
    )
    assert note.status_code == 201
    assert note.json()["delivery_status"] == "note"
    assert note.json()["private"] is True
    assert note.json()["to_address"] is None


async def test_empty_or_malformed_reply_is_refused(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    await make_inbox(rt)
    conv = await ingest(rt, sms("hello?", sid="SM1"))
    url = f"/api/v1/conversations/{conv.conversation_id}/messages"
    for body in ({"text": ""}, {"text": "   \n "}, {}):
        response = await client.post(url, json=body, headers=org.agent.headers)
        assert response.status_code in (400, 422), (body, response.status_code)
    too_long_id = await client.post(
        url, json={"text": "hi", "client_id": "x" * 65}, headers=org.agent.headers
    )
    assert too_long_id.status_code == 400
    assert await count(rt, Message, Message.direction == "out") == 0


async def test_resolve_and_reopen(client: httpx.AsyncClient, org: Org, rt: Runtime) -> None:
    await make_inbox(rt)
    conv = await ingest(rt, sms("hello?", sid="SM1"))
    url = f"/api/v1/conversations/{conv.conversation_id}"
    resolved = await client.patch(url, json={"status": "resolved"}, headers=org.agent.headers)
    assert resolved.status_code == 200
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["resolved_at"] is not None
    assert (await client.get(url, headers=org.agent.headers)).json()["status"] == "resolved"
    reopened = await client.patch(
        url, json={"status": "open", "priority": "urgent"}, headers=org.agent.headers
    )
    assert reopened.status_code == 200
    assert reopened.json()["status"] == "open"
    assert reopened.json()["priority"] == "urgent"
    assert reopened.json()["resolved_at"] is None
    # Reopened, it is the customer's active conversation again: their next SMS lands in it.
    again = await ingest(rt, sms("still there?", sid="SM2"))
    assert again.conversation_id == conv.conversation_id
    bad = await client.patch(url, json={"status": "closed"}, headers=org.agent.headers)
    assert bad.status_code == 400

    # Resolved, the customer's next message opens a new conversation; the old one cannot be
    # reopened while that one is active.
    await client.patch(url, json={"status": "resolved"}, headers=org.agent.headers)
    newer = await ingest(rt, sms("new problem", sid="SM3"))
    assert newer.conversation_id != conv.conversation_id
    conflict = await client.patch(url, json={"status": "open"}, headers=org.agent.headers)
    assert conflict.status_code == 409
    assert (await client.get(url, headers=org.agent.headers)).json()["status"] == "resolved"


async def test_unknown_body_fields_are_refused(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    await make_inbox(rt)
    conv = await ingest(rt, sms("hello?", sid="SM1"))
    conv_url = f"/api/v1/conversations/{conv.conversation_id}"
    cases: list[tuple[str, str, dict[str, Any], Person]] = [
        ("PATCH", conv_url, {"status": "resolved", "assignee": 1}, org.agent),
        ("POST", f"{conv_url}/messages", {"text": "hi", "cc": "x@y.z"}, org.agent),
        ("POST", "/api/v1/customers", {"name": "Ann", "vip": True}, org.agent),
        ("PATCH", f"/api/v1/customers/{conv.customer_id}", {"nam": "Ann"}, org.agent),
        ("POST", "/api/v1/auth/login", {"email": "a@b.c", "password": "x", "otp": 1}, org.agent),
        ("PATCH", "/api/v1/inboxes/sms", {"secret": "x"}, org.admin),
        ("PATCH", f"/api/v1/agents/{org.agent.id}", {"is_admin": True}, org.admin),
        ("POST", "/api/v1/teams", {"name": "X", "lead": 1}, org.admin),
    ]
    for method, url, body, person in cases:
        response = await client.request(method, url, json=body, headers=person.headers)
        assert response.status_code == 400, (method, url, response.status_code)
    async with rt.db.read() as session:
        stored = await session.get(Conversation, conv.conversation_id)
        assert stored is not None
        assert stored.status == "open"
    assert await count(rt, Message, Message.direction == "out") == 0


# --- inboxes ------------------------------------------------------------------------------

ACCOUNT_SID = "AC" + "9" * 32
AUTH_TOKEN = "tok-very-secret-0123456789"


async def test_inbox_crud_never_shows_credentials(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    headers = org.admin.headers
    secrets_ = (ACCOUNT_SID, AUTH_TOKEN, "new-secret-token-xyz")
    responses: list[httpx.Response] = []

    created = await client.post(
        "/api/v1/inboxes",
        json={
            "id": "wa-main",
            "name": "WhatsApp",
            "kind": "whatsapp",
            "address": "whatsapp:+15005550009",
            "credentials": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN},
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    responses.append(created)
    assert created.json()["credentials"] == {
        "account_sid": SECRET_MASK,
        "auth_token": SECRET_MASK,
    }
    listed = await client.get("/api/v1/inboxes", headers=headers)
    responses.append(listed)
    assert [i["id"] for i in listed.json()] == ["wa-main"]
    shown = await client.get("/api/v1/inboxes/wa-main", headers=headers)
    responses.append(shown)
    assert shown.json()["name"] == "WhatsApp"

    patched = await client.patch(
        "/api/v1/inboxes/wa-main",
        json={"name": "WhatsApp EU", "credentials": {"auth_token": "new-secret-token-xyz"}},
        headers=headers,
    )
    responses.append(patched)
    assert patched.status_code == 200
    assert patched.json()["name"] == "WhatsApp EU"
    assert patched.json()["credentials"] == {
        "account_sid": SECRET_MASK,
        "auth_token": SECRET_MASK,
    }
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, "wa-main")
        assert inbox is not None
        # Merged: the key not given is kept, the one given is replaced.
        assert inbox.credentials == {
            "account_sid": ACCOUNT_SID,
            "auth_token": "new-secret-token-xyz",
        }
    removed = await client.patch(
        "/api/v1/inboxes/wa-main", json={"credentials": {"account_sid": None}}, headers=headers
    )
    responses.append(removed)
    assert removed.json()["credentials"] == {"auth_token": SECRET_MASK}

    deleted = await client.delete("/api/v1/inboxes/wa-main", headers=headers)
    responses.append(deleted)
    assert deleted.status_code == 200
    assert deleted.json()["is_active"] is False
    after = await client.get("/api/v1/inboxes/wa-main", headers=headers)
    responses.append(after)
    assert after.status_code == 200
    assert after.json()["is_active"] is False
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, "wa-main")
        assert inbox is not None
        assert inbox.is_active is False

    for response in responses:
        for secret in secrets_:
            assert secret not in response.text, (response.request.method, response.url)


async def test_inbox_validation(client: httpx.AsyncClient, org: Org, rt: Runtime) -> None:
    await make_inbox(rt)
    headers = org.admin.headers

    async def create(**fields: Any) -> int:
        body = {"name": "X", "kind": "sms", "address": "+15005550010", **fields}
        response = await client.post("/api/v1/inboxes", json=body, headers=headers)
        return response.status_code

    assert await create(id="sms") == 409  # id taken
    assert await create(id="Bad_Id") == 400
    assert await create(id="fax", kind="fax") == 400
    assert await create(id="sms-2", api_base_url="ftp://example.com") == 400
    assert await create(id="sms-9", team_id=999999) == 400  # no such team
    assert await create(id="sms-2") == 201
    assert (await client.get("/api/v1/inboxes/nope", headers=headers)).status_code == 404
    assert (await client.delete("/api/v1/inboxes/nope", headers=headers)).status_code == 404
    assert await count(rt, Inbox) == 2

    # Edits that would break a constraint are refused, and change nothing.
    url = "/api/v1/inboxes/sms-2"
    for body, status in (
        ({"name": "Taken", "address": "+15005550006"}, 409),  # the "sms" inbox's number
        ({"name": "Lost", "team_id": 999999}, 400),
        ({"name": "Bad", "api_base_url": "file:///etc/passwd"}, 400),
    ):
        response = await client.patch(url, json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
    shown = (await client.get(url, headers=headers)).json()
    assert (shown["name"], shown["address"], shown["team_id"]) == ("X", "+15005550010", None)
    moved = await client.patch(url, json={"team_id": org.billing_team_id}, headers=headers)
    assert moved.status_code == 200
    assert moved.json()["team_id"] == org.billing_team_id


# --- agents and teams ---------------------------------------------------------------------


async def test_admin_creates_and_updates_agents(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    headers = org.admin.headers
    created = await client.post(
        "/api/v1/agents",
        json={
            "email": " New.Person@Test.Local ",
            "name": "New Person",
            "password": "long-enough-1",
            "team_ids": [org.billing_team_id],
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["email"] == "new.person@test.local"
    assert agent["role"] == "agent"
    assert agent["team_ids"] == [org.billing_team_id]
    signed_in = await login(client, "new.person@test.local", "long-enough-1")
    assert signed_in.status_code == 200

    dup = await client.post(
        "/api/v1/agents",
        json={"email": "NEW.person@test.local", "name": "Again", "password": "long-enough-2"},
        headers=headers,
    )
    assert dup.status_code == 409
    short = await client.post(
        "/api/v1/agents",
        json={"email": "short@test.local", "name": "Short", "password": "1234567"},
        headers=headers,
    )
    assert short.status_code == 400
    no_team = await client.post(
        "/api/v1/agents",
        json={"email": "lost@test.local", "name": "Lost", "team_ids": [999999]},
        headers=headers,
    )
    assert no_team.status_code == 400
    assert await count(rt, Agent) == 5  # the org's four and the new one

    url = f"/api/v1/agents/{agent['id']}"
    updated = await client.patch(
        url,
        json={"role": "supervisor", "team_ids": [org.technical_team_id], "name": "Promoted"},
        headers=headers,
    )
    assert updated.status_code == 200
    assert (updated.json()["role"], updated.json()["name"]) == ("supervisor", "Promoted")
    assert updated.json()["team_ids"] == [org.technical_team_id]
    shown = await client.get(url, headers=org.supervisor.headers)
    assert shown.json()["team_ids"] == [org.technical_team_id]
    token = signed_in.json()["token"]
    assert (await me(client, bearer(token))).json()["team_ids"] == [org.technical_team_id]

    # A refused change changes nothing.
    refused = await client.patch(
        url, json={"name": "Renamed", "password": "short"}, headers=headers
    )
    assert refused.status_code == 400
    assert (await client.get(url, headers=headers)).json()["name"] == "Promoted"
    assert (await login(client, "new.person@test.local", "long-enough-1")).status_code == 200
    missing = await client.patch("/api/v1/agents/999999", json={"name": "x"}, headers=headers)
    assert missing.status_code == 404


async def test_admin_cannot_demote_or_deactivate_themselves(
    client: httpx.AsyncClient, org: Org
) -> None:
    url = f"/api/v1/agents/{org.admin.id}"
    for body in ({"role": "supervisor"}, {"role": "agent"}, {"is_active": False}):
        response = await client.patch(url, json=body, headers=org.admin.headers)
        assert response.status_code == 400, body
    kept = await client.patch(
        url, json={"role": "admin", "name": "Boss"}, headers=org.admin.headers
    )
    assert kept.status_code == 200
    mine = (await me(client, org.admin.headers)).json()
    assert (mine["role"], mine["is_active"], mine["name"]) == ("admin", True, "Boss")
    # Someone else's role may change, and the change takes effect at once.
    demoted = await client.patch(
        f"/api/v1/agents/{org.supervisor.id}", json={"role": "agent"}, headers=org.admin.headers
    )
    assert demoted.json()["role"] == "agent"
    assert (await client.get("/api/v1/agents", headers=org.supervisor.headers)).status_code == 403


async def test_team_membership_shows_in_agents(client: httpx.AsyncClient, org: Org) -> None:
    headers = org.admin.headers

    async def team_ids_of(person: Person) -> list[int]:
        response = await client.get(f"/api/v1/agents/{person.id}", headers=headers)
        ids: list[int] = response.json()["team_ids"]
        return sorted(ids)

    created = await client.post(
        "/api/v1/teams",
        json={"name": "Escalations", "description": "hard cases", "member_ids": [org.agent.id]},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    team = created.json()
    assert team["member_ids"] == [org.agent.id]
    assert await team_ids_of(org.agent) == sorted([org.billing_team_id, team["id"]])
    assert sorted((await me(client, org.agent.headers)).json()["team_ids"]) == sorted(
        [org.billing_team_id, team["id"]]
    )

    url = f"/api/v1/teams/{team['id']}"
    moved = await client.patch(url, json={"member_ids": [org.other_agent.id]}, headers=headers)
    assert moved.status_code == 200
    assert moved.json()["member_ids"] == [org.other_agent.id]
    assert moved.json()["description"] == "hard cases"
    assert await team_ids_of(org.agent) == [org.billing_team_id]
    assert await team_ids_of(org.other_agent) == sorted([org.technical_team_id, team["id"]])

    dup = await client.post("/api/v1/teams", json={"name": "Billing"}, headers=headers)
    assert dup.status_code == 409
    renamed_dup = await client.patch(url, json={"name": "Technical"}, headers=headers)
    assert renamed_dup.status_code == 409
    unknown = await client.patch(url, json={"member_ids": [999999]}, headers=headers)
    assert unknown.status_code == 400
    assert (await client.get(url, headers=headers)).json()["member_ids"] == [org.other_agent.id]

    assert (await client.delete(url, headers=headers)).status_code == 204
    assert (await client.get(url, headers=headers)).status_code == 404
    assert await team_ids_of(org.other_agent) == [org.technical_team_id]
    names = [t["name"] for t in (await client.get("/api/v1/teams", headers=headers)).json()]
    assert names == ["Billing", "Technical"]


# --- operations ---------------------------------------------------------------------------


def ingested_total(metrics_text: str, channel: str) -> float:
    match = re.search(
        rf'^cc_messages_ingested_total\{{channel="{channel}"\}} (\S+)$', metrics_text, re.M
    )
    return float(match.group(1)) if match else 0.0


async def test_health_ready_metrics_and_schema(client: httpx.AsyncClient, rt: Runtime) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}

    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert ready.json()["checks"]["database"] == "ok"
    if rt.settings.redis_url:
        assert ready.json()["checks"]["redis"] == "ok"

    before = await client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    assert "cc_messages_ingested_total" in before.text
    # A message through the Twilio webhook counts.
    await make_inbox(rt)
    url = "/webhooks/twilio/messages"
    params = {"To": "+15005550006", "From": "+14155550100", "MessageSid": "SMm1", "Body": "hi"}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        rt.settings.public_url + url, params
    )
    hook = await client.post(url, data=params, headers={"X-Twilio-Signature": signature})
    assert hook.status_code == 200, hook.text
    after = await client.get("/metrics")
    assert ingested_total(after.text, "sms") == ingested_total(before.text, "sms") + 1

    schema = await client.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/conversations" in paths
    assert "/api/v1/customers/merge" in paths


async def test_readyz_reports_a_broken_database(
    client: httpx.AsyncClient, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise ConnectionError("database is down")

    monkeypatch.setattr(rt.db, "ping", broken)
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "database is down" in ready.json()["checks"]["database"]


async def test_readyz_reports_redis_down(
    client: httpx.AsyncClient, rt: Runtime, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis configured, a Redis that does not answer makes the process not ready (a load
    balancer stops sending it traffic); the embedded default has no Redis to check."""
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    if backend == "sqlite":
        assert "redis" not in ready.json()["checks"]
        return
    assert ready.json()["checks"]["redis"] == "ok"
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    monkeypatch.setattr(rt.settings, "redis_url", "redis://127.0.0.1:1/0")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["redis"].startswith("error:")
    assert ready.json()["checks"]["database"] == "ok"


# --- attachments --------------------------------------------------------------------------


async def attachments_of(rt: Runtime, result: IngestResult) -> list[dict[str, Any]]:
    async with rt.db.read() as session:
        message = await session.get(Message, result.message_id)
        assert message is not None
        return [
            {"id": a.id, "filename": a.filename, "content_type": a.content_type}
            for a in message.attachments
        ]


async def test_attachment_download(client: httpx.AsyncClient, org: Org, rt: Runtime) -> None:
    await make_inbox(rt)
    result = await ingest(
        rt,
        sms(
            "see files",
            sid="SM1",
            attachments=(
                InboundAttachment("bill.png", "image/png", PNG),
                InboundAttachment("page.html", "text/html", HTML),
            ),
        ),
    )
    png, html = await attachments_of(rt, result)
    assert png["filename"] == "bill.png"
    assert html["filename"] == "page.html"

    shown = await client.get(f"/api/v1/attachments/{png['id']}", headers=org.agent.headers)
    assert shown.status_code == 200
    assert shown.content == PNG
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert shown.headers["content-disposition"].startswith("inline")

    page = await client.get(f"/api/v1/attachments/{html['id']}", headers=org.agent.headers)
    assert page.status_code == 200
    assert page.content == HTML
    assert page.headers["content-type"] == "application/octet-stream"
    assert page.headers["content-disposition"].startswith("attachment")
    assert "page.html" in page.headers["content-disposition"]
    assert page.headers["x-content-type-options"] == "nosniff"

    # The message's view links the files.
    conv = await client.get(
        f"/api/v1/conversations/{result.conversation_id}", headers=org.agent.headers
    )
    urls = [a["url"] for a in conv.json()["messages"][0]["attachments"]]
    assert urls == [f"/api/v1/attachments/{png['id']}", f"/api/v1/attachments/{html['id']}"]
    missing = await client.get("/api/v1/attachments/999999", headers=org.agent.headers)
    assert missing.status_code == 404


async def test_attachment_of_invisible_conversation_is_refused(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    await make_inbox(rt, "tech", team_id=org.technical_team_id)
    result = await ingest(
        rt,
        sms(
            "screenshot",
            sid="SM1",
            inbox_id="tech",
            attachments=(InboundAttachment("shot.png", "image/png", PNG),),
        ),
    )
    (att,) = await attachments_of(rt, result)
    url = f"/api/v1/attachments/{att['id']}"
    refused = await client.get(url, headers=org.agent.headers)
    assert refused.status_code == 403
    assert PNG not in refused.content
    allowed = await client.get(url, headers=org.other_agent.headers)
    assert allowed.status_code == 200
    assert allowed.content == PNG


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/customers/99999999999999999999",
        "/api/v1/conversations?customer_id=99999999999999999999",
        "/api/v1/conversations/99999999999999999999",
    ],
)
async def test_huge_ids_are_a_client_error(rt: Runtime, path: str) -> None:
    org = await make_org(rt)
    transport = httpx.ASGITransport(app=create_app(runtime=rt, run_scheduler=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        response = await c.get(path, headers=org.admin.headers)
    assert response.status_code == 400, response.text


async def test_canned_responses_are_checked_and_scoped_to_teams(
    client: httpx.AsyncClient, org: Org
) -> None:
    sup = bearer(org.supervisor.token)
    url = "/api/v1/canned-responses"
    good = {"title": "Refund", "shortcut": "refund", "body": "Hi {{customer.name}}, refunded."}
    made = await client.post(url, json=good, headers=sup)
    assert made.status_code == 201 and made.json()["shortcut"] == "refund"
    for bad in (
        {**good, "shortcut": "other", "body": "   "},
        {**good, "shortcut": "Has Space"},
        {**good, "shortcut": "-dash"},
        {**good, "shortcut": "x" * 41},
        {**good, "shortcut": "t1", "title": ""},
        {**good, "shortcut": "t2", "colour": "red"},
        {**good, "shortcut": "t3", "team_id": 999_999},
    ):
        response = await client.post(url, json=bad, headers=sup)
        assert response.status_code == 400, (bad, response.text)
    taken = await client.post(url, json={**good, "shortcut": "REFUND"}, headers=sup)
    assert taken.status_code == 409
    technical = await client.post(
        url,
        json={**good, "shortcut": "reset", "team_id": org.technical_team_id},
        headers=sup,
    )
    assert technical.status_code == 201
    # The billing agent sees everyone's responses, not the technical team's.
    mine = await client.get(url, headers=bearer(org.agent.token))
    assert [c["shortcut"] for c in mine.json()] == ["refund"]
    theirs = await client.get(url, headers=bearer(org.other_agent.token))
    assert [c["shortcut"] for c in theirs.json()] == ["refund", "reset"]
    renamed = await client.patch(
        f"{url}/{made.json()['id']}", json={"shortcut": "reset"}, headers=sup
    )
    assert renamed.status_code == 409
    gone = await client.delete(f"{url}/{made.json()['id']}", headers=sup)
    assert gone.status_code == 204
    assert (await client.get(f"{url}", headers=sup)).json()[0]["shortcut"] == "reset"


async def test_readyz_outbox_lag_counts_what_the_relay_has_not_published(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    from routing.sla import service_of
    from tests.helpers import relay

    # The SLA consumer keeps its own mark in relay_state, beside the relay's (made first here).
    await service_of(rt).run_once()
    await make_inbox(rt)
    await ingest(rt, sms("first", sid="SMlag1"))
    await relay(rt)
    assert (await client.get("/readyz")).json()["checks"]["outbox_lag"] == "0"
    async with rt.db.write() as session:
        await session.execute(
            update(RelayState).where(RelayState.name == "main").values(published=1)
        )
    lag = (await client.get("/readyz")).json()["checks"]["outbox_lag"]
    async with rt.db.read() as session:
        sequenced = await session.scalar(
            select(RelayState.sequenced).where(RelayState.name == "main")
        )
    assert lag == str((sequenced or 0) - 1) and int(lag) > 0


async def test_a_reply_can_go_out_on_another_of_the_customers_channels(
    client: httpx.AsyncClient, rt: Runtime, org: Org
) -> None:
    from contact_center.models import CustomerIdentity

    await make_inbox(rt)
    await make_inbox(rt, "email", "email", "support@example.com", credentials={})
    await make_inbox(rt, "telegram", "telegram", "demo_bot", credentials={})
    result = await ingest(rt, sms("hi", sid="SMvia1"))
    headers = bearer(org.supervisor.token)
    url = f"/api/v1/conversations/{result.conversation_id}"

    only = (await client.get(f"{url}/reply-channels", headers=headers)).json()
    assert [(c["inbox_id"], c["current"]) for c in only] == [("sms", True)]

    async with rt.db.write() as session:
        session.add(
            CustomerIdentity(
                customer_id=result.customer_id,
                kind="email",
                address="ann@example.org",
                created_at=rt.clock.now(),
            )
        )
    options = (await client.get(f"{url}/reply-channels", headers=headers)).json()
    assert [(c["inbox_id"], c["to_address"]) for c in options] == [
        ("sms", "+14155550100"),
        ("email", "ann@example.org"),
    ]  # no Telegram: the customer has no Telegram address

    sent = await client.post(
        f"{url}/messages", json={"text": "By mail", "inbox_id": "email"}, headers=headers
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["channel"] == "email" and sent.json()["inbox_id"] == "email"
    assert sent.json()["to_address"] == "ann@example.org"
    timeline = (await client.get(f"{url}/messages", headers=headers)).json()
    assert [(m["text"], m["channel"]) for m in timeline] == [("hi", "sms"), ("By mail", "email")]

    for body, problem in (
        ({"text": "x", "inbox_id": "telegram"}, "no telegram address"),
        ({"text": "x", "inbox_id": "nope"}, "no active inbox"),
        ({"text": "x", "inbox_id": "email", "private": True}, "internal note"),
    ):
        refused = await client.post(f"{url}/messages", json=body, headers=headers)
        assert refused.status_code == 422 and problem in refused.text, refused.text
