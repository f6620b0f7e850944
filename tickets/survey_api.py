"""REST for satisfaction surveys (§16): the list (the console's satisfaction history) and the
CSAT summary. Any signed-in agent: customers are a directory every agent reads, and so is what
they said about the service.

``GET /api/v1/surveys``: filters ``customer_id`` (customers merged into it included),
``ticket_id``, ``agent_id``, ``status``; ``limit`` (default 50, at most 200) and ``offset``;
newest first; a JSON list of survey views. A bad value is a 400 naming the field.

``GET /api/v1/surveys/summary?from=&to=``: the surveys answered in ``[from, to)`` (dates, UTC
midnight, or ISO 8601 times; each optional): how many, per score, and the CSAT (the share of
4s and 5s, in percent; null when none was answered).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from litestar import Controller, Request, get
from litestar.exceptions import ClientException
from sqlalchemy import select

from contact_center.api.common import MAX_LIMIT, runtime_of
from contact_center.auth import require
from contact_center.models import Role
from contact_center.views import ts
from tickets import surveys
from tickets.models import SatisfactionSurvey, SurveyStatus

LIST_PARAMS = ("customer_id", "ticket_id", "agent_id", "status", "limit", "offset")
ID_MAX = 2**63 - 1


def _params(request: Request[Any, Any, Any], allowed: tuple[str, ...]) -> dict[str, str]:
    params = request.query_params
    for name in params:
        if name not in allowed:
            raise ClientException(
                f"{name}: unknown query parameter (use {', '.join(allowed)})",
                extra={"field": name},
            )
        if len(params.getall(name, [])) > 1:
            raise ClientException(f"{name}: give it once", extra={"field": name})
    return {name: str(params[name]) for name in params}


def _number(raw: str | None, name: str, *, low: int = 1, high: int = ID_MAX) -> int | None:
    if raw is None or raw == "":
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ClientException(
            f"{name}: a whole number from {low}" + (f" to {high}" if high < ID_MAX else ""),
            extra={"field": name},
        )
    return int(value)


def _moment(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.combine(date.fromisoformat(raw), time(), UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ClientException(
            f"{name}: {raw[:40]!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 time",
            extra={"field": name},
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


class SurveyController(Controller):
    path = "/api/v1/surveys"
    tags = ["surveys"]
    guards = [require(Role.agent)]

    @get("/")
    async def list_surveys(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        """Surveys, newest first (see the module docstring for the filters)."""
        params = _params(request, LIST_PARAMS)
        customer_id = _number(params.get("customer_id"), "customer_id")
        ticket_id = _number(params.get("ticket_id"), "ticket_id")
        agent_id = _number(params.get("agent_id"), "agent_id")
        limit = _number(params.get("limit"), "limit", high=MAX_LIMIT) or 50
        offset = _number(params.get("offset"), "offset", low=0, high=10**9) or 0
        status = params.get("status")
        if status is not None and status not in {s.value for s in SurveyStatus}:
            raise ClientException(
                f"status: one of {', '.join(s.value for s in SurveyStatus)}",
                extra={"field": "status"},
            )
        rt = runtime_of(request)
        async with rt.db.read() as session:
            query = select(SatisfactionSurvey)
            if customer_id is not None:
                ids = await surveys.with_merged(session, customer_id)
                query = query.where(SatisfactionSurvey.customer_id.in_(ids))
            if ticket_id is not None:
                query = query.where(SatisfactionSurvey.ticket_id == ticket_id)
            if agent_id is not None:
                query = query.where(SatisfactionSurvey.agent_id == agent_id)
            if status is not None:
                query = query.where(SatisfactionSurvey.status == status)
            rows = (
                await session.scalars(
                    query.order_by(
                        SatisfactionSurvey.created_at.desc(), SatisfactionSurvey.id.desc()
                    )
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
            return [surveys.survey_view(s) for s in rows]

    @get("/summary")
    async def summary(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Answered surveys in [from, to) and the CSAT (share of 4 and 5, percent)."""
        params = _params(request, ("from", "to"))
        start = _moment(params.get("from"), "from")
        end = _moment(params.get("to"), "to")
        if start is not None and end is not None and end <= start:
            raise ClientException("to: must be after from (to is exclusive)", extra={"field": "to"})
        rt = runtime_of(request)
        async with rt.db.read() as session:
            found = await surveys.summary(session, start, end)
        return {
            "from": ts(start),
            "to": ts(end),
            "answered": found.answered,
            "satisfied": found.satisfied,
            "scores": {str(k): v for k, v in found.scores.items()},
            "csat_percent": found.csat,
        }


route_handlers = [SurveyController]
