"""The README's first command: `contact-center demo` seeds the documented organisation, serves
everything in one process and sends replies to its provider sandbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose successor is free too: the demo's SMTP server and its sandbox relay
    (CC_SMTP_PORT and the next), so a demo here never meets another one on 2525/2526."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except (OSError, OverflowError):  # taken, or past 65535
                continue
            return port


@dataclass
class Demo:
    url: str
    banner: str  # what `contact-center demo` printed for the user
    smtp_port: int = 0  # the demo's inbound SMTP server


@pytest.fixture
async def demo(demo_run: Demo) -> str:
    return demo_run.url


@pytest.fixture
async def demo_run(tmp_path: Path) -> AsyncIterator[Demo]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CC_")}
    env["CC_PORT"] = str(port)
    smtp_port = free_port_pair()
    env["CC_SMTP_PORT"] = str(smtp_port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "contact_center.cli",
        "demo",
        "--no-simulate",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(120):
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.25)
            else:
                pytest.fail("the demo did not become ready")
        assert proc.returncode is None, (await proc.stdout.read()).decode()  # type: ignore[union-attr]
        assert proc.stdout is not None
        banner = ""
        while "Press Ctrl+C" not in banner:  # printed before the server starts
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, banner
            banner += line.decode()
        yield Demo(url, banner, smtp_port)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
    assert (tmp_path / "contact_center.db").exists()


async def login(client: httpx.AsyncClient, url: str, email: str, password: str) -> dict[str, str]:
    response = await client.post(
        f"{url}/api/v1/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def test_demo_organisation_and_reply_through_the_sandbox(demo: str) -> None:
    url = demo
    async with httpx.AsyncClient(timeout=10) as client:
        admin = await login(client, url, "admin@example.com", "demo-admin")
        await login(client, url, "supervisor@example.com", "demo-supervisor")
        agent = await login(client, url, "ayse@example.com", "demo-agent")
        for email in ("john@example.com", "elif@example.com"):
            await login(client, url, email, "demo-agent")

        inboxes = (await client.get(f"{url}/api/v1/inboxes", headers=admin)).json()
        assert {i["kind"] for i in inboxes} >= {
            "email",
            "sms",
            "whatsapp",
            "voice",
            "telegram",
            "slack",
            "messenger",
            "instagram",
            "webchat",
        }
        sms = next(i for i in inboxes if i["id"] == "sms")
        assert sms["address"] == "+15005550006"
        assert sms["credentials"]["auth_token"] == "********"

        conversations = (await client.get(f"{url}/api/v1/conversations", headers=agent)).json()
        assert conversations["total"] >= 3
        conv = conversations["items"][-1]
        sent = await client.post(
            f"{url}/api/v1/conversations/{conv['id']}/messages",
            headers=agent,
            json={"text": "Merhaba, hemen bakıyorum.", "client_id": "demo-1"},
        )
        assert sent.status_code == 201, sent.text
        message_id = sent.json()["id"]

        outbox: list[dict[str, Any]] = []
        status = None
        for _ in range(60):
            outbox = (await client.get(f"{url}/demo/outbox?format=json")).json()["items"]
            messages = (
                await client.get(f"{url}/api/v1/conversations/{conv['id']}/messages", headers=agent)
            ).json()
            status = next(m for m in messages if m["id"] == message_id)["delivery_status"]
            if outbox and status == "delivered":
                break
            await asyncio.sleep(0.25)
        assert status == "delivered"
        assert [o["body"] for o in outbox] == ["Merhaba, hemen bakıyorum."]
        assert outbox[0]["from"] == "+15005550006"


async def test_demo_email_round_trip(demo_run: Demo) -> None:
    """A customer writes to support@example.com over SMTP; the agent's reply leaves through
    the sandbox's SMTP relay (it was refused before: the demo inbox had no relay)."""
    import smtplib
    from email.message import EmailMessage

    url = demo_run.url
    mail = EmailMessage()
    mail["From"] = "Deniz Kaya <deniz@customer.test>"
    mail["To"] = "support@example.com"
    mail["Subject"] = "Fatura sorusu"
    mail["Message-ID"] = "<demo-email-1@customer.test>"
    mail.set_content("Merhaba, faturam iki kez kesilmiş.")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", demo_run.smtp_port, timeout=10) as smtp:
            smtp.send_message(mail)

    await asyncio.to_thread(send)
    async with httpx.AsyncClient(timeout=10) as client:
        agent = await login(client, url, "ayse@example.com", "demo-agent")
        convs: dict[str, Any] = {"total": 0}
        for _ in range(60):
            convs = (
                await client.get(
                    f"{url}/api/v1/conversations", params={"inbox_id": "email"}, headers=agent
                )
            ).json()
            if convs["total"]:
                break
            await asyncio.sleep(0.25)
        conv = next(c for c in convs["items"] if c.get("subject") == "Fatura sorusu")
        sent = await client.post(
            f"{url}/api/v1/conversations/{conv['id']}/messages",
            headers=agent,
            json={"text": "Hemen kontrol ediyorum."},
        )
        assert sent.status_code == 201, sent.text
        mails: list[dict[str, Any]] = []
        status = None
        for _ in range(60):
            outbox = (await client.get(f"{url}/demo/outbox?format=json")).json()["items"]
            mails = [o for o in outbox if o["provider"] == "smtp"]
            messages = (
                await client.get(f"{url}/api/v1/conversations/{conv['id']}/messages", headers=agent)
            ).json()
            status = next(m for m in messages if m["id"] == sent.json()["id"])["delivery_status"]
            if mails and status == "sent":  # SMTP has no delivery receipt: sent is final
                break
            await asyncio.sleep(0.25)
        assert status == "sent"
        assert [(m["to"], m["subject"]) for m in mails] == [
            ("deniz@customer.test", "Re: Fatura sorusu")
        ]
        assert "Hemen kontrol ediyorum." in mails[0]["body"]


