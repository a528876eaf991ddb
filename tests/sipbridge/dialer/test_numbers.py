"""E.164 normalisation: good numbers in every common spelling, and a clear reason for each bad one."""

from __future__ import annotations

import pytest

from sipbridge.dialer.numbers import NumberError, normalize_e164


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(415) 555-0100", "US", "+14155550100"),
        ("415.555.0100", "us", "+14155550100"),
        ("+1 415 555 0100", None, "+14155550100"),
        ("+1-415-555-0100", "GB", "+14155550100"),  # + wins over the default region
        ("1 415 555 0100", "US", "+14155550100"),
        ("  +14155550100  ", None, "+14155550100"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0044 20 7946 0958", None, "+442079460958"),
        ("+49 30 901820", None, "+4930901820"),
    ],
)
def test_normalises(raw: str, region: str | None, e164: str) -> None:
    assert normalize_e164(raw, region) == e164


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "US", "empty"),
        ("   ", "US", "empty"),
        ("abc", "US", "not a phone number"),
        ("4155550100", None, "no country code"),
        ("+999 1234", None, "unknown country code"),
        ("123", "US", "too short"),
        ("+1 415 555 01001", None, "too long"),
        ("555-0100", "US", "local number without its area code"),
        ("+1 099 555 0100", None, "not a valid number"),
        ("415-555-0100 ext 12", "US", "extension"),
        ("(415) 555-0100", "XX", "unknown default region"),
    ],
)
def test_rejects_with_reason(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(NumberError, match=reason) as info:
        normalize_e164(raw, region)
    assert info.value.raw == raw
    assert repr(raw) in str(info.value)  # the message names the number as written
