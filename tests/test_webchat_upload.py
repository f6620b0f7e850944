"""Web chat file uploads over the served app: the attachment limit and the request body
limit (413), refused types (415), the inbox's allowed origins (403), replays by client id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from contact_center.models import Attachment, Message
from contact_center.runtime import Runtime
from tests.helpers import make_inbox
from tests.live import LiveApp, live_app
from tests.wshelpers import recv


@pytest.fixture
async def live(rt: Runtime) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    async with live_app(rt) as app:
        yield app


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def ws_url(live: LiveApp) -> str:
    return live.url.replace("http://", "ws://") + "/ws/chat?inbox=webchat"


async def visitor_token(live: LiveApp) -> str:
    async with connect(ws_url(live)) as ws:
        return str((await recv(ws, "hello"))["data"]["visitor_token"])


async def upload(
    live: LiveApp,
    token: str,
    content: bytes,
    *,
    name: str = "shot.png",
    content_type: str = "image/png",
    client_id: str = "u1",
    headers: dict[str, str] | None = None,
) -> Any:
    return await live.client.post(
        "/webchat/upload",
        params={"inbox": "webchat", "visitor": token},
        files={"file": (name, content, content_type)},
        data={"client_id": client_id},
        headers=headers,
    )


PNG = b"\x89PNG\r\n\x1a\n" + b"\x03" * 50


async def test_upload_at_the_attachment_limit_is_stored_and_over_it_is_413(
    rt: Runtime, live: LiveApp
) -> None:
    token = await visitor_token(live)
    limit = rt.settings.attachment_max_bytes  # 25 MiB, over Litestar's default 10 MB body cap
    over = await upload(live, token, PNG + b"\0" * (limit + 1 - len(PNG)), client_id="big")
    assert over.status_code == 413
    assert f"at most {limit} bytes" in over.json()["detail"]
    # A body past the attachment limit and the multipart framing is refused before it is read.
    huge = await upload(live, token, PNG + b"\0" * (limit + 600 * 1024), client_id="huge")
    assert huge.status_code == 413
    assert "request body too large" in huge.json()["detail"]
    assert await count(rt, Message) == 0
    assert await count(rt, Attachment) == 0
    ok = await upload(live, token, PNG + b"\0" * (limit - len(PNG)), client_id="fits")
    assert ok.status_code == 201, ok.text
    assert await count(rt, Attachment) == 1


async def test_upload_refuses_executables_and_stores_nothing(rt: Runtime, live: LiveApp) -> None:
    token = await visitor_token(live)
    exe = b"MZ" + b"\0" * 100
    named = await upload(live, token, exe, name="setup.exe", client_id="a")
    declared = await upload(
        live, token, exe, name="fatura.pdf", content_type="application/x-msdownload", client_id="b"
    )
    assert named.status_code == 415, named.text
    assert ".exe" in named.json()["detail"]
    assert declared.status_code == 415, declared.text
    assert await count(rt, Message) == 0
    assert await count(rt, Attachment) == 0


async def test_upload_replayed_with_the_same_client_id_is_one_message(
    rt: Runtime, live: LiveApp
) -> None:
    token = await visitor_token(live)
    first = await upload(live, token, PNG, client_id="same")
    again = await upload(live, token, PNG, client_id="same")
    assert first.status_code == again.status_code == 201
    assert first.json()["message_id"] == again.json()["message_id"]
    assert await count(rt, Message) == 1
    assert await count(rt, Attachment) == 1


async def test_upload_from_a_foreign_origin_is_403(rt: Runtime, live: LiveApp) -> None:
    from sqlalchemy import update

    from contact_center.models import Inbox

    token = await visitor_token(live)
    async with rt.db.write() as session:
        await session.execute(
            update(Inbox)
            .where(Inbox.id == "webchat")
            .values(settings={"allowed_origins": ["https://shop.example"]})
        )
    foreign = await upload(live, token, PNG, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert await count(rt, Message) == 0
    ours = await upload(live, token, PNG, headers={"Origin": "https://shop.example"})
    assert ours.status_code == 201, ours.text
    assert await count(rt, Message) == 1