async def test_demo_widget_and_telegram_round_trip(demo: str) -> None:
    url = demo
    async with httpx.AsyncClient(timeout=10) as client:
        widget = await client.get(f"{url}/widget.js")
        assert widget.status_code == 200
        assert "javascript" in widget.headers["content-type"]
        page = await client.get(f"{url}/demo/widget")
        assert "/widget.js" in page.text
        update = {
            "update_id": 1,
            "message": {
                "message_id": 5,
                "date": 1700000000,
                "text": "Selam!",
                "chat": {"id": 99, "type": "private"},
                "from": {"id": 99, "is_bot": False, "first_name": "Can"},
            },
        }
        hook = await client.post(
            f"{url}/webhooks/telegram/telegram",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": "demo-telegram-secret"},
        )
        assert hook.status_code == 200, hook.text
        agent = await login(client, url, "elif@example.com", "demo-agent")
        convs = (
            await client.get(
                f"{url}/api/v1/conversations", params={"inbox_id": "telegram"}, headers=agent
            )
        ).json()
        assert convs["total"] == 1
        sent = await client.post(
            f"{url}/api/v1/conversations/{convs['items'][0]['id']}/messages",
            headers=agent,
            json={"text": "Merhaba Can!"},
        )
        assert sent.status_code == 201
        for _ in range(60):
            outbox = (await client.get(f"{url}/demo/outbox?format=json")).json()["items"]
            if any(o["provider"] == "telegram" for o in outbox):
                break
            await asyncio.sleep(0.25)
        assert [(o["to"], o["body"]) for o in outbox if o["provider"] == "telegram"] == [
            ("99", "Merhaba Can!")
        ]


