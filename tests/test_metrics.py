"""Wallboard and report figures against a scripted day whose every figure is worked out by hand.

The day runs through the real engine (ingest, tasks, offers, answers, transfers, direct
assignment, presence) with a ManualClock, in Istanbul time (UTC+3, no daylight saving), so
the day and its 15-minute intervals are local. Local times below; the clock is set in UTC.

Agents: Ayla (team Billing) and Burak (team Technical), chat capacity 3 each.
Queues: Sales (default, no team) and Support (team Technical; rule: the word "support").

  09:00:00  Ayla and Burak available.  c1 arrives (Sales), offered to Ayla
  09:00:12  Ayla accepts c1                                   wait 12 s
  09:02:00  c2 arrives (Sales), offered to Burak
  09:02:05  Burak declines; offered to Ayla
  09:02:30  Ayla accepts c2                                   wait 30 s
  09:05:00  c3 arrives (Support)
  09:05:04  c3 resolved while waiting: abandoned              after 4 s (short: <= 5 s)
  09:06:12  Ayla resolves c1                                  handle 360 s
  09:08:00  c4 arrives by WhatsApp (Support)
  09:09:30  c4 resolved while waiting: abandoned              after 90 s
  09:12:30  Ayla resolves c2                                  handle 600 s
  09:16:00  c5 arrives (Sales)
  09:16:40  a supervisor transfers c5 to Support (Sales visit: transferred; a Support visit
            starts); offered to Burak
  09:16:50  Burak accepts c5                                  wait 10 s (in Support)
  09:18:00  c6 arrives (Sales), offered to Ayla
  09:18:20  Ayla accepts c6                                   wait 20 s (= the threshold)
  09:20:00  Burak goes away (break), still holding c5
  09:23:20  Ayla resolves c6                                  handle 300 s
  09:25:00  c9 arrives (Sales)
  09:25:45  a supervisor assigns c9 to Ayla                   wait 45 s
  09:28:45  Ayla resolves c9                                  handle 180 s
  09:30:00  Burak available again
  09:31:00  c7 arrives (Support), nobody takes it
  09:39:50  c8 arrives (Sales), nobody takes it
  09:40:00  the figures are read
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from contact_center.app import create_app
from contact_center.clock import ManualClock
from contact_center.models import Role, Team, TeamMember
from contact_center.runtime import Runtime
from routing.engine import engine_of
from routing.metrics import Dialect, MetricsOptions, live_snapshot
from routing.models import Presence, Queue, RoutingTask
from tests.helpers import Person, make_inbox, make_person
from tests.routing_helpers import arrive, make_agent, make_queue, make_rule, presence, resolve

ISTANBUL = "Europe/Istanbul"
OPTIONS = MetricsOptions(
    threshold_seconds=20,
    target=0.8,
    abandoned="short",
    short_abandon_seconds=5,
    timezone=ISTANBUL,
    staffing_window_minutes=60,
    max_occupancy=0.85,
)
approx = pytest.approx


def local(hh: int, mm: int, ss: int = 0) -> datetime:
    """A time of the scripted day, 2026-03-10 in Istanbul (UTC+3), as UTC."""
    return datetime(2026, 3, 10, hh - 3, mm, ss, tzinfo=UTC)


@dataclass
class Day:
    ayla: int
    burak: int
    sales: int
    support: int
    billing: int
    technical: int
    supervisor: Person
    conversations: dict[str, int]


async def live_task(rt: Runtime, conversation_id: int) -> int:
    async with rt.db.read() as session:
        task_id = await session.scalar(
            select(RoutingTask.id).where(RoutingTask.active_conversation_id == conversation_id)
        )
    assert task_id is not None
    return task_id


async def play_the_day(rt: Runtime, clock: ManualClock) -> Day:
    clock.set(local(8, 0))
    eng = engine_of(rt)
    await make_inbox(rt)
    await make_inbox(rt, "whatsapp", "whatsapp", "whatsapp:+15005550007")
    async with rt.db.write() as session:
        billing = Team(name="Billing", description="", created_at=clock.now())
        technical = Team(name="Technical", description="", created_at=clock.now())
        session.add_all([billing, technical])
        await session.flush()
        billing_id, technical_id = billing.id, technical.id
    supervisor = await make_person(rt, "boss@test.local", Role.supervisor, None)
    sales = await make_queue(rt, "Sales", is_default=True)
    support = await make_queue(rt, "Support", team_id=technical_id)
    await make_rule(rt, support, 1, keywords=["support"])
    ayla = await make_agent(rt, "Ayla", team_id=billing_id, available=False)
    burak = await make_agent(rt, "Burak", team_id=technical_id, available=False)
    convs: dict[str, int] = {}

    async def comes(name: str, text: str, **kw: Any) -> None:
        convs[name] = await arrive(rt, text, **kw)
        assert await eng.enqueue(convs[name]) == 1

    async def offer(name: str, agent: int) -> int:
        made = await eng.offer(await live_task(rt, convs[name]), agent)
        assert made is not None
        return made.id

    async def abandon(name: str) -> None:
        await resolve(rt, convs[name])
        await eng.reconcile()  # the engine ends the task of a closed conversation

    clock.set(local(9, 0))
    await presence(rt, ayla, Presence.available)
    await presence(rt, burak, Presence.available)
    await comes("c1", "hello, a question about prices")
    o1 = await offer("c1", ayla)
    clock.set(local(9, 0, 12))
    await eng.answer(o1, ayla, accept=True)
    clock.set(local(9, 2))
    await comes("c2", "I want to buy")
    o2 = await offer("c2", burak)
    clock.set(local(9, 2, 5))
    await eng.answer(o2, burak, accept=False)
    o2b = await offer("c2", ayla)
    clock.set(local(9, 2, 30))
    await eng.answer(o2b, ayla, accept=True)
    clock.set(local(9, 5))
    await comes("c3", "support please")
    clock.set(local(9, 5, 4))
    await abandon("c3")
    clock.set(local(9, 6, 12))
    await resolve(rt, convs["c1"])
    clock.set(local(9, 8))
    await comes("c4", "support: my phone is broken", inbox_id="whatsapp")
    clock.set(local(9, 9, 30))
    await abandon("c4")
    clock.set(local(9, 12, 30))
    await resolve(rt, convs["c2"])
    clock.set(local(9, 16))
    await comes("c5", "a question about my order")
    clock.set(local(9, 16, 40))
    await eng.transfer_to_queue(convs["c5"], support, by_agent_id=supervisor.id)
    o5 = await offer("c5", burak)
    clock.set(local(9, 16, 50))
    await eng.answer(o5, burak, accept=True)
    clock.set(local(9, 18))
    await comes("c6", "do you ship abroad?")
    o6 = await offer("c6", ayla)
    clock.set(local(9, 18, 20))
    await eng.answer(o6, ayla, accept=True)
    clock.set(local(9, 20))
    await presence(rt, burak, Presence.away, "break")
    clock.set(local(9, 23, 20))
    await resolve(rt, convs["c6"])
    clock.set(local(9, 25))
    await comes("c9", "one more thing")
    clock.set(local(9, 25, 45))
    await eng.assign(convs["c9"], ayla, by_agent_id=supervisor.id)
    clock.set(local(9, 28, 45))
    await resolve(rt, convs["c9"])
    clock.set(local(9, 30))
    await presence(rt, burak, Presence.available)
    clock.set(local(9, 31))
    await comes("c7", "support needed urgently")
    clock.set(local(9, 39, 50))
    await comes("c8", "hi")
    clock.set(local(9, 40))
    return Day(ayla, burak, sales, support, billing_id, technical_id, supervisor, convs)


async def snapshot(rt: Runtime, opts: MetricsOptions = OPTIONS) -> dict[str, Any]:
    async with rt.db.read() as session:
        return await live_snapshot(session, Dialect(rt.db.is_sqlite), opts, now=rt.clock.now())


async def test_the_wallboard_figures_of_a_scripted_day(rt: Runtime, clock: ManualClock) -> None:
    day = await play_the_day(rt, clock)
    snap = await snapshot(rt)
    assert snap["day"] == "2026-03-10"
    assert snap["as_of"] == local(9, 40).isoformat()

    sales = snap["queues"][str(day.sales)]
    # Sales visits: c1 answered 12 s, c2 answered 30 s, c5 transferred, c6 answered 20 s,
    # c9 answered 45 s, c8 waiting 10 s.
    assert sales["name"] == "Sales"
    assert sales["waiting"] == 1
    assert sales["longest_wait_seconds"] == approx(10)
    assert sales["oldest_waiting_since"] == local(9, 39, 50).isoformat()
    assert sales["offered"] == 6
    assert sales["answered"] == 4
    assert sales["answered_within_threshold"] == 2  # 12 s and 20 s (<= 20 s counts)
    assert sales["abandoned"] == 0
    assert sales["short_abandoned"] == 0
    assert sales["transferred"] == 1
    assert sales["handled"] == 4
    assert sales["service_level"] == approx(2 / 4)  # c8 has waited 10 s: not decided yet
    assert sales["asa_seconds"] == approx((12 + 30 + 20 + 45) / 4)  # 26.75
    assert sales["aht_seconds"] == approx((360 + 600 + 300 + 180) / 4)  # 360
    assert sales["abandonment_rate"] == approx(0 / 6)
    # Sales' pool is everyone: Ayla idle, Burak handling c5.
    assert sales["agents_by_state"] == {"available": 2, "busy": 0, "away": 0, "offline": 0}
    assert (sales["agents_handling"], sales["agents_idle"]) == (1, 1)
    assert sales["occupancy"] == approx(1 / (1 + 1))

    support = snap["queues"][str(day.support)]
    # Support visits: c3 abandoned after 4 s (short), c4 abandoned after 90 s, c5 answered
    # 10 s (still open), c7 waiting 540 s.
    assert support["waiting"] == 1
    assert support["longest_wait_seconds"] == approx(540)
    assert support["offered"] == 4
    assert support["answered"] == 1
    assert support["answered_within_threshold"] == 1
    assert support["abandoned"] == 2
    assert support["short_abandoned"] == 1
    assert support["transferred"] == 0
    assert support["handled"] == 0
    # Short abandons left out; c4 counts against; c7 has waited past 20 s: missed whatever
    # happens next. 1 / (1 answered + 1 abandoned + 1 waiting past the threshold).
    assert support["service_level"] == approx(1 / 3)
    assert support["asa_seconds"] == approx(10)
    assert "aht_seconds" not in support  # nothing handled: unknown (null)
    assert support["abandonment_rate"] == approx(2 / 4)
    # Support's pool is team Technical: Burak only, handling c5.
    assert support["agents_by_state"] == {"available": 1, "busy": 0, "away": 0, "offline": 0}
    assert support["occupancy"] == approx(1 / 1)
    assert "staffing" not in support  # no handled contact in Support today: no AHT

    overall = snap["overall"]
    assert overall["waiting"] == 2
    assert overall["longest_wait_seconds"] == approx(540)
    assert overall["offered"] == 10  # nine conversations, one of them visited two queues
    assert overall["answered"] == 5
    assert overall["answered_within_threshold"] == 3
    assert overall["abandoned"] == 2
    assert overall["short_abandoned"] == 1
    assert overall["transferred"] == 1
    assert overall["handled"] == 4
    assert overall["service_level"] == approx(3 / (5 + 1 + 1))
    assert overall["asa_seconds"] == approx((12 + 30 + 20 + 45 + 10) / 5)  # 23.4
    assert overall["aht_seconds"] == approx(360)
    assert overall["abandonment_rate"] == approx(2 / 10)
    assert overall["agents_by_state"] == {"available": 2, "busy": 0, "away": 0, "offline": 0}
    assert overall["occupancy"] == approx(0.5)

    # Erlang C for 09:45-10:00: the last 60 minutes saw all 10 arrivals (10/h), AHT 360 s:
    # A = 10/3600 x 360 = 1 Erlang. N = 2: B(2,1) = 0.2, C = 2(0.2) / (2 - 1(0.8)) = 1/3,
    # SL = 1 - (1/3) e^(-(2-1) 20/360) = 0.68468 < 0.8. N = 3: B(3,1) = 0.0625,
    # C = 3(0.0625) / (3 - 0.9375) = 1/11, SL = 1 - (1/11) e^(-2 x 20/360) = 0.91865.
    plan = overall["staffing"]
    assert plan["interval_start"] == local(9, 45).isoformat()
    assert plan["arrivals_per_hour"] == approx(10)
    assert plan["aht_seconds"] == approx(360)
    assert plan["traffic_erlangs"] == approx(1.0)
    assert plan["agents"] == 3
    assert plan["probability_wait"] == approx(1 / 11, abs=1e-6)
    assert plan["service_level"] == approx(0.918651, abs=1e-6)
    assert plan["asa_seconds"] == approx((1 / 11) * 360 / 2, abs=1e-3)  # 16.364 s
    assert plan["occupancy"] == approx(1 / 3, abs=1e-6)
    # Sales: 6/h x 360 s = 0.6 Erlang. N = 1: C = 0.6, SL = 1 - 0.6 e^(-0.4 x 20/360)
    # = 0.41319. N = 2: B = 0.1011236, C = 9/65, SL = 1 - (9/65) e^(-1.4 x 20/360) = 0.87190.
    sales_plan = sales["staffing"]
    assert sales_plan["traffic_erlangs"] == approx(0.6)
    assert sales_plan["agents"] == 2
    assert sales_plan["probability_wait"] == approx(9 / 65, abs=1e-6)
    assert sales_plan["service_level"] == approx(0.87190, abs=1e-5)

    # Agents: state, since (time in state), load per channel class and capacity.
    ayla = snap["agents"][str(day.ayla)]
    burak = snap["agents"][str(day.burak)]
    assert (ayla["name"], ayla["state"], ayla["since"]) == (
        "Ayla",
        "available",
        local(9, 0).isoformat(),
    )
    assert ayla["load"] == {"voice": 0, "chat": 0, "email": 0}
    assert ayla["capacity"] == {"voice": 1, "chat": 3, "email": 8}
    assert ayla["queues"] == [day.sales]  # not in team Technical
    assert (burak["state"], burak["since"]) == ("available", local(9, 30).isoformat())
    assert burak["load"] == {"voice": 0, "chat": 1, "email": 0}
    assert (burak["conversations"], burak["offers"]) == (1, 0)
    assert burak["queues"] == [day.sales, day.support]
    assert str(day.supervisor.id) not in snap["agents"]  # never on the floor

    # The oldest waiting first, for the supervisor's actions.
    assert [(w["conversation_id"], w["queue_id"]) for w in snap["waiting_list"]] == [
        (day.conversations["c7"], day.support),
        (day.conversations["c8"], day.sales),
    ]

    # 15-minute intervals of the local day (96: no clock change on 10 March in Istanbul).
    series = snap["series"]
    assert series["start"] == "2026-03-09T21:00:00+00:00"  # local midnight
    assert len(series["labels"]) == 96 and series["labels"][36] == "09:00"
    assert series["current"] == 38
    assert series["arrivals"][:36] == [0] * 36
    # 09:00: c1, c2, c3, c4. 09:15: c5 (Sales), c5 (Support), c6, c9. 09:30: c7, c8.
    assert series["arrivals"][36:39] == [4, 4, 2]
    assert series["arrivals"][39:] == [None] * 57  # the future
    levels = series["service_level"]
    assert levels[:36] == [None] * 36  # nothing decided
    # 09:00: c1 within; c2 late; c3 short (left out); c4 counts: 1/3. 09:15: c5 and c6
    # within, c9 late, the transferred visit left out: 2/3. 09:30: c7 missed, c8 undecided: 0.
    assert levels[36:39] == [approx(1 / 3), approx(2 / 3), approx(0.0)]
    assert levels[39:] == [None] * 57


async def test_the_abandoned_treatments(rt: Runtime, clock: ManualClock) -> None:
    """The same day with each treatment of abandoned contacts (docs/metrics.md)."""
    await play_the_day(rt, clock)
    # Counted: 3 within / (5 answered + 2 abandoned + 1 waiting past 20 s).
    counted = await snapshot(rt, replace(OPTIONS, abandoned="count"))
    assert counted["overall"]["service_level"] == approx(3 / 8)
    # Ignored: 3 / 5 answered (a waiting contact may yet abandon: not decided).
    ignored = await snapshot(rt, replace(OPTIONS, abandoned="ignore"))
    assert ignored["overall"]["service_level"] == approx(3 / 5)
    # A 60-second short-abandon threshold: c4 (90 s) still counts, and c7 (540 s) is past it.
    longer = await snapshot(rt, replace(OPTIONS, short_abandon_seconds=60))
    assert longer["overall"]["service_level"] == approx(3 / 7)
    # A threshold of 30 s: c2 (30 s) now within; 4 / (5 + 1 + 1).
    wider = await snapshot(rt, replace(OPTIONS, threshold_seconds=30))
    assert wider["overall"]["service_level"] == approx(4 / 7)


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        yield c


DAY = {"from": "2026-03-10", "to": "2026-03-11", "tz": ISTANBUL}


async def test_the_report_by_queue_agent_team_and_channel(
    rt: Runtime, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    day = await play_the_day(rt, clock)
    headers = day.supervisor.headers

    async def get(group_by: str) -> dict[str, Any]:
        response = await client.get(
            "/api/v1/metrics", params={**DAY, "group_by": group_by}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    by_queue = await get("queue")
    assert by_queue["from"] == "2026-03-10T00:00:00+03:00"
    assert by_queue["to"] == "2026-03-11T00:00:00+03:00"
    rows = {row["name"]: row for row in by_queue["rows"]}
    assert set(rows) == {"Sales", "Support"}
    assert {k: rows["Sales"][k] for k in ("offered", "answered", "transferred")} == {
        "offered": 6,
        "answered": 4,
        "transferred": 1,
    }
    assert rows["Sales"]["still_waiting"] == 1
    assert rows["Sales"]["service_level"] == approx(0.5)
    assert rows["Sales"]["asa_seconds"] == approx(26.75)
    assert rows["Sales"]["aht_seconds"] == approx(360)
    assert rows["Support"]["service_level"] == approx(1 / 3)
    assert rows["Support"]["abandonment_rate"] == approx(0.5)
    assert rows["Support"]["aht_seconds"] is None

    # Occupancy = handling / (handling + available idle), over the day up to 09:40.
    # Ayla: available 09:00-09:40 (2,400 s); handling c1 09:00:12-09:06:12, c2
    # 09:02:30-09:12:30 (together 738 s), c6 300 s, c9 180 s: 1,218 s; idle 1,182 s.
    # Burak: available 09:00-09:20 and 09:30-09:40 (1,800 s), away between; handling c5 from
    # 09:16:50 on: 190 s before the break and 600 s after it: 790 s; idle 1,010 s.
    total = by_queue["total"]
    assert total["offered"] == 10 and total["service_level"] == approx(3 / 7)
    assert total["staffed_seconds"] == approx(2400 + 1800)
    assert total["handling_seconds"] == approx(1218 + 790)
    assert total["available_idle_seconds"] == approx(1182 + 1010)
    assert total["occupancy"] == approx(2008 / (2008 + 2192))
    assert (total["offers"], total["offers_accepted"], total["offers_declined"]) == (5, 4, 1)

    by_agent = await get("agent")
    agents = {row["name"]: row for row in by_agent["rows"]}
    assert set(agents) == {"Ayla", "Burak"}
    ayla, burak = agents["Ayla"], agents["Burak"]
    assert ayla["key"] == day.ayla
    assert (ayla["answered"], ayla["answered_within_threshold"], ayla["handled"]) == (4, 2, 4)
    assert ayla["asa_seconds"] == approx(26.75)
    assert ayla["aht_seconds"] == approx(360)
    assert ayla["staffed_seconds"] == approx(2400)
    assert ayla["handling_seconds"] == approx(1218)
    assert ayla["available_idle_seconds"] == approx(1182)
    assert ayla["occupancy"] == approx(1218 / 2400)
    assert (ayla["offers"], ayla["offers_accepted"], ayla["offers_declined"]) == (3, 3, 0)
    assert (burak["answered"], burak["service_level"], burak["aht_seconds"]) == (1, 1.0, None)
    assert burak["staffed_seconds"] == approx(1800)
    assert burak["handling_seconds"] == approx(790)
    assert burak["occupancy"] == approx(790 / 1800)
    assert (burak["offers"], burak["offers_accepted"], burak["offers_declined"]) == (2, 1, 1)

    # Teams: contacts by the conversation's team, else the queue's (Support: Technical; Sales
    # has none); time figures by membership.
    by_team = await get("team")
    teams = {row["key"]: row for row in by_team["rows"]}
    assert set(teams) == {day.billing, day.technical, None}
    assert teams[day.technical]["offered"] == 4
    assert teams[day.technical]["service_level"] == approx(1 / 3)
    assert teams[day.technical]["occupancy"] == approx(790 / 1800)
    assert teams[day.billing]["offered"] == 0
    assert teams[day.billing]["service_level"] is None
    assert teams[day.billing]["occupancy"] == approx(1218 / 2400)
    assert teams[None]["offered"] == 6

    # Channels: c4 came by WhatsApp, everything else by SMS.
    by_channel = await get("channel")
    channels = {row["key"]: row for row in by_channel["rows"]}
    assert set(channels) == {"sms", "whatsapp"}
    sms = channels["sms"]
    assert (sms["offered"], sms["answered"], sms["abandoned"], sms["short_abandoned"]) == (
        9,
        5,
        1,
        1,
    )
    assert sms["service_level"] == approx(3 / (5 + 0 + 1))  # c3 short, c7 missed
    assert sms["abandonment_rate"] == approx(1 / 9)
    whatsapp = channels["whatsapp"]
    assert (whatsapp["offered"], whatsapp["abandoned"]) == (1, 1)
    assert whatsapp["service_level"] == approx(0.0)
    assert whatsapp["abandonment_rate"] == approx(1.0)

    # A range that ends before the day's contacts has none of them.
    early = await client.get(
        "/api/v1/metrics",
        params={"from": "2026-03-10T00:00", "to": "2026-03-10T09:00", "tz": ISTANBUL},
        headers=headers,
    )
    assert early.status_code == 200 and early.json()["total"]["offered"] == 0


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"to": "2026-03-11"}, "from: required"),
        ({"from": "2026-03-10"}, "to: required"),
        ({"from": "yesterday", "to": "2026-03-11"}, "from: 'yesterday' is neither"),
        ({"from": "2026-03-11", "to": "2026-03-10"}, "to: must be after from"),
        ({"from": "2026-03-10", "to": "2026-03-10"}, "to: must be after from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "at most 366 days"),
        ({**DAY, "group_by": "customer"}, "group_by: one of queue, team, agent, channel"),
        ({**DAY, "tz": "Mars/Base"}, "tz: 'Mars/Base' is not an IANA time zone"),
        ({**DAY, "format": "xml"}, "unknown query parameter 'format'"),
    ],
)
async def test_bad_queries_get_a_400_that_says_what_is_wrong(
    rt: Runtime, client: httpx.AsyncClient, params: dict[str, str], needle: str
) -> None:
    boss = await make_person(rt, "boss@test.local", Role.supervisor, None)
    for path in ("/api/v1/metrics", "/api/v1/metrics.csv"):
        response = await client.get(path, params=params, headers=boss.headers)
        assert response.status_code == 400, response.text
        assert needle in response.json()["detail"]


async def test_the_csv_export_neutralizes_formulas(
    rt: Runtime, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    day = await play_the_day(rt, clock)
    hostile = {
        day.ayla: '=HYPERLINK("http://evil.example","click")',
        day.burak: "+1+cmd|' /C calc'!A0",
    }
    async with rt.db.write() as session:
        from contact_center.models import Agent

        for agent_id, name in hostile.items():
            agent = await session.get(Agent, agent_id)
            assert agent is not None
            agent.name = name
        queue = await session.get(Queue, day.sales)
        assert queue is not None
        queue.name = "@SUM(1+1)"
        support = await session.get(Queue, day.support)
        assert support is not None
        support.name = "\tTabbed"
        session.add(Team(name="-2+3", description="", created_at=clock.now()))
        session.add(Team(name="\rReturn", description="", created_at=clock.now()))
        session.add(TeamMember(team_id=day.billing, agent_id=day.burak))

    async def export(group_by: str) -> list[list[str]]:
        response = await client.get(
            "/api/v1/metrics.csv",
            params={**DAY, "group_by": group_by},
            headers=day.supervisor.headers,
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        assert (
            "metrics-" + group_by + "-2026-03-10-2026-03-11.csv"
            in (response.headers["content-disposition"])
        )
        text = response.content.decode("utf-8-sig")
        return list(csv.reader(io.StringIO(text)))

    agents = await export("agent")
    assert agents[0][:4] == ["group_by", "key", "name", "offered"]
    names = {row[2] for row in agents[1:]}
    assert names == {"'" + n for n in hostile.values()} | {"Total"}
    queues = {row[2] for row in (await export("queue"))[1:]}
    assert queues == {"'@SUM(1+1)", "'\tTabbed", "Total"}
    teams = {row[2] for row in (await export("team"))[1:]}
    assert {"'-2+3", "'\rReturn", "Billing", "Technical"} <= teams
    # No cell of any export starts with a character a spreadsheet would evaluate.
    for group_by in ("queue", "team", "agent", "channel"):
        for row in await export(group_by):
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (group_by, cell)
    # The figures are the JSON report's.
    totals = (await export("queue"))[-1]
    header = (await export("queue"))[0]
    assert totals[header.index("offered")] == "10"
    assert float(totals[header.index("service_level")]) == approx(3 / 7, abs=1e-6)
