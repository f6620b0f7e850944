"""REST for the figures: ``GET /api/v1/metrics`` (JSON) and ``GET /api/v1/metrics.csv``.

Query: ``from`` and ``to`` (a date, meaning that local midnight, or an ISO 8601 time; ``to`` is
exclusive), ``group_by`` (queue, team, agent or channel; default queue) and ``tz`` (the time
zone of dates and naive times; default ``CC_METRICS_TIMEZONE``). Supervisors and admins only.
Definitions: docs/metrics.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from litestar import Controller, Request, Response, get
from litestar.exceptions import ClientException

from contact_center.api.common import runtime_of
from contact_center.auth import require
from contact_center.models import Role
from routing.metrics import GROUPS, Dialect, MetricsOptions, local_midnight, report

MAX_RANGE = timedelta(days=366)
PARAMS = frozenset({"from", "to", "group_by", "tz"})
# Cells a spreadsheet would read as a formula (or that hide one behind a tab or CR) get a
# leading apostrophe: the text is shown, never evaluated (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = (
    "offered",
    "answered",
    "answered_within_threshold",
    "abandoned",
    "short_abandoned",
    "transferred",
    "still_waiting",
    "handled",
    "service_level",
    "asa_seconds",
    "aht_seconds",
    "abandonment_rate",
    "staffed_seconds",
    "handling_seconds",
    "available_idle_seconds",
    "occupancy",
    "offers",
    "offers_accepted",
    "offers_declined",
    "offers_expired",
    "sla_met",
    "sla_missed",
    "sla_compliance",
)


def neutralize(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _when(raw: str | None, name: str, zone: ZoneInfo) -> datetime:
    if not raw:
        raise ClientException(f"{name}: required, a date (YYYY-MM-DD) or an ISO 8601 time")
    try:
        return local_midnight(date.fromisoformat(raw), zone)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ClientException(
            f"{name}: {raw[:40]!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(ZoneInfo("UTC"))


def parse_query(request: Request[Any, Any, Any], opts: MetricsOptions) -> tuple[Any, ...]:
    params = request.query_params
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise ClientException(
            f"unknown query parameter {unknown[0]!r}: use from, to, group_by and tz"
        )
    for name in PARAMS:
        if len(params.getall(name, [])) > 1:
            raise ClientException(f"{name}: give it once")
    tz = params.get("tz") or opts.timezone
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ClientException(f"tz: {tz[:60]!r} is not an IANA time zone") from None
    start = _when(params.get("from"), "from", zone)
    end = _when(params.get("to"), "to", zone)
    if end <= start:
        raise ClientException("to: must be after from (to is exclusive)")
    if end - start > MAX_RANGE:
        raise ClientException("to: the range is at most 366 days")
    group_by = params.get("group_by") or "queue"
    if group_by not in GROUPS:
        raise ClientException(f"group_by: one of {', '.join(GROUPS)}")
    return start, end, group_by, tz


class MetricsController(Controller):
    path = "/api/v1"
    tags = ["metrics"]

    async def _report(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rt = runtime_of(request)
        base = MetricsOptions.from_settings(rt.settings)
        start, end, group_by, tz = parse_query(request, base)
        opts = dataclasses.replace(base, timezone=tz)
        async with rt.db.read() as session:
            return await report(
                session,
                Dialect(rt.db.is_sqlite),
                opts,
                start=start,
                end=end,
                now=rt.clock.now(),
                group_by=group_by,
            )

    @get("/metrics", guards=[require(Role.supervisor)])
    async def metrics(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Figures of the contacts that arrived in [from, to), by queue, team, agent or
        channel, with a total (definitions: docs/metrics.md)."""
        return await self._report(request)

    @get("/metrics.csv", guards=[require(Role.supervisor)], media_type="text/csv")
    async def metrics_csv(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The same figures as CSV (UTF-8 with a byte order mark, for spreadsheets); cells
        that a spreadsheet would take for a formula start with an apostrophe."""
        data = await self._report(request)
        out = io.StringIO()
        out.write("\ufeff")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["group_by", "key", "name", *COLUMNS])
        for row in data["rows"]:
            writer.writerow(
                [neutralize(v) for v in (data["group_by"], row["key"], row["name"])]
                + [neutralize(row.get(c)) for c in COLUMNS]
            )
        writer.writerow(
            [neutralize(v) for v in (data["group_by"], "total", "Total")]
            + [neutralize(data["total"].get(c)) for c in COLUMNS]
        )
        day = data["from"][:10], data["to"][:10]  # local dates (the times carry their offset)
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": (
                    f'attachment; filename="metrics-{data["group_by"]}-{day[0]}-{day[1]}.csv"'
                ),
                "X-Content-Type-Options": "nosniff",
            },
        )


route_handlers = [MetricsController]
