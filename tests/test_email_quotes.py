"""The new text of a reply is kept apart from the quoted history (channels/email_quotes.py).

``tests/email_corpus/`` holds raw messages shaped like what the clients send (headers, MIME
structure, transfer encodings, charsets); beside each ``<name>.eml`` is
``<name>.expected.txt``, the text the agent should see as the customer's message.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from channels.email import _content, parse_email, serve_smtp
from channels.email_quotes import split_html, split_reply, split_text, unflow
from contact_center.models import Message
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org

CORPUS = Path(__file__).parent / "email_corpus"
MAILS = sorted(p.stem for p in CORPUS.glob("*.eml"))


def expected(name: str) -> str:
    return (CORPUS / f"{name}.expected.txt").read_text("utf-8")


def normalized(text: str) -> str:
    """Trailing whitespace is all the comparison forgives."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def parsed(name: str) -> EmailMessage:
    msg = email.message_from_bytes(
        (CORPUS / f"{name}.eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(msg, EmailMessage)
    return msg


def test_corpus_covers_the_clients() -> None:
    assert len(MAILS) >= 14
    assert all((CORPUS / f"{name}.expected.txt").exists() for name in MAILS)
    charsets = {
        str(part.get_content_charset()).lower()
        for name in MAILS
        for part in parsed(name).walk()
        if part.get_content_maintype() == "text"
    }
    assert {"utf-8", "iso-8859-9", "windows-1254", "iso-8859-1"} <= charsets
    # Turkish letters survive in the expected texts (they are read as UTF-8, not mangled).
    turkish = "".join(expected(name) for name in MAILS)
    assert set("ğüşıöçİĞÜŞÖÇ") <= set(turkish)
    names = {
        parse_email((CORPUS / f"{n}.eml").read_bytes(), "email").sender.display_name for n in MAILS
    }
    assert {"Ayşe Yıldırım", "Mehmet Şahin", "Zeynep Koç", "Emre Güneş", "Can Öztürk"} <= names


@pytest.mark.parametrize("name", MAILS)
def test_corpus_new_text(name: str) -> None:
    raw = (CORPUS / f"{name}.eml").read_bytes()
    message = parse_email(raw, "email")
    assert normalized(message.text) == normalized(expected(name))
    # Encoded-word headers (=?utf-8?B?...?=, =?iso-8859-9?Q?...?=) arrive decoded.
    assert "=?" not in f"{message.subject} {message.sender.display_name}"
    full = parsed(name)
    text_part = full.get_body(("plain",))
    if text_part is None:
        return
    source = _content(text_part)
    if text_part.get_param("format") == "flowed":
        source = unflow(source)
    quoted = message.extra.get("quoted_text")
    if normalized(source) == normalized(message.text):
        assert quoted is None  # nothing held back
        return
    # Nothing the customer sent is lost: every line is in the new text or the history.
    assert quoted
    kept = set((message.text + "\n" + quoted).splitlines())
    assert [ln for ln in source.splitlines() if ln.strip() and ln not in kept] == []


def _words(text: str) -> str:
    # Placeholders only the text part has: <IMG_0421.png>, [cid:...], <https://...>.
    return " ".join(re.sub(r"<\S+>|\[cid:[^\]]+\]", " ", text).split())


@pytest.mark.parametrize("name", [n for n in MAILS if parsed(n).get_body(("html",))])
def test_corpus_html_part_alone_gives_the_same_new_text(name: str) -> None:
    """The HTML rules (gmail_quote, divRplyFwdMsg, blockquote type=cite, yahoo_quoted, ...) find
    the same boundary as the text rules, for mails whose text part we do not understand."""
    html_part = parsed(name).get_body(("html",))
    assert html_part is not None
    parts = split_html(_content(html_part))
    assert _words(parts.text) == _words(expected(name))


def test_signature_and_mobile_lines_stay_above_the_quote() -> None:
    parts = split_text(
        "Thanks!\n\nSent from my iPhone\n\n> On 3 Mar 2025, at 16:05, A wrote:\n> hi"
    )
    assert parts.text == "Thanks!\n\nSent from my iPhone"
    assert parts.quoted == "> On 3 Mar 2025, at 16:05, A wrote:\n> hi"


def test_a_quote_under_only_a_mobile_signature_keeps_the_full_text() -> None:
    body = "Sent from my iPhone\n\nBegin forwarded message:\n\nFrom: Shop <a@shop.example>\nhi"
    parts = split_text(body)
    assert parts.text == body
    assert parts.quoted is None


def test_bottom_posted_reply() -> None:
    body = (
        "On Mon, 3 Mar 2025 at 10:00, Support <support@example.com> wrote:\n"
        "> Which model do you have?\n"
        ">\n"
        "\n"
        "The X200, bought in January.\n"
    )
    parts = split_text(body)
    assert parts.text == "The X200, bought in January."
    assert parts.quoted is not None
    assert parts.quoted.startswith("On Mon, 3 Mar 2025")


def test_customer_text_that_looks_like_a_header_is_not_cut() -> None:
    body = (
        "From: our Izmir office, nobody can log in.\n"
        "On Monday I already wrote:\n"
        "the password reset mail never arrives.\n"
        "Date of purchase: 12.01.2025\n"
    )
    parts = split_text(body)
    assert parts.text == body.rstrip()
    assert parts.quoted is None


def test_wrapped_attribution_does_not_swallow_the_signature() -> None:
    body = (
        "Tamam, teşekkürler.\n-- \nCan Öztürk\nÖztürk Mimarlık\n"
        "3.03.2025 16:05 tarihinde Destek Ekibi yazdı:\n> Merhaba"
    )
    parts = split_text(body)
    assert parts.text == "Tamam, teşekkürler.\n-- \nCan Öztürk\nÖztürk Mimarlık"


@pytest.mark.parametrize(
    "attribution",
    [
        "Şu tarihte 3 Mar 2025 16:05, Destek Ekibi <support@example.com> şunu yazdı:",
        "3 Mar 2025 tarihinde 16:05 saatinde, Destek Ekibi <support@example.com> şunları yazdı:",
        "Am 03.03.2025 um 16:05 schrieb Support <support@example.com>:",
    ],
)
def test_other_attributions(attribution: str) -> None:
    parts = split_text(f"Yeni mesaj\n\n{attribution}\n\nEski mesaj, tırnaksız\n")
    assert parts.text == "Yeni mesaj"
    assert parts.quoted == f"{attribution}\n\nEski mesaj, tırnaksız"


def test_html_decides_when_the_text_part_has_no_known_quote() -> None:
    text = "Merci !\n\nLe lun. 3 mars, Support a dit\n\nancien message\n"
    html = (
        '<div dir="ltr">Merci !</div><div class="gmail_quote"><div class="gmail_attr">'
        "Le lun. 3 mars, Support a dit</div><blockquote>ancien message</blockquote></div>"
    )
    parts = split_reply(text, html)
    assert parts.text == "Merci !"
    assert parts.quoted is not None
    assert "ancien message" in parts.quoted
    assert split_reply("", "").text == ""
    assert split_reply(None, None).quoted is None


def test_unflow_joins_soft_breaks_and_keeps_quote_depth() -> None:
    flowed = "Hello this is \na paragraph.\n> quoted \n> line\n>> deeper\n-- \nsig"
    assert unflow(flowed) == "Hello this is a paragraph.\n> quoted line\n>> deeper\n-- \nsig"
    assert unflow("long\u00a0word \nsplit", delsp=True) == "long\u00a0wordsplit"


@pytest.fixture
async def smtp_port(rt: Runtime) -> AsyncIterator[int]:
    await make_inbox(
        rt, "email", "email", "support@example.com", credentials={"webhook_token": "hook-secret"}
    )
    server = await serve_smtp(rt, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_smtp_stores_new_text_and_keeps_history(rt: Runtime, smtp_port: int) -> None:
    # On the wire every line ends in CRLF (the corpus files are stored with LF).
    raw = (CORPUS / "gmail_tr.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("ayse.yildirim@gmail.com", ["support@example.com"], raw)

    await asyncio.to_thread(send)
    async with rt.db.read() as session:
        stored = (await session.scalars(select(Message))).one()
    assert normalized(stored.text) == normalized(expected("gmail_tr"))
    assert "Siparişiniz 5 iş günü içinde kargoya verilecektir" not in stored.text
    # The history stays: as text for the console to fold, and in the full (sanitized) HTML.
    assert "> Siparişiniz 5 iş günü içinde kargoya verilecektir." in stored.extra["quoted_text"]
    assert stored.html is not None
    assert "Siparişiniz 5 iş günü içinde kargoya verilecektir" in stored.html
    assert "Kargo takip numarası" in stored.html

    from contact_center.app import create_app

    org = await make_org(rt)
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        response = await client.get(
            f"/api/v1/conversations/{stored.conversation_id}/messages", headers=org.admin.headers
        )
    assert response.status_code == 200, response.text
    [view] = response.json()
    assert view["text"] == stored.text
    assert view["quoted_text"] == stored.extra["quoted_text"]


def test_oversized_html_is_kept_whole() -> None:
    html = '<div>Hi</div><div class="gmail_quote">' + "<p>old</p>" * 300_000 + "</div>"
    assert split_reply(None, html).quoted is None
    assert split_reply(None, html[:2000]).quoted is not None


@pytest.mark.parametrize(
    ("name", "sender", "filename"),
    [
        ("apple_mail", "emma.lindqvist@icloud.com", "IMG_0421.png"),
        ("outlook_desktop_en", "soconnell@northwind-traders.co.uk", "image001.png"),
    ],
)
async def test_inline_images_arrive_as_attachments(
    rt: Runtime, smtp_port: int, name: str, sender: str, filename: str
) -> None:
    """An image pasted into the mail (``Content-Disposition: inline`` with a ``Content-ID``)
    is stored like any attachment: the agent sees and downloads it, the bytes intact."""
    raw = (CORPUS / f"{name}.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    inline = next(p for p in parsed(name).walk() if p.get_filename() == filename)
    image = inline.get_payload(decode=True)
    assert isinstance(image, bytes) and image.startswith(b"\x89PNG")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail(sender, ["support@example.com"], raw)

    await asyncio.to_thread(send)
    async with rt.db.read() as session:
        stored = (await session.scalars(select(Message))).one()

    from contact_center.app import create_app

    org = await make_org(rt)
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        response = await client.get(
            f"/api/v1/conversations/{stored.conversation_id}/messages", headers=org.admin.headers
        )
        assert response.status_code == 200, response.text
        [view] = response.json()
        [attachment] = view["attachments"]
        assert attachment["filename"] == filename
        assert attachment["content_type"] == "image/png"
        download = await client.get(attachment["url"], headers=org.admin.headers)
    assert download.status_code == 200
    assert download.content == image
