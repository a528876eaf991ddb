"""Phone numbers to E.164 ("+14155550100"), with errors that say what is wrong with the number.

Uses Google's libphonenumber metadata (the ``phonenumbers`` package): numbers written nationally
("(415) 555-0100") need the campaign's ``default_region``; numbers with a ``+`` or ``00`` prefix do not.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

__all__ = ["NumberError", "normalize_e164"]

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "no country code: write it as +<country code>... "
    "or set the campaign's default_region",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_POSSIBLE_ERRORS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "wrong number of digits for its country",
}


class NumberError(ValueError):
    """A number that cannot be dialled; ``str()`` names the number and the problem."""

    def __init__(self, raw: str, reason: str) -> None:
        self.raw = raw
        self.reason = reason
        super().__init__(f"{raw!r}: {reason}")


def normalize_e164(raw: str, default_region: str | None = None) -> str:
    """``raw`` as E.164. ``default_region`` (ISO 3166 alpha-2, e.g. "US") is used for national numbers."""
    text = (raw or "").strip()
    if not text:
        raise NumberError(raw, "empty")
    region = default_region.upper() if default_region else None
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        raise NumberError(raw, f"unknown default region {default_region!r} (expected ISO code like 'US')")
    if text.startswith("00"):  # international prefix used across most of the world
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE and text.startswith("+"):
            raise NumberError(raw, "unknown country code") from None
        raise NumberError(raw, _PARSE_ERRORS.get(exc.error_type, str(exc))) from None
    if number.extension:
        # Dropping it would call the switchboard instead of the person: refuse rather than lose it.
        raise NumberError(raw, f"has an extension ({number.extension}); extensions cannot be dialled")
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        raise NumberError(raw, _POSSIBLE_ERRORS.get(possible, "not a possible number"))
    if possible == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise NumberError(raw, "a local number without its area code")
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        raise NumberError(raw, f"not a valid number in {where} (unassigned area code or prefix)")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)
