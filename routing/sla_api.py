"""REST for SLA: business-hours calendars, policies, and a conversation's clocks (§14).

Every change to a policy or a calendar appends ``sla.policies_changed`` in its transaction;
the SLA consumer then re-targets the open clocks (so the API never recomputes clocks itself).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, JSONBody
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.api.common import current_agent, runtime_of, visible_conversation
from contact_center.auth import require
from contact_center.calendars import Calendar
from contact_center.clock import Clock
from contact_center.models import Role
from contact_center.views import ts
from routing.models import BusinessHours, SlaClock, SlaPolicy
from routing.sla import (
    PolicyError,
    check_calendar,
    check_conditions,
    check_escalations,
    check_targets,
    check_warn_at,
    clock_view,
)


def hours_view(row: BusinessHours) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "calendar": row.calendar,
        "created_at": ts(row.created_at),
        "updated_at": ts(row.updated_at),
    }


def policy_view(policy: SlaPolicy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "name": policy.name,
        "position": policy.position,
        "active": policy.active,
        "conditions": policy.conditions,
        "targets": policy.targets,
        "business_hours_id": policy.business_hours_id,
        "warn_at": policy.warn_at,
        "escalations": policy.escalations,
        "created_at": ts(policy.created_at),
        "updated_at": ts(policy.updated_at),
    }


def _changed(session: AsyncSession, clock: Clock, what: str) -> None:
    events.append(session, "sla.policies_changed", {"what": what}, clock=clock)


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 120:
        raise ClientException("name: required, at most 120 characters")
    return value.strip()


class HoursBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    calendar: dict[str, Any]


class HoursUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    calendar: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


def _hours_values(data: HoursBody | HoursUpdate) -> dict[str, Any]:
    values: dict[str, Any] = {}
    try:
        if data.name is not msgspec.UNSET:
            values["name"] = _name(data.name)
        if data.calendar is not msgspec.UNSET:
            values["calendar"] = check_calendar(data.calendar)
    except PolicyError as exc:
        raise ClientException(str(exc)) from None
    return values


class BusinessHoursController(Controller):
    path = "/api/v1/business-hours"
    tags = ["sla"]

    @get("/", guards=[require(Role.supervisor)])
    async def list_hours(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            rows = await session.scalars(select(BusinessHours).order_by(BusinessHours.id))
            return [hours_view(r) for r in rows]

    @post("/", guards=[require(Role.admin)])
    async def create_hours(
        self, request: Request[Any, Any, Any], data: JSONBody[HoursBody]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        values = _hours_values(data)
        now = rt.clock.now()
        try:
            async with rt.db.write() as session:
                row = BusinessHours(**values, created_at=now, updated_at=now)
                session.add(row)
                await session.flush()
                return hours_view(row)
        except IntegrityError:
            raise ClientException("business hours with this name exist", status_code=409) from None

    @get("/{hours_id:int}", guards=[require(Role.supervisor)])
    async def get_hours(
        self, request: Request[Any, Any, Any], hours_id: FromPath[int]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            row = await session.get(BusinessHours, hours_id)
            if row is None:
                raise NotFoundException("business hours not found")
            return hours_view(row)

    @patch("/{hours_id:int}", guards=[require(Role.admin)])
    async def update_hours(
        self, request: Request[Any, Any, Any], hours_id: FromPath[int], data: JSONBody[HoursUpdate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        values = _hours_values(data)
        try:
            async with rt.db.write() as session:
                row = await session.get(BusinessHours, hours_id)
                if row is None:
                    raise NotFoundException("business hours not found")
                for key, value in values.items():
                    setattr(row, key, value)
                row.updated_at = rt.clock.now()
                _changed(session, rt.clock, f"business_hours:{row.id}")
                await session.flush()
                return hours_view(row)
        except IntegrityError:
            raise ClientException("business hours with this name exist", status_code=409) from None

    @delete("/{hours_id:int}", guards=[require(Role.admin)], status_code=204)
    async def delete_hours(self, request: Request[Any, Any, Any], hours_id: FromPath[int]) -> None:
        rt = runtime_of(request)
        async with rt.db.write() as session:
            row = await session.get(BusinessHours, hours_id)
            if row is None:
                raise NotFoundException("business hours not found")
            used = await session.scalar(
                select(SlaPolicy.name).where(SlaPolicy.business_hours_id == hours_id).limit(1)
            )
            if used is not None:
                raise ClientException(
                    f"the SLA policy {used!r} uses these business hours", status_code=409
                )
            await session.delete(row)


class PolicyBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    targets: dict[str, Any]
    position: int = 0
    active: bool = True
    conditions: dict[str, Any] = {}
    business_hours_id: int | None = None
    warn_at: float = 0.8
    escalations: list[Any] = []


class PolicyUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    targets: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    position: int | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET
    conditions: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    business_hours_id: int | msgspec.UnsetType | None = msgspec.UNSET
    warn_at: float | msgspec.UnsetType = msgspec.UNSET
    escalations: list[Any] | msgspec.UnsetType = msgspec.UNSET


CHECKS = {
    "name": _name,
    "targets": check_targets,
    "conditions": check_conditions,
    "escalations": check_escalations,
    "warn_at": check_warn_at,
}


async def _policy_values(session: AsyncSession, data: PolicyBody | PolicyUpdate) -> dict[str, Any]:
    raw = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    try:
        values = {k: CHECKS[k](v) if k in CHECKS else v for k, v in raw.items()}
    except PolicyError as exc:
        raise ClientException(str(exc)) from None
    hours_id = values.get("business_hours_id")
    if hours_id is not None and await session.get(BusinessHours, hours_id) is None:
        raise ClientException("business_hours_id: no such business hours")
    return values


class SlaPolicyController(Controller):
    path = "/api/v1/sla-policies"
    tags = ["sla"]

    @get("/", guards=[require(Role.supervisor)])
    async def list_policies(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            rows = await session.scalars(
                select(SlaPolicy).order_by(SlaPolicy.position, SlaPolicy.id)
            )
            return [policy_view(p) for p in rows]

    @post("/", guards=[require(Role.admin)])
    async def create_policy(
        self, request: Request[Any, Any, Any], data: JSONBody[PolicyBody]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        now = rt.clock.now()
        try:
            async with rt.db.write() as session:
                values = await _policy_values(session, data)
                policy = SlaPolicy(**values, created_at=now, updated_at=now)
                session.add(policy)
                await session.flush()
                _changed(session, rt.clock, f"policy:{policy.id}")
                view = policy_view(policy)
        except IntegrityError:
            raise ClientException("an SLA policy with this name exists", status_code=409) from None
        await rt.committed()
        return view

    @get("/{policy_id:int}", guards=[require(Role.supervisor)])
    async def get_policy(
        self, request: Request[Any, Any, Any], policy_id: FromPath[int]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            policy = await session.get(SlaPolicy, policy_id)
            if policy is None:
                raise NotFoundException("SLA policy not found")
            return policy_view(policy)

    @patch("/{policy_id:int}", guards=[require(Role.admin)])
    async def update_policy(
        self,
        request: Request[Any, Any, Any],
        policy_id: FromPath[int],
        data: JSONBody[PolicyUpdate],
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        try:
            async with rt.db.write() as session:
                policy = await session.get(SlaPolicy, policy_id)
                if policy is None:
                    raise NotFoundException("SLA policy not found")
                for key, value in (await _policy_values(session, data)).items():
                    setattr(policy, key, value)
                policy.updated_at = rt.clock.now()
                _changed(session, rt.clock, f"policy:{policy.id}")
                await session.flush()
                view = policy_view(policy)
        except IntegrityError:
            raise ClientException("an SLA policy with this name exists", status_code=409) from None
        await rt.committed()
        return view

    @delete("/{policy_id:int}", guards=[require(Role.admin)], status_code=204)
    async def delete_policy(
        self, request: Request[Any, Any, Any], policy_id: FromPath[int]
    ) -> None:
        rt = runtime_of(request)
        async with rt.db.write() as session:
            policy = await session.get(SlaPolicy, policy_id)
            if policy is None:
                raise NotFoundException("SLA policy not found")
            await session.delete(policy)
            _changed(session, rt.clock, f"policy:{policy_id}")
        await rt.committed()


@get("/api/v1/conversations/{conversation_id:int}/sla", guards=[require(Role.agent)], tags=["sla"])
async def conversation_sla(
    request: Request[Any, Any, Any], conversation_id: FromPath[int]
) -> list[dict[str, Any]]:
    """The conversation's SLA clocks, newest cycle last, with the time left on open ones."""
    rt = runtime_of(request)
    agent = current_agent(request)
    async with rt.db.read() as session:
        await visible_conversation(session, agent, conversation_id)
        clocks = (
            await session.scalars(
                select(SlaClock)
                .where(SlaClock.conversation_id == conversation_id)
                .order_by(SlaClock.started_at, SlaClock.id)
            )
        ).all()
        calendars: dict[int, Calendar | None] = {}
        out = []
        now = rt.clock.now()
        for clock in clocks:
            calendar = None
            if clock.policy_id is not None and clock.business:
                if clock.policy_id not in calendars:
                    policy = await session.get(SlaPolicy, clock.policy_id)
                    hours = (
                        await session.get(BusinessHours, policy.business_hours_id)
                        if policy is not None and policy.business_hours_id
                        else None
                    )
                    calendars[clock.policy_id] = (
                        Calendar.from_dict(hours.calendar) if hours is not None else None
                    )
                calendar = calendars[clock.policy_id]
            out.append(clock_view(clock, now if clock.open_key else None, calendar))
        return out


route_handlers: list[Any] = [BusinessHoursController, SlaPolicyController, conversation_sla]