async def test_demo_routes_waiting_conversations_to_an_agent_who_goes_available(
    demo: str,
) -> None:
    """The demo's scheduler runs the routing engine: Ayşe signs in on /ws/agent, goes
    available, is offered a waiting conversation, accepts, and it is hers."""
    import json

    from websockets.asyncio.client import connect

    url = demo
    async with httpx.AsyncClient(timeout=10) as client:
        headers = await login(client, url, "ayse@example.com", "demo-agent")
        token = headers["Authorization"].removeprefix("Bearer ")
        queues = (await client.get(f"{url}/api/v1/queues", headers=headers)).json()
        assert [q["name"] for q in queues] == ["Billing", "Technical", "General"]
        ws_url = url.replace("http://", "ws://") + f"/ws/agent?token={token}"
        async with connect(ws_url) as ws:

            async def frame(kind: str) -> dict[str, Any]:
                async with asyncio.timeout(15):
                    while True:
                        data = json.loads(await ws.recv())
                        if data["type"] == kind:
                            return data  # type: ignore[no-any-return]

            await frame("hello")
            await ws.send(json.dumps({"type": "presence.set", "data": {"state": "available"}}))
            offer = (await frame("offer"))["data"]
            await ws.send(
                json.dumps({"type": "offer.accept", "data": {"offer_id": offer["offer_id"]}})
            )
            ack = await frame("ack")
            while ack["data"]["for"] != "offer.accept":
                ack = await frame("ack")
            assert ack["data"]["status"] == "accepted"
        conv = (
            await client.get(
                f"{url}/api/v1/conversations/{offer['conversation_id']}", headers=headers
            )
        ).json()
        assert conv["assignee_id"] is not None
        me = (await client.get(f"{url}/api/v1/auth/me", headers=headers)).json()
        assert conv["assignee_id"] == me["id"]


async def test_printed_urls_answer_and_instagram_reaches_its_inbox(demo_run: Demo) -> None:
    url = demo_run.url
    printed = re.findall(r"(https?://[^\s'\"]+)", demo_run.banner)
    pages = [u for u in printed if "/api/" not in u]  # the login one is the curl example
    assert {f"{url}/agent", f"{url}/schema", f"{url}/demo/widget", f"{url}/readyz"} <= set(pages)
    async with httpx.AsyncClient(timeout=10) as client:
        for page in pages:  # the console pages send a visitor to sign in first
            assert (await client.get(page, follow_redirects=True)).status_code == 200, page
        login_url = next(u for u in printed if u.endswith("/api/v1/auth/login"))
        example = await client.post(
            login_url, json={"email": "ayse@example.com", "password": "demo-agent"}
        )
        assert example.status_code in (200, 201)
        # The Meta webhook of the README's table, for the Instagram account.
        body = json.dumps(
            {
                "object": "instagram",
                "entry": [
                    {
                        "id": "demo-instagram",
                        "time": 1700000000000,
                        "messaging": [
                            {
                                "sender": {"id": "ig-user-1"},
                                "recipient": {"id": "demo-instagram"},
                                "timestamp": 1700000000000,
                                "message": {"mid": "ig.m1", "text": "Merhaba"},
                            }
                        ],
                    }
                ],
            }
        ).encode()
        sig = hmac.new(b"demo-meta-secret", body, hashlib.sha256).hexdigest()
        hook = await client.post(
            f"{url}/webhooks/meta",
            content=body,
            headers={"X-Hub-Signature-256": f"sha256={sig}", "Content-Type": "application/json"},
        )
        assert hook.status_code == 200, hook.text
        assert hook.json()["stored"] == 1
        handshake = await client.get(
            f"{url}/webhooks/meta",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "demo-verify-token",
                "hub.challenge": "42",
            },
        )
        assert handshake.text == "42"
        agent = await login(client, url, "ayse@example.com", "demo-agent")
        convs = (
            await client.get(
                f"{url}/api/v1/conversations", params={"inbox_id": "instagram"}, headers=agent
            )
        ).json()
        assert convs["total"] == 1
