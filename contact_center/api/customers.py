"""Customers: list/search, create, show, edit, add identities, merge."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from contact_center import events
from contact_center.api.common import Page, clamp, current_agent, runtime_of
from contact_center.customers import MergeError, merge_customers
from contact_center.identities import IdentityRef, InvalidIdentity
from contact_center.models import Customer, CustomerIdentity
from contact_center.views import customer_view


class IdentityBody(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    address: str
    display_name: str | None = None


# Profile fields are the agents' free-form notes about a customer: bounded so that one
# request cannot store megabytes on a customer that every view of them then carries.
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTES_BYTES = 16 * 1024
Name = Annotated[str, msgspec.Meta(max_length=200)]
Locale = Annotated[
    str, msgspec.Meta(max_length=35, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
]
Tier = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
Attributes = Annotated[
    dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], Any],
    msgspec.Meta(max_length=MAX_ATTRIBUTES),
]


class CustomerCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name = ""
    locale: Locale | None = None
    tier: Tier = "standard"
    attributes: Attributes = {}
    identities: list[IdentityBody] = []


class CustomerUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    locale: Locale | msgspec.UnsetType | None = msgspec.UNSET
    tier: Tier | msgspec.UnsetType = msgspec.UNSET
    attributes: Attributes | msgspec.UnsetType = msgspec.UNSET


def _check_attributes(attributes: dict[str, Any] | msgspec.UnsetType) -> None:
    if attributes is msgspec.UNSET:
        return
    if len(msgspec.json.encode(attributes)) > MAX_ATTRIBUTES_BYTES:
        raise ClientException(
            f"attributes: at most {MAX_ATTRIBUTES_BYTES // 1024} KiB of profile fields",
            extra={"field": "attributes"},
        )


class MergeBody(msgspec.Struct, forbid_unknown_fields=True):
    source_id: int
    target_id: int


def _refs(items: list[IdentityBody]) -> list[IdentityRef]:
    try:
        return [IdentityRef.of(i.kind, i.address, i.display_name) for i in items]
    except InvalidIdentity as exc:
        raise ClientException(str(exc)) from None


class CustomerController(Controller):
    path = "/api/v1/customers"
    tags = ["customers"]

    @get("/")
    async def list_customers(
        self,
        request: Request[Any, Any, Any],
        q: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
        offset: FromQuery[int] = 0,
    ) -> Page:
        """Customers, newest first; ``q`` matches name, email, phone or any identity."""
        rt = runtime_of(request)
        limit, offset = clamp(limit, offset)
        query = select(Customer).where(Customer.merged_into_id.is_(None))
        if q:
            like = f"%{q.strip().lower()[:100]}%"
            query = query.where(
                or_(
                    func.lower(Customer.name).like(like),
                    func.lower(Customer.email).like(like),
                    Customer.phone.like(like),
                    Customer.id.in_(
                        select(CustomerIdentity.customer_id).where(
                            func.lower(CustomerIdentity.address).like(like)
                        )
                    ),
                )
            )
        async with rt.db.read() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = (
                await session.scalars(
                    query.order_by(Customer.id.desc()).limit(limit).offset(offset)
                )
            ).all()
            items = [customer_view(c, list(c.identities)) for c in rows]
        return Page(items, total or 0, limit, offset)

    @post("/")
    async def create_customer(
        self, request: Request[Any, Any, Any], data: JSONBody[CustomerCreate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        _check_attributes(data.attributes)
        refs = _refs(data.identities)
        now = rt.clock.now()
        try:
            async with rt.db.write() as session:
                customer = Customer(
                    name=data.name.strip()[:200],
                    locale=data.locale,
                    tier=data.tier,
                    attributes=data.attributes,
                    email=next((r.address for r in refs if r.kind == "email"), None),
                    phone=next((r.address for r in refs if r.kind == "phone"), None),
                    created_at=now,
                    updated_at=now,
                )
                session.add(customer)
                await session.flush()
                identities = [
                    CustomerIdentity(
                        customer_id=customer.id,
                        kind=r.kind,
                        address=r.address,
                        display_name=r.display_name,
                        created_at=now,
                    )
                    for r in refs
                ]
                session.add_all(identities)
                await session.flush()
                view = customer_view(customer, identities)
                events.append(
                    session, "customer.created", view, clock=rt.clock, customer_id=customer.id
                )
        except IntegrityError:
            raise ClientException(
                "one of these identities already belongs to another customer", status_code=409
            ) from None
        await rt.committed()
        return view

    @get("/{customer_id:int}")
    async def get_customer(
        self, request: Request[Any, Any, Any], customer_id: FromPath[int]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        async with rt.db.read() as session:
            customer = await session.get(Customer, customer_id)
            if customer is None:
                raise NotFoundException("customer not found")
            return customer_view(customer, list(customer.identities))

    @patch("/{customer_id:int}")
    async def update_customer(
        self,
        request: Request[Any, Any, Any],
        customer_id: FromPath[int],
        data: JSONBody[CustomerUpdate],
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        _check_attributes(data.attributes)
        async with rt.db.write() as session:
            customer = await session.get(Customer, customer_id)
            if customer is None:
                raise NotFoundException("customer not found")
            for field in ("name", "locale", "tier", "attributes"):
                value = getattr(data, field)
                if value is not msgspec.UNSET:
                    setattr(customer, field, value)
            customer.updated_at = rt.clock.now()
            await session.flush()
            view = customer_view(customer, list(customer.identities))
            events.append(
                session, "customer.updated", view, clock=rt.clock, customer_id=customer.id
            )
        await rt.committed()
        return view

    @post("/{customer_id:int}/identities")
    async def add_identity(
        self,
        request: Request[Any, Any, Any],
        customer_id: FromPath[int],
        data: JSONBody[IdentityBody],
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        (ref,) = _refs([data])
        try:
            async with rt.db.write() as session:
                customer = await session.get(Customer, customer_id)
                if customer is None:
                    raise NotFoundException("customer not found")
                session.add(
                    CustomerIdentity(
                        customer_id=customer.id,
                        kind=ref.kind,
                        address=ref.address,
                        display_name=ref.display_name,
                        created_at=rt.clock.now(),
                    )
                )
                await session.flush()
                await session.refresh(customer, ["identities"])
                view = customer_view(customer, list(customer.identities))
                events.append(
                    session, "customer.updated", view, clock=rt.clock, customer_id=customer.id
                )
        except IntegrityError:
            raise ClientException(
                "this identity belongs to another customer: merge the two customers instead",
                status_code=409,
            ) from None
        await rt.committed()
        return view

    @post("/merge", status_code=200)
    async def merge(
        self, request: Request[Any, Any, Any], data: JSONBody[MergeBody]
    ) -> dict[str, Any]:
        """Merge ``source_id`` into ``target_id``; the source's identities, conversations and
        messages move to the target."""
        rt = runtime_of(request)
        agent = current_agent(request)
        try:
            async with rt.db.write() as session:
                target = await merge_customers(
                    session,
                    source_id=data.source_id,
                    target_id=data.target_id,
                    clock=rt.clock,
                    acting_agent_id=agent.id,
                )
                await session.refresh(target, ["identities"])
                view = customer_view(target, list(target.identities))
        except LookupError:
            raise NotFoundException("customer not found") from None
        except MergeError as exc:
            raise ClientException(str(exc), status_code=409) from None
        await rt.committed()
        return view
