"""Normalizing customer addresses, so one person is one identity whatever the channel sent."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from contact_center.models import IdentityKind

# Kinds that address the same thing (a phone number): a WhatsApp message from a number that
# already wrote by SMS belongs to the same customer.
PHONE_FAMILY: frozenset[str] = frozenset({IdentityKind.phone, IdentityKind.whatsapp})


class InvalidIdentity(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class IdentityRef:
    kind: str
    address: str
    display_name: str | None = None

    @classmethod
    def of(cls, kind: str, address: str, display_name: str | None = None) -> IdentityRef:
        return cls(kind, normalize(kind, address), display_name)


def normalize_phone(raw: str, region: str | None = None) -> str:
    value = raw.strip()
    for prefix in ("whatsapp:", "tel:", "sms:"):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentity(f"not a phone number: {raw!r}") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentity(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    value = raw.strip().strip("<>").strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or " " in value or "." not in domain:
        raise InvalidIdentity(f"not an email address: {raw!r}")
    # Domains are case-insensitive; local parts are in practice too (every major provider).
    return f"{local}@{domain}".lower()


# Parsing a phone number (phonenumbers) costs tens of microseconds, a large part of an inbound
# message's Python time, and the same people write again and again: the normalized form is kept
# per raw address (a bounded cache; an address that does not normalize raises every time).
@lru_cache(maxsize=32768)
def normalize(kind: str, address: str) -> str:
    try:
        kind = IdentityKind(kind)
    except ValueError:
        raise InvalidIdentity(f"unknown identity kind {kind!r}") from None
    if kind == IdentityKind.email:
        return normalize_email(address)
    if kind in PHONE_FAMILY:
        return normalize_phone(address)
    value = address.strip()
    if not value or len(value) > 254:
        raise InvalidIdentity(f"empty or too long {kind} address")
    return value
