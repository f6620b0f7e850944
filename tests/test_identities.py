"""Identity normalization: one person is one address whatever form the channel sent."""

from __future__ import annotations

import pytest

from contact_center.identities import IdentityRef, InvalidIdentity, normalize


def test_phone_forms_normalize_to_e164() -> None:
    for raw in ("+1 415 555 0100", "whatsapp:+14155550100", "tel:+1-415-555-0100", "+14155550100"):
        assert IdentityRef.of("phone", raw).address == "+14155550100"
    assert IdentityRef.of("whatsapp", " +90 532 000 00 00 ").address == "+905320000000"


def test_emails_are_lowercased_and_unwrapped() -> None:
    assert normalize("email", "<Ayse@Example.COM>") == "ayse@example.com"


def test_a_bad_address_is_refused_every_time_not_remembered() -> None:
    # Normalized forms are cached per raw address; a refusal is not an answer to cache.
    for _ in range(3):
        with pytest.raises(InvalidIdentity):
            IdentityRef.of("phone", "not a number")
        with pytest.raises(InvalidIdentity):
            IdentityRef.of("fax", "+14155550100")
    assert IdentityRef.of("phone", "+14155550100").address == "+14155550100"
