"""Captured fields, normalised: what the caller said about a date, a number or a job title, as a value.

ASR writes what it heard, and callers say dates the way people do: "March twenty nineteen", "the fifteenth of
March, 2019", "nineteen ninety-eight", "two thousand and nine". Every parser here reads spoken numbers as
well as digits, and returns None rather than a guess. The flow keeps the raw words beside each value
(`<field>_heard`), so a wrong normalisation can always be checked against what was said.
"""

from __future__ import annotations

import re

__all__ = ["parse_date", "parse_number", "parse_title", "spoken_numbers"]

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        "january february march april may june july august september october november december".split()
    )
}
_MONTHS |= {m[:3]: n for m, n in _MONTHS.items()} | {"sept": 9}
_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
        " sixteen seventeen eighteen nineteen".split()
    )
}
_UNITS["oh"] = 0  # "twenty oh five"
_TENS = {
    w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())
}
_ORDINALS = {
    w: i + 1
    for i, w in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth"
        " fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split()
    )
}
_ORDINAL_TENS = {"twentieth": 20, "thirtieth": 30}


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+(?:\.\d+)?(?:st|nd|rd|th)?|[^\sa-z\d]", text.lower().replace("-", " "))


def _below_hundred(tokens: list[str], i: int) -> tuple[int, int] | None:
    """A spoken number 0..99 starting at tokens[i] -> (value, tokens used)."""
    word = tokens[i] if i < len(tokens) else ""
    if word in _TENS:
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if nxt in _UNITS and 0 < _UNITS[nxt] < 10 and nxt != "oh":
            return _TENS[word] + _UNITS[nxt], 2
        return _TENS[word], 1
    if word in _UNITS and word != "oh":
        return _UNITS[word], 1
    return None


def _year(tokens: list[str], i: int) -> tuple[int, int] | None:
    """ "twenty nineteen", "nineteen ninety eight", "twenty oh five", "two thousand (and) nine"."""
    word = tokens[i]
    if word == "two" and tokens[i + 1 : i + 2] == ["thousand"]:
        j = i + 2 + (tokens[i + 2 : i + 3] == ["and"])
        rest = _below_hundred(tokens, j) if j < len(tokens) else None
        return (2000 + rest[0], j - i + rest[1]) if rest else (2000, 2)
    if word not in ("nineteen", "twenty") or i + 1 >= len(tokens):
        return None
    century = 1900 if word == "nineteen" else 2000
    nxt = tokens[i + 1]
    if nxt == "oh" and i + 2 < len(tokens) and tokens[i + 2] in _UNITS:
        return century + _UNITS[tokens[i + 2]], 3
    rest = _below_hundred(tokens, i + 1)
    if rest is None or rest[0] < 10:
        return None
    return century + rest[0], 1 + rest[1]


def _ordinal(tokens: list[str], i: int) -> tuple[int, int] | None:
    word = tokens[i]
    if word in _ORDINALS:
        return _ORDINALS[word], 1
    if word in _ORDINAL_TENS:
        return _ORDINAL_TENS[word], 1
    if word in _TENS and i + 1 < len(tokens) and tokens[i + 1] in _ORDINALS and _ORDINALS[tokens[i + 1]] < 10:
        return _TENS[word] + _ORDINALS[tokens[i + 1]], 2
    return None


def spoken_numbers(text: str) -> str:
    """The text with spoken years, ordinals and numbers written as digits, lower case, tokens spaced."""
    tokens, out, i = _tokens(text), [], 0
    while i < len(tokens):
        for reader in (_year, _ordinal, _below_hundred):
            found = reader(tokens, i)
            if found is not None:
                out.append(str(found[0]))
                i += found[1]
                break
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out)


def parse_date(text: str) -> str | None:
    """Month [day] year -> "2019-03" / "2019-03-15"; day month year too; numeric m/d/y -> ISO; a bare year ->
    "2019". Spoken numbers count ("March twenty nineteen")."""
    m = re.search(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b", text)
    if m:
        return _iso(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    low = spoken_numbers(text)
    low = re.sub(r"(\d+)(?:st|nd|rd|th)\b", r"\1", low).replace(" , ", " ")
    month_re = "|".join(sorted(_MONTHS, key=len, reverse=True))
    m = re.search(rf"\b(\d{{1,2}}) (?:of )?({month_re})\b(?: of)? (\d{{4}})\b", low)
    if m:
        return _iso(int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)))
    m = re.search(rf"\b({month_re})\b(?: (?:the )?(\d{{1,2}}))?(?: of)? (\d{{4}})\b", low)
    if m:
        return _iso(int(m.group(3)), _MONTHS[m.group(1)], int(m.group(2)) if m.group(2) else None)
    m = re.search(r"\b(19\d{2}|20\d{2})\b", low)
    return m.group(1) if m else None


def _iso(year: int, month: int, day: int | None) -> str | None:
    if not (1900 <= year <= 2199 and 1 <= month <= 12) or (day is not None and not 1 <= day <= 31):
        return None
    return f"{year}-{month:02d}" + (f"-{day:02d}" if day else "")


def parse_number(text: str) -> int | float | None:
    """The first number said, digits or words ("about twenty five people" -> 25)."""
    for token in spoken_numbers(text).split():
        if re.fullmatch(r"\d+(\.\d+)?", token):
            return float(token) if "." in token else int(token)
    return None


_TITLE_LEAD = re.compile(
    r"^(?:(?:um|uh|well|so|yes|yeah|okay|oh),?\s+)*"
    r"(?:(?:i think|i believe)\s+)?"
    r"(?:(?:her|his|their|the) (?:job )?(?:title|position|role) (?:is|was)"
    r"|(?:she|he|they)(?:'s| is| was| are| were| works| worked)"
    r"(?: (?:working|employed))?(?: as| at)?(?: our)?"
    r"|(?:she|he|they) (?:is|was|were|are) (?:a|an|the|our)"
    r"|works as|worked as|as)\s+",
    re.IGNORECASE,
)
_ARTICLE = re.compile(r"^(?:a|an|the|our)\s+", re.IGNORECASE)
_KEEP_UPPER = {"hr", "it", "ceo", "cfo", "cto", "coo", "vp", "qa", "ui", "ux", "rn", "lpn", "cna", "svp"}
_LOWER = {"of", "and", "the", "for", "in", "to", "at"}


def parse_title(text: str) -> str | None:
    """A job title as it would be written: "She works as a senior software engineer." -> "Senior Software
    Engineer". Lead-ins ("his title is", "she's a") and filler go; None if nothing is left."""
    rest = text.strip().rstrip(".!?,;: ")
    rest = _TITLE_LEAD.sub("", rest, count=1)
    rest = _ARTICLE.sub("", rest, count=1).strip()
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9'&/-]*", rest)
    if not words:
        return None
    out = []
    for i, w in enumerate(words):
        low = w.lower()
        if low in _KEEP_UPPER:
            out.append(low.upper())
        elif low in _LOWER and i > 0:
            out.append(low)
        else:
            out.append(low[:1].upper() + low[1:])
    return " ".join(out)
