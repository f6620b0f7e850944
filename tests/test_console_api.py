"""What the console relies on from the REST API: per-agent unread counts kept on the server
(``unread_count`` in the list, ``POST .../read``), the agent's own language and time zone
(validated: a bad zone never reaches the console), and the session cookie's ``Secure`` flag
taken from CC_PUBLIC_URL behind a TLS-terminating proxy."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from contact_center.app import create_app
from contact_center.models import Conversation
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import Org, ingest, make_inbox, make_org, sms


@pytest.fixture
async def org(rt: Runtime) -> Org:
    await make_inbox(rt)
    return await make_org(rt)


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t.local") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def unread(client: httpx.AsyncClient, token: str) -> dict[int, int]:
    page = await client.get("/api/v1/conversations", headers=bearer(token))
    assert page.status_code == 200, page.text
    return {item["id"]: item["unread_count"] for item in page.json()["items"]}


async def test_unread_counts_follow_each_agents_read_marker(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    first = await ingest(rt, sms("hello", sid="SMu1", phone="+14155551001"))
    await ingest(rt, sms("are you there?", sid="SMu2", phone="+14155551001"))
    other = await ingest(rt, sms("another customer", sid="SMu3", phone="+14155551002"))
    cid = first.conversation_id
    agent, supervisor = org.agent.token, org.supervisor.token
    assert (await unread(client, agent)) == {cid: 2, other.conversation_id: 1}
    listed = (await client.get("/api/v1/conversations", headers=bearer(agent))).json()["items"]
    assert {i["id"]: i["customer_label"] for i in listed} == {
        cid: "+14155551001",
        other.conversation_id: "+14155551002",
    }

    done = await client.post(f"/api/v1/conversations/{cid}/read", headers=bearer(agent))
    assert done.status_code == 200, done.text
    assert done.json()["unread_count"] == 0
    assert (await unread(client, agent))[cid] == 0
    assert (await unread(client, supervisor))[cid] == 2  # each agent has their own marker
    shown = await client.get(f"/api/v1/conversations/{cid}", headers=bearer(supervisor))
    assert shown.json()["unread_count"] == 2  # showing is not reading

    # The agent's own reply is not unread; the customer's next message is.
    async with rt.db.write() as session:
        from contact_center.models import Agent

        me = await session.get(Agent, org.agent.id)
        await reply(session, conversation_id=cid, agent=me, text="Yes!", clock=rt.clock)
    assert (await unread(client, agent))[cid] == 0
    await ingest(rt, sms("great", sid="SMu4", phone="+14155551001"))
    assert (await unread(client, agent))[cid] == 1

    # A late call with an older message id does not move the marker back; a repeat is harmless.
    messages = (
        await client.get(f"/api/v1/conversations/{cid}/messages", headers=bearer(agent))
    ).json()
    older = await client.post(
        f"/api/v1/conversations/{cid}/read",
        json={"message_id": messages[0]["id"]},
        headers=bearer(agent),
    )
    assert older.status_code == 200 and older.json()["unread_count"] == 1
    for _ in range(2):
        latest = await client.post(f"/api/v1/conversations/{cid}/read", headers=bearer(agent))
        assert latest.json()["unread_count"] == 0
    bad = await client.post(
        f"/api/v1/conversations/{cid}/read", json={"message_id": 10**9}, headers=bearer(agent)
    )
    assert bad.status_code == 400 and "message_id" in bad.text

    # Another team's conversation: no marker for an agent who may not see it.
    async with rt.db.write() as session:
        row = await session.get(Conversation, other.conversation_id)
        assert row is not None
        row.team_id = org.technical_team_id
    refused = await client.post(
        f"/api/v1/conversations/{other.conversation_id}/read", headers=bearer(agent)
    )
    assert refused.status_code == 403
    assert other.conversation_id not in await unread(client, agent)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"locale": "not a language"}, "locale"),
        ({"locale": ""}, "locale"),
    ],
)
async def test_a_bad_time_zone_or_language_is_refused_naming_the_field(
    rt: Runtime, org: Org, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    admin = bearer(org.admin.token)
    made = await client.post(
        "/api/v1/agents", json={"email": "tz@test.local", "name": "Tz", **body}, headers=admin
    )
    assert made.status_code == 400 and field in made.json()["detail"]
    changed = await client.patch(f"/api/v1/agents/{org.agent.id}", json=body, headers=admin)
    assert changed.status_code == 400 and field in changed.json()["detail"]
    mine = await client.patch("/api/v1/auth/me", json=body, headers=bearer(org.agent.token))
    assert mine.status_code == 400 and field in mine.json()["detail"]
    me = (await client.get("/api/v1/auth/me", headers=bearer(org.agent.token))).json()
    assert (me["timezone"], me["locale"]) == ("UTC", "en")


async def test_an_agent_sets_their_own_language_and_time_zone(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    done = await client.patch(
        "/api/v1/auth/me",
        json={"locale": "tr", "timezone": "Europe/Istanbul"},
        headers=bearer(org.agent.token),
    )
    assert done.status_code == 200, done.text
    assert (done.json()["locale"], done.json()["timezone"]) == ("tr", "Europe/Istanbul")
    # Only those two: the role is an admin's to change.
    escalate = await client.patch(
        "/api/v1/auth/me", json={"role": "admin"}, headers=bearer(org.agent.token)
    )
    assert escalate.status_code == 400
    made = await client.post(
        "/api/v1/agents",
        json={"email": "zone@test.local", "name": "Zone", "timezone": "America/New_York"},
        headers=bearer(org.admin.token),
    )
    assert made.status_code == 201 and made.json()["timezone"] == "America/New_York"


@pytest.mark.parametrize(
    ("public_url", "secure"), [("https://cc.example.com", True), ("http://127.0.0.1:8000", False)]
)
async def test_the_session_cookie_is_secure_when_the_public_address_is_https(
    rt: Runtime,
    org: Org,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    public_url: str,
    secure: bool,
) -> None:
    # Behind a TLS-terminating proxy the request arrives over plain http.
    monkeypatch.setattr(rt.settings, "public_url", public_url)
    monkeypatch.setattr(rt.settings, "allowed_origins", ["http://t.local"])
    page = await client.get("/agent/login")
    csrf_cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith("cc_csrf="))
    assert ("; secure" in csrf_cookie.lower()) is secure
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    client.cookies.clear()  # the proxy's browser sends the cookie back over https
    signed_in = await client.post(
        "/agent/login",
        data={"email": org.agent.email, "password": "password-123", "csrf": csrf.group(1)},
        headers={"Cookie": f"cc_csrf={csrf.group(1)}"},
    )
    assert signed_in.status_code == 303, signed_in.text
    cookies = signed_in.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("cc_session="))
    assert ("; secure" in session.lower()) is secure
