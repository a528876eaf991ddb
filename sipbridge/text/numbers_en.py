"""English number words: num2words does the counting, these wrappers give the en-US phone style.

num2words writes British forms ("one hundred and five", "fifty-two thousand, three hundred"); on a phone
line a US speaker says "one hundred five" and the commas would become pauses, so both are taken out.
Results are cached: replies repeat small numbers, and num2words costs ~45 us a call.
"""

from __future__ import annotations

from functools import lru_cache

from num2words import CONVERTER_CLASSES

_EN = CONVERTER_CLASSES["en"]
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _us(words: str) -> str:
    return words.replace(",", "").replace(" and ", " ")


@lru_cache(maxsize=4096)
def cardinal(n: int) -> str:
    if n < 0:
        return "minus " + cardinal(-n)
    return _us(_EN.to_cardinal(n))


@lru_cache(maxsize=1024)
def ordinal(n: int) -> str:
    return _us(_EN.to_ordinal(n))


@lru_cache(maxsize=1024)
def year(n: int) -> str:
    """1999 nineteen ninety-nine, 1905 nineteen oh five, 1900 nineteen hundred, 2005 two thousand five,
    2019 twenty nineteen (US usage: 2001-2009 keep "two thousand")."""
    if 2000 <= n <= 2009:
        return cardinal(n)
    if n < 1000 or n > 9999:
        return cardinal(n)
    return _us(_EN.to_year(n)).replace("oh-", "oh ")


def digits(text: str) -> str:
    """Digit by digit: "0132" zero one three two."""
    return " ".join(DIGITS[ord(c) - 48] for c in text if "0" <= c <= "9")


def grouped_digits(text: str) -> str:
    """Digits read in groups of three, a last group of four split 2+2 ("40213" four zero two, one three):
    how people read back IDs and account numbers so they can be written down."""
    sizes = [3] * (len(text) // 3)
    rest = len(text) % 3
    if rest == 1 and sizes:
        sizes[-1] = 2
        sizes.append(2)
    elif rest:
        sizes.append(rest)
    groups, at = [], 0
    for size in sizes:
        groups.append(digits(text[at : at + size]))
        at += size
    return ", ".join(groups)


MAX_WORDS_DIGITS = 15  # longer numbers (up to the hundreds of trillions) are read digit by digit


def integer_words(text: str) -> str:
    """An integer as written ("52,300"): in words, or digit by digit when it is too long to say as a
    number (num2words refuses huge values, int() refuses 4300+ digits: a reply must never fail on it)."""
    plain = text.replace(",", "")
    return cardinal(int(plain)) if len(plain) <= MAX_WORDS_DIGITS else grouped_digits(plain)


def decimal(integer: str, fraction: str) -> str:
    """ "3", "14" three point one four; "", "5" point five. `integer` may have thousands commas."""
    whole = integer_words(integer) + " " if integer else ""
    return f"{whole}point {digits(fraction)}" if fraction else whole.strip()


def plural_tens(n: int) -> str:
    """Decades: 90 nineties, 20 twenties, 0 hundreds."""
    word = cardinal(n) if n else "hundred"
    return word[:-1] + "ies" if word.endswith("y") else word + "s"
