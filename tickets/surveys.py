"""Satisfaction surveys (CSAT): the request after a ticket is solved, and its answers (§16).

The job ``survey.send`` runs on a ``ticket.updated`` that moved the ticket to solved. In one
transaction it inserts the ticket's survey (``ticket_id`` is unique and the insert does nothing
on a conflict, so a replayed event, a second solve after a reopen or two concurrent runs add
nothing: one survey per ticket) and records the request as the system's own automatic message
through ``outbound.reply`` (client id ``survey:<id>``), into the ticket's conversation or the
customer's latest one: it leaves on the customer's own channel through the ordinary send path.
Without any conversation the survey is ``unsendable`` with the reason.

Answers come from the public page (``tickets/pages.py``) or the web chat widget (a
``survey.answer`` frame, handled here and registered on ``/ws/chat`` by the composition root).
Each answer appends ``survey.answered``; the customer may change it until the survey expires.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.customers import follow_merges
from contact_center.jobs import job
from contact_center.models import Conversation, Customer, Inbox
from contact_center.outbound import ReplyError, reply
from contact_center.views import ts
from contact_center.wsutil import FrameError
from tickets.models import SatisfactionSurvey, SurveyStatus, Ticket, TicketStatus

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

JOB = "survey.send"
CLIENT_PREFIX = "survey:"
EVENT_TYPES: Final = ("survey.requested", "survey.answered")
LIFETIME = timedelta(days=7)
COMMENT_MAX = 2000
SCORES = range(1, 6)
LANGUAGES = ("en", "tr")

# What the customer reads, in their language: the request message, the page and the widget.
TEXT: Final[dict[str, dict[str, Any]]] = {
    "en": {
        "request": (
            "Your request #{ticket_id} has been solved. How satisfied are you with our "
            "support? Tell us here: {url}"
        ),
        "email_subject": "How did we do? (request #{ticket_id})",
        "title": "How did we do?",
        "question": "How satisfied are you with the support you received?",
        "ticket": "Request #{ticket_id}",
        "choices": [
            "Very unsatisfied",
            "Unsatisfied",
            "Neither satisfied nor unsatisfied",
            "Satisfied",
            "Very satisfied",
        ],
        "comment": "Anything you would like to add? (optional)",
        "submit": "Send",
        "thanks": "Thank you for your feedback!",
        "your_answer": "Your answer: {choice}.",
        "change": "You can change your answer until {date}.",
        "change_link": "Change my answer",
        "closed_title": "This survey is closed",
        "closed": "This survey closed on {date}. Thank you all the same.",
        "not_found_title": "Survey not found",
        "not_found": "This survey link is not valid. Please check that you copied all of it.",
        "bad_score": "Please choose one of the five answers.",
        "bad_comment": "The comment is too long: at most {n} characters.",
        "too_large": "The form was too large.",
    },
    "tr": {
        "request": (
            "#{ticket_id} numaralı talebiniz çözüldü. Desteğimizden ne kadar memnun kaldınız? "
            "Buradan bize bildirin: {url}"
        ),
        "email_subject": "Nasıldık? (talep #{ticket_id})",
        "title": "Nasıldık?",
        "question": "Aldığınız destekten ne kadar memnun kaldınız?",
        "ticket": "Talep #{ticket_id}",
        "choices": [
            "Hiç memnun değilim",
            "Memnun değilim",
            "Ne memnunum ne değilim",
            "Memnunum",
            "Çok memnunum",
        ],
        "comment": "Eklemek istediğiniz bir şey var mı? (isteğe bağlı)",
        "submit": "Gönder",
        "thanks": "Geri bildiriminiz için teşekkür ederiz!",
        "your_answer": "Yanıtınız: {choice}.",
        "change": "Yanıtınızı {date} tarihine kadar değiştirebilirsiniz.",
        "change_link": "Yanıtımı değiştir",
        "closed_title": "Bu anket kapandı",
        "closed": "Bu anket {date} tarihinde kapandı. Yine de teşekkür ederiz.",
        "not_found_title": "Anket bulunamadı",
        "not_found": "Bu anket bağlantısı geçerli değil. Bağlantının tamamını kopyaladığınızdan "
        "emin olun.",
        "bad_score": "Lütfen beş yanıttan birini seçin.",
        "bad_comment": "Yorum çok uzun: en fazla {n} karakter.",
        "too_large": "Form çok büyük.",
    },
}


def language_of(locale: str | None) -> str:
    """Turkish for a Turkish locale (``tr``, ``tr_TR``, ``tr-TR``), else English."""
    tag = (locale or "").strip().replace("-", "_").split("_", 1)[0].lower()
    return tag if tag in LANGUAGES else "en"


def text(language: str) -> dict[str, Any]:
    return TEXT.get(language, TEXT["en"])


def survey_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/survey/{token}"


def survey_view(survey: SatisfactionSurvey) -> dict[str, Any]:
    """The one JSON shape of a survey: events, the list API (the console reads it)."""
    return {
        "id": survey.id,
        "ticket_id": survey.ticket_id,
        "customer_id": survey.customer_id,
        "agent_id": survey.agent_id,
        "conversation_id": survey.conversation_id,
        "inbox_id": survey.inbox_id,
        "status": survey.status,
        "reason": survey.reason,
        "score": survey.score,
        "comment": survey.comment,
        "language": survey.language,
        "created_at": ts(survey.created_at),
        "answered_at": ts(survey.answered_at),
        "expires_at": ts(survey.expires_at),
    }


# --------------------------------------------------------------------------- sending


@job(JOB)
async def send_survey_job(rt: Runtime, payload: dict[str, Any]) -> None:
    if await send_survey(rt, int(payload["ticket_id"])) is not None:
        await rt.committed()


async def _latest_conversation(session: AsyncSession, customer_id: int) -> Conversation | None:
    return await session.scalar(
        select(Conversation)
        .where(Conversation.customer_id == customer_id)
        .order_by(
            func.coalesce(Conversation.last_message_at, Conversation.created_at).desc(),
            Conversation.id.desc(),
        )
        .limit(1)
    )


async def _insert_once(session: AsyncSession, sqlite: bool, values: dict[str, Any]) -> int | None:
    """Insert the survey unless the ticket has one; its id, or None when it had one (the
    unique ``ticket_id`` decides, so two concurrent runs insert once: on PostgreSQL the second
    waits for the first's commit and then does nothing)."""
    insert = sqlite_insert if sqlite else pg_insert
    statement = (
        insert(SatisfactionSurvey)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["ticket_id"])
        .returning(SatisfactionSurvey.id)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def send_survey(rt: Runtime, ticket_id: int) -> SatisfactionSurvey | None:
    """Create the ticket's survey and record its request message, once per ticket. Returns the
    new survey, or None when there was nothing to do (no such ticket, not solved any more, or
    it has its survey already)."""
    async with rt.db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        if ticket is None:
            return None
        if ticket.status not in (TicketStatus.solved, TicketStatus.closed):
            # Reopened before the job ran: no survey about a case that is not done. The next
            # solve sends it.
            log.info("ticket %s is %s again: no survey now", ticket.id, ticket.status)
            return None
        if await session.scalar(
            select(SatisfactionSurvey.id).where(SatisfactionSurvey.ticket_id == ticket.id)
        ):
            return None  # the common replay, answered without a write
        customer = await session.get(Customer, ticket.customer_id)
        assert customer is not None
        customer = await follow_merges(session, customer)
        conversation = None
        if ticket.conversation_id is not None:
            conversation = await session.get(Conversation, ticket.conversation_id)
        if conversation is None:
            conversation = await _latest_conversation(session, customer.id)
        language = language_of(
            customer.locale or (conversation.language if conversation is not None else None)
        )
        now = rt.clock.now()
        survey_id = await _insert_once(
            session,
            rt.db.is_sqlite,
            {
                "ticket_id": ticket.id,
                "customer_id": customer.id,
                "agent_id": ticket.assignee_id,
                "conversation_id": conversation.id if conversation is not None else None,
                "inbox_id": conversation.inbox_id if conversation is not None else None,
                "token": secrets.token_urlsafe(32),
                "language": language,
                "status": SurveyStatus.sent.value,
                "created_at": now,
                "expires_at": now + LIFETIME,
            },
        )
        if survey_id is None:
            return None
        survey = await session.get(SatisfactionSurvey, survey_id)
        assert survey is not None
        reason = await _post_request(rt, session, survey, ticket, conversation)
        if reason is not None:
            survey.status = SurveyStatus.unsendable.value
            survey.reason = reason
            log.info("survey %s for ticket %s unsendable: %s", survey.id, ticket.id, reason)
        await session.flush()
        events.append(
            session,
            "survey.requested",
            survey_view(survey),
            clock=rt.clock,
            conversation_id=survey.conversation_id,
            customer_id=survey.customer_id,
            agent_id=survey.agent_id,
        )
        return survey


async def _post_request(
    rt: Runtime,
    session: AsyncSession,
    survey: SatisfactionSurvey,
    ticket: Ticket,
    conversation: Conversation | None,
) -> str | None:
    """Record the request message; the reason it cannot be sent, or None."""
    if conversation is None:
        return "the customer has no conversation to send the survey in"
    inbox = await session.get(Inbox, conversation.inbox_id)
    if inbox is None or not inbox.is_active:
        return f"the conversation's inbox {conversation.inbox_id!r} is not active"
    words = text(survey.language)
    body = words["request"].format(
        ticket_id=ticket.id, url=survey_url(rt.settings.public_url, survey.token)
    )
    try:
        message, _ = await reply(
            session,
            conversation_id=conversation.id,
            agent=None,
            text=body,
            clock=rt.clock,
            client_id=f"{CLIENT_PREFIX}{survey.id}",
            automatic=True,
            subject=words["email_subject"].format(ticket_id=ticket.id)
            if inbox.kind == "email"
            else None,
        )
    except ReplyError as exc:
        return str(exc)
    survey.message_id = message.id
    return None


# --------------------------------------------------------------------------- answers


class SurveyNotFound(LookupError):
    pass


class SurveyClosed(Exception):
    """Past its expiry (plain values: the transaction, and so the row, is rolled back)."""

    def __init__(self, language: str, expires_at: datetime) -> None:
        super().__init__("this survey is closed")
        self.language = language
        self.expires_at = expires_at


class AnswerError(ValueError):
    """A bad answer; ``field`` names what is wrong (``score``, ``comment``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_answer(score: Any, comment: Any) -> tuple[int, str | None]:
    """The score (1-5, a number or its digit) and the comment (trimmed; empty: none)."""
    if isinstance(score, str) and score.strip().isascii() and score.strip().isdigit():
        score = int(score.strip())
    if isinstance(score, bool) or not isinstance(score, int) or score not in SCORES:
        raise AnswerError("score", "a whole number from 1 (very unsatisfied) to 5 (very satisfied)")
    if comment is not None and not isinstance(comment, str):
        raise AnswerError("comment", "must be text")
    comment = (comment or "").strip()
    if len(comment) > COMMENT_MAX:
        raise AnswerError("comment", f"at most {COMMENT_MAX} characters")
    return score, comment or None


def answerable(survey: SatisfactionSurvey | None) -> bool:
    """A survey whose link went out (an unsendable one has no link anyone was given)."""
    return survey is not None and survey.status != SurveyStatus.unsendable


def expired(survey: SatisfactionSurvey, now: datetime) -> bool:
    return now >= survey.expires_at


async def find_by_token(rt: Runtime, token: str) -> SatisfactionSurvey | None:
    if not token or len(token) > 64:
        return None
    async with rt.db.read() as session:
        survey = await session.scalar(
            select(SatisfactionSurvey).where(SatisfactionSurvey.token == token)
        )
    return survey if answerable(survey) else None


async def record_answer(
    rt: Runtime,
    *,
    score: Any,
    comment: Any,
    token: str | None = None,
    survey_id: int | None = None,
    conversations: set[int] | None = None,
) -> SatisfactionSurvey:
    """Record (or change) the answer of the survey named by ``token`` or ``survey_id``, which
    must belong to one of ``conversations`` when given (a web chat visitor's). Raises
    ``AnswerError``, ``SurveyNotFound`` or ``SurveyClosed``; appends ``survey.answered``."""
    score, comment = check_answer(score, comment)
    async with rt.db.write() as session:
        query = select(SatisfactionSurvey).with_for_update()
        if token is not None:
            query = query.where(SatisfactionSurvey.token == token)
        elif survey_id is not None:
            query = query.where(SatisfactionSurvey.id == survey_id)
        else:
            raise SurveyNotFound("no survey named")
        survey = await session.scalar(query)
        if survey is None or not answerable(survey):
            raise SurveyNotFound("no such survey")
        if conversations is not None and survey.conversation_id not in conversations:
            raise SurveyNotFound("no such survey")
        now = rt.clock.now()
        if expired(survey, now):
            raise SurveyClosed(survey.language, survey.expires_at)
        survey.score = score
        survey.comment = comment
        survey.status = SurveyStatus.answered.value
        survey.answered_at = now
        await session.flush()
        events.append(
            session,
            "survey.answered",
            survey_view(survey),
            clock=rt.clock,
            conversation_id=survey.conversation_id,
            customer_id=survey.customer_id,
            agent_id=survey.agent_id,
        )
    await rt.committed()
    return survey


# --------------------------------------------------------------------------- web chat


def _widget_text(language: str) -> dict[str, Any]:
    words = text(language)
    return {
        key: words[key] for key in ("title", "question", "choices", "comment", "submit", "thanks")
    }


async def visitor_request_frame(rt: Runtime, env: dict[str, Any]) -> dict[str, Any] | None:
    """``survey.requested`` as the visitor's ``survey.request`` frame (the event itself carries
    no token: agents' streams never see it). Nothing for an unsendable or expired survey."""
    data = env.get("data") or {}
    async with rt.db.read() as session:
        survey = await session.get(SatisfactionSurvey, int(data.get("id") or 0))
    if not answerable(survey) or survey is None or expired(survey, rt.clock.now()):
        return None
    return _request_frame(survey)


VISITOR_OPEN_MAX = 10


async def visitor_open_surveys(rt: Runtime, conversations: set[int]) -> list[dict[str, Any]]:
    """At connect, after ``history``: the ``survey.request`` of every survey of the visitor's
    conversations that is still open (newest 10), so a reload shows the card again."""
    async with rt.db.read() as session:
        rows = (
            await session.scalars(
                select(SatisfactionSurvey)
                .where(
                    SatisfactionSurvey.conversation_id.in_(conversations),
                    SatisfactionSurvey.status != SurveyStatus.unsendable.value,
                    SatisfactionSurvey.expires_at > rt.clock.now(),
                )
                .order_by(SatisfactionSurvey.id.desc())
                .limit(VISITOR_OPEN_MAX)
            )
        ).all()
    return [_request_frame(s) for s in reversed(rows)]


def _request_frame(survey: SatisfactionSurvey) -> dict[str, Any]:
    return {
        "type": "survey.request",
        "data": {
            "survey_id": survey.id,
            "token": survey.token,
            "conversation_id": survey.conversation_id,
            "expires_at": ts(survey.expires_at),
            "language": survey.language,
            "score": survey.score,
            "comment": survey.comment,
            "text": _widget_text(survey.language),
        },
    }


async def visitor_answer(
    rt: Runtime, conversations: set[int], data: dict[str, Any]
) -> dict[str, Any]:
    """The visitor's ``survey.answer`` frame ``{token | survey_id, score, comment?}``: the
    survey must be one of the visitor's conversations'. Answers ``survey.answered``."""
    token, survey_id = data.get("token"), data.get("survey_id")
    by_id = isinstance(survey_id, int) and not isinstance(survey_id, bool)
    if not isinstance(token, str) and not by_id:
        raise FrameError("bad_frame", "survey.answer needs a token or a survey_id")
    try:
        survey = await record_answer(
            rt,
            score=data.get("score"),
            comment=data.get("comment"),
            token=token if isinstance(token, str) else None,
            survey_id=None if isinstance(token, str) else survey_id,
            conversations=conversations,
        )
    except AnswerError as exc:
        raise FrameError("bad_answer", str(exc)) from None
    except SurveyNotFound:
        raise FrameError("not_found", "no such survey in this chat") from None
    except SurveyClosed:
        raise FrameError("survey_closed", "this survey is closed") from None
    return {
        "type": "survey.answered",
        "data": {
            "survey_id": survey.id,
            "score": survey.score,
            "comment": survey.comment,
            "answered_at": ts(survey.answered_at),
        },
    }


# --------------------------------------------------------------------------- queries


async def with_merged(session: AsyncSession, customer_id: int) -> list[int]:
    """The customer and every customer merged into it (directly or through a chain)."""
    found = [customer_id]
    frontier = [customer_id]
    while frontier and len(found) < 10_000:
        frontier = list(
            (
                await session.scalars(
                    select(Customer.id).where(Customer.merged_into_id.in_(frontier))
                )
            ).all()
        )
        frontier = [c for c in frontier if c not in found]
        found += frontier
    return found


@dataclass(frozen=True)
class Summary:
    answered: int
    satisfied: int
    scores: dict[int, int]

    @property
    def csat(self) -> float | None:
        return round(100.0 * self.satisfied / self.answered, 1) if self.answered else None


async def summary(session: AsyncSession, start: datetime | None, end: datetime | None) -> Summary:
    """Answered surveys with ``answered_at`` in ``[start, end)``: the count per score and the
    CSAT (the share of 4s and 5s)."""
    query = select(SatisfactionSurvey.score, func.count()).where(
        SatisfactionSurvey.status == SurveyStatus.answered.value
    )
    if start is not None:
        query = query.where(SatisfactionSurvey.answered_at >= start)
    if end is not None:
        query = query.where(SatisfactionSurvey.answered_at < end)
    rows = (await session.execute(query.group_by(SatisfactionSurvey.score))).all()
    scores = {score: 0 for score in SCORES}
    for score, count in rows:
        if score is not None:
            scores[int(score)] = int(count)
    answered = sum(scores.values())
    return Summary(answered, scores[4] + scores[5], scores)
