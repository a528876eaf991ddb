"""en-US: how a US phone agent reads numbers, dates, money, IDs and addresses aloud.

The rules, in priority order (an earlier rule wins at the same position):
markup (Dia2 speaker and break tags pass through) · email · URL · phone (validated by `phonenumbers`) ·
dates (ISO, US numeric, month names) · times · money · percentages · year ranges · ordinals · decades ·
dotted initialisms · abbreviations · alphanumeric IDs · numbers · ranges · symbols · consonant acronyms.
Anything else (ordinary words) is left exactly as written.
"""

from __future__ import annotations

import datetime
import re

import phonenumbers

from sipbridge.text.numbers_en import (
    DIGITS,
    MAX_WORDS_DIGITS,
    cardinal,
    decimal,
    digits,
    grouped_digits,
    integer_words,
    ordinal,
    plural_tens,
    year,
)
from sipbridge.text.rules import Rule, RuleSet, after, before, sentence_ends_after, word_before

NAME = "en-US"

MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_MONTH_OF = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}
_MONTH_OF.update({m[:3].lower(): i + 1 for i, m in enumerate(MONTHS)})
_MONTH_OF["sept"] = 9
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)"
)

# Abbreviation → spoken form. Titles come before a name and never end a sentence; the others may.
TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor",
          "Rev": "Reverend", "Sen": "Senator", "Gov": "Governor", "Capt": "Captain", "Sgt": "Sergeant",
          "Lt": "Lieutenant"}  # fmt: skip
ABBREVIATIONS = {
    "St": "Street", "Ave": "Avenue", "Blvd": "Boulevard", "Rd": "Road", "Ln": "Lane", "Hwy": "Highway",
    "Pkwy": "Parkway", "Ct": "Court", "Pl": "Place", "Sq": "Square", "Mt": "Mount", "Ft": "Fort",
    "Apt": "Apartment", "Ste": "Suite", "Bldg": "Building", "Fl": "Floor", "Dept": "Department",
    "Inc": "Incorporated", "Ltd": "Limited", "Co": "Company", "Corp": "Corporation", "Bros": "Brothers",
    "Jr": "Junior", "Sr": "Senior", "Assn": "Association", "Univ": "University", "Mgr": "Manager",
    "Mon": "Monday", "Tue": "Tuesday", "Tues": "Tuesday", "Wed": "Wednesday", "Thu": "Thursday",
    "Thurs": "Thursday", "Fri": "Friday", "Sat": "Saturday", "Sun": "Sunday",
    "etc": "et cetera", "vs": "versus", "approx": "approximately", "ext": "extension", "dept": "department",
    "hr": "hour", "hrs": "hours", "min": "minutes", "mins": "minutes", "sec": "seconds", "yr": "year",
    "yrs": "years", "mo": "month", "mos": "months", "wk": "week", "wks": "weeks", "est": "estimated",
    "e.g": "for example", "i.e": "that is", "a.k.a": "also known as", "Ph.D": "P H D",
}  # fmt: skip
ABBREVIATIONS.update(
    {k[0].upper() + k[1:]: v[0].upper() + v[1:] for k, v in list(ABBREVIATIONS.items()) if k[0].islower()}
)  # "Approx." at a sentence start: "Approximately"
ABBREVIATIONS.update({m[:3]: m for m in MONTHS if m != "May"})
ABBREVIATIONS["Sept"] = "September"
_TITLE_OR_PLACE = {"Dr": ("Doctor", "Drive"), "St": ("Saint", "Street")}  # the two ambiguous ones
_MID_SENTENCE = {"e.g", "i.e", "a.k.a", "vs", "approx", "est"}
_ABBR = "|".join(sorted((re.escape(k) for k in (*ABBREVIATIONS, *TITLES)), key=len, reverse=True))
_NEEDS_NUMBER = {"No": "number", "Nos": "numbers", "no": "number", "Vol": "volume", "pg": "page",
                 "pp": "pages"}  # fmt: skip

CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
              "£": ("pound", "pounds", "penny", "pence")}  # fmt: skip
_PER = {"hr": "hour", "h": "hour", "wk": "week", "mo": "month", "yr": "year"}
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SCALES = {"k": "thousand", "m": "million", "mm": "million", "b": "billion", "bn": "billion"}
YEAR_CUES = {"in", "since", "from", "until", "till", "til", "by", "of", "during", "before", "after",
             "through", "year", "around", "circa", "early", "late", "mid", "class", "fall", "spring",
             "summer", "winter", "to", "and", "between"}  # fmt: skip
# Words after which a number is read digit by digit ("zip 94107", "extension 204", "room 12").
DIGIT_CUES = {"zip", "code", "pin", "id", "number", "extension", "ext", "account", "room", "suite", "unit",
              "flight", "badge", "employee", "apartment", "apt", "ste", "#", "no", "ssn",
              "digits"}  # fmt: skip
_DIGIT_PHRASE = re.compile(
    r"(?:\bends? in|\bending in|\blast (?:four|4|two|2)(?: digits)?(?: are| is)?):? $", re.I
)
# A bare 1900-2099 is a year ("the 2023 event", "Q3 2023") unless a quantity word is next to it.
QUANTITY_BEFORE = set(
    "about approximately approx over under nearly almost total exactly only than some another additional all "
    "paid owe owes costs cost".split()
)
QUANTITY_AFTER = set(
    "people employees units items dollars hours calls times days miles members staff customers users workers "
    "points words pages copies feet pounds minutes seconds jobs positions applicants records".split()
)
_NEXT_WORD = re.compile(r"\s+([A-Za-z]+)")
US_STATES = dict(
    zip(
        "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
        "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC".split(),
        "Alabama,Alaska,Arizona,Arkansas,California,Colorado,Connecticut,Delaware,Florida,Georgia,Hawaii,Idaho,"
        "Illinois,Indiana,Iowa,Kansas,Kentucky,Louisiana,Maine,Maryland,Massachusetts,Michigan,Minnesota,"
        "Mississippi,Missouri,Montana,Nebraska,Nevada,New Hampshire,New Jersey,New Mexico,New York,"
        "North Carolina,North Dakota,Ohio,Oklahoma,Oregon,Pennsylvania,Rhode Island,South Carolina,"
        "South Dakota,Tennessee,Texas,Utah,Vermont,Virginia,Washington,West Virginia,Wisconsin,"
        "Wyoming,D C".split(","),
        strict=True,
    )
)
# fmt: off
SPELLED = {"EST", "EDT", "CST", "CDT", "MST", "MDT", "PST", "PDT", "ET", "CT", "MT", "PT", "UTC", "GMT",
           "IL", "HR", "CEO", "CFO", "COO", "CTO", "IT", "PTO", "FAQ", "USA", "LLC", "PO", "FY", "YoY"}
# fmt: on
_SPELL_AS = {"YoY": "year over year", "FY": "fiscal year", "PTO": "P T O"}
CURRENCY_CODES = {"USD": "$", "EUR": "€", "GBP": "£"}
# fmt: off
UNITS = {"hr": "hour", "hrs": "hours", "h": "hour", "wk": "week", "wks": "weeks", "mo": "month", "yr": "year",
         "yrs": "years", "min": "minute", "mins": "minutes"}
PER_UNITS = {"hour", "hr", "h", "day", "week", "wk", "month", "mo", "year", "yr", "person", "unit", "mile",
             "shift", "visit", "call", "item", "night"}
# fmt: on
TLD_WORDS = {"com", "org", "net", "gov", "info", "biz", "edu"}
_VOWELS = set("AEIOUaeiou")

B = r"(?<![\w@])"  # left edge of a token
E = r"(?![\w@])"  # right edge
NUM = r"\d{1,3}(?:,\d{3})+|\d+"
AMOUNT = rf"(?:{NUM})(?:\.\d+)?|\.\d+"


# ------------------------------------------------------------------------------------------ helpers


def letters(text: str) -> str:
    """Spelled: "EMP" E M P."""
    return " ".join(text.upper())


def say_run(run: str) -> str:
    """One letter run of an ID: a pronounceable word stays a word ("Acme"), a code is spelled ("EMP")."""
    if (run.isupper() and len(run) <= 4) or len(run) <= 2 or not (_VOWELS & set(run)):
        return letters(run)
    return run


def say_chunk(text: str) -> str:
    """A run of letters and digits (email user, URL part): words kept, digits one by one."""
    parts = re.findall(r"[A-Za-z]+|\d+", text)
    return " ".join(p if p.isalpha() and (_VOWELS & set(p) or len(p) > 3) else
                    digits(p) if p.isdigit() else letters(p) for p in parts)  # fmt: skip


def number_words(text: str) -> str:
    """An amount as written: "52,300" fifty-two thousand three hundred; "3.14" three point one four."""
    whole, _, frac = text.partition(".")
    if frac:
        return decimal(whole, frac)
    return integer_words(whole)


def keep_period(m: re.Match[str], said: str) -> str:
    return said + "." if m.group(0).endswith(".") and sentence_ends_after(m) else said


# ------------------------------------------------------------------------------------------ rules


def say_markup(m: re.Match[str]) -> str:
    return m.group(0)


def say_email(m: re.Match[str]) -> str:
    user, host = m.group("em_user").lower(), m.group("em_host").lower()
    spoken_user = re.sub(
        r"[._+-]|[A-Za-z0-9]+",
        lambda p: (
            {".": " dot ", "_": " underscore ", "-": " dash ", "+": " plus "}.get(p.group(0))
            or say_chunk(p.group(0))
        ),
        user,
    )
    return f"{spoken_user} at {say_host(host)}".replace("  ", " ").strip()


def say_host(host: str) -> str:
    labels = host.split(".")
    spoken = []
    for i, label in enumerate(labels):
        last = i == len(labels) - 1
        if label.lower() == "www":
            spoken.append("W W W")
        elif last and label.lower() not in TLD_WORDS and len(label) <= 3:
            spoken.append(letters(label))
        else:
            spoken.append(" dash ".join(say_chunk(p) for p in label.split("-")))
    return " dot ".join(spoken)


def say_url(m: re.Match[str]) -> str:
    url = re.sub(r"^(?:https?://)", "", m.group("url"), flags=re.I)
    url = url.lower() if url.isupper() or "/" not in url else url  # paths may be case-sensitive, hosts not
    host, _, path = url.partition("/")
    said = say_host(host)
    if path.strip("/"):
        pieces = [say_chunk(p) for p in re.split(r"[/_.-]+", path) if p]
        said += " slash " + " slash ".join(p for p in pieces if p)
    return said


def say_phone(m: re.Match[str]) -> str | None:
    raw = m.group("ph")
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    national = str(number.national_number)
    international = raw.lstrip().startswith("+")
    if number.country_code == 1:
        if len(national) == 7:
            groups = [national[:3], national[3:]]
        else:
            if not phonenumbers.is_valid_number(number) and not re.search(r"[()\s.-]", raw):
                return None  # ten bare digits that are no US number: an ID, read by the number rule
            groups = [national[:3], national[3:6], national[6:]]
    else:
        formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        groups = re.findall(r"\d+", formatted)[1:]
    spoken = [("eight hundred" if g == "800" and i == 0 and len(groups) == 3 else digits(g))
              for i, g in enumerate(groups)]  # fmt: skip
    lead = ""
    if international:
        lead = f"plus {digits(str(number.country_code))}, "
    elif re.match(r"\s*1[\s.-]", raw):
        lead = "one, "
    said = lead + ", ".join(spoken)
    ext = m.group("ph_ext")
    return f"{said}, extension {digits(ext)}" if ext else said


def date_words(y: int | None, mo: int, d: int | None) -> str | None:
    try:
        datetime.date(y or 2000, mo, d or 1)
    except ValueError:
        return None
    said = MONTHS[mo - 1] + (f" {ordinal(d)}" if d else "")
    return f"{said}, {year(y)}" if y is not None and d else (f"{said} {year(y)}" if y is not None else said)


def say_iso_date(m: re.Match[str]) -> str | None:
    return date_words(int(m.group("iso_y")), int(m.group("iso_m")), int(m.group("iso_d")))


def _two_digit_year(text: str) -> int:
    y = int(text)
    return y if len(text) == 4 else (2000 + y if y < 50 else 1900 + y)


def say_us_date(m: re.Match[str]) -> str | None:
    mo, d, y = int(m.group("us_m")), int(m.group("us_d")), m.group("us_y")
    if y is None:
        if m.group("us_sep") != "/":
            return None
        if mo < d <= 10 and word_before(m) not in ("on", "by", "due", "until", "since", "from", "before"):
            return None  # 1/2, 3/4: a fraction (the fraction rule reads it)
    return date_words(_two_digit_year(y) if y else None, mo, d)


def say_month_date(m: re.Match[str]) -> str | None:
    if m.group("md_mon"):
        mo = _MONTH_OF[m.group("md_mon").lower().rstrip(".")]
        d, y = int(m.group("md_d")), m.group("md_y")
        if d > 31:  # "March 2019": month and year
            return date_words(d, mo, None) if 1000 <= d <= 2999 and y is None else None
        return date_words(int(y) if y else None, mo, d)
    mo = _MONTH_OF[m.group("dm_mon").lower().rstrip(".")]
    d, y = int(m.group("dm_d")), m.group("dm_y")
    said = date_words(int(y) if y else None, mo, d)
    if said is None:
        return None
    the = "" if word_before(m) == "the" else "the "
    return f"{the}{ordinal(d)} of {MONTHS[mo - 1]}" + (f", {year(int(y))}" if y else "")


def _meridiem(text: str | None) -> str | None:
    if not text:
        return None
    return "A M" if text.strip()[0] in "aA" else "P M"


def clock(h: int, mi: int, ap: str | None) -> str:
    if ap is None and (h > 12 or h == 0):  # 24-hour time: said the 12-hour way with A M / P M
        ap = "P M" if h >= 12 else "A M"
        h = h - 12 if h > 12 else (12 if h == 0 else h)
    if h == 12 and mi == 0 and ap is not None:
        return "noon" if ap == "P M" else "midnight"
    minutes = "" if mi == 0 else (f" oh {cardinal(mi)}" if mi < 10 else f" {cardinal(mi)}")
    if ap is None:
        return cardinal(h) + (minutes or " o'clock")
    return f"{cardinal(h)}{minutes} {ap}"


def say_time(m: re.Match[str]) -> str | None:
    if m.group("t_h") is not None:
        h, mi = int(m.group("t_h")), int(m.group("t_m"))
        ap = _meridiem(m.group("t_ap"))
        if h > 23 or (ap and (h > 12 or h == 0)):
            return None
        said = clock(h, mi, ap)
        if m.group("t_s") and int(m.group("t_s")):
            said += f" and {cardinal(int(m.group('t_s')))} seconds"
    else:
        h, ap = int(m.group("th_h")), _meridiem(m.group("th_ap"))
        if not 1 <= h <= 12:
            return None
        said = clock(h, 0, ap)
    if m.group("t_noon"):
        said = "noon" if h == 12 else said
    return keep_period(m, said)


def say_money(m: re.Match[str]) -> str:
    names = CURRENCIES[m.group("mo_cur")]
    scale = (m.group("mo_sl") or m.group("mo_sw") or "").lower()
    said = money_words(m.group("mo_amt"), m.group("mo_amt2"), _SCALES.get(scale, scale), names)
    per = m.group("mo_per")
    per_unit = f" per {_PER.get(per.lower(), per)}" if per else ""
    return ("minus " if m.group("mo_neg") else "") + said + per_unit


def money_words(amount: str, second: str | None, scale: str, names: tuple[str, str, str, str]) -> str:
    """ "52,300.50" fifty-two thousand three hundred dollars and fifty cents; "1.5" + million; "5" to "10"."""
    one, many, sub_one, sub_many = names
    if second:
        return f"{number_words(amount)} to {number_words(second)}{' ' + scale if scale else ''} {many}"
    if scale:
        return f"{number_words(amount)} {scale} {many}"
    whole_text, _, frac = amount.partition(".")
    if len(whole_text.replace(",", "")) > MAX_WORDS_DIGITS:
        return f"{integer_words(whole_text)}{' point ' + digits(frac) if frac else ''} {many}"
    whole = int(whole_text.replace(",", "") or "0")
    if len(frac) > 2:
        return f"{number_words(amount)} {many}"
    cents = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if whole or not cents:
        parts.append(f"{cardinal(whole)} {one if whole == 1 else many}")
    if cents:
        parts.append(f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts)


def say_percent(m: re.Match[str]) -> str:
    first = number_words(m.group("pc_a"))
    if m.group("pc_b"):
        return f"{first} to {number_words(m.group('pc_b'))} percent"
    return ("minus " if m.group("pc_neg") else "") + f"{first} percent"


def say_year_range(m: re.Match[str]) -> str | None:
    a, b = m.group("yr_a"), m.group("yr_b")
    end = int(b) if len(b) == 4 else int(a[:2] + b)
    if end <= int(a):
        return None
    return f"{year(int(a))} to {year(end) if len(b) == 4 else cardinal(int(b))}"


def say_ordinal(m: re.Match[str]) -> str:
    n = m.group("or_n").replace(",", "")
    return ordinal(int(n)) if len(n) <= MAX_WORDS_DIGITS else grouped_digits(n)


def say_decade(m: re.Match[str]) -> str:
    if m.group("dc_c"):
        century = int(m.group("dc_c"))
        tens = int(m.group("dc_d"))
        if tens == 0:
            return f"{cardinal(century * 100)}s" if century == 20 else f"{cardinal(century)} hundreds"
        return f"{cardinal(century)} {plural_tens(tens)}"
    return plural_tens(int(m.group("dc_s")))


def say_initialism(m: re.Match[str]) -> str:
    """ "U.S." U S; its last period stays only where the text or line ends ("the U.S. Army" is one clause)."""
    said = letters(m.group("in_l").replace(".", ""))
    return said + "." if after(m, 1) in ("", "\n") else said


def say_abbreviation(m: re.Match[str]) -> str | None:
    word = m.group("ab_w")
    if word in _TITLE_OR_PLACE:
        return say_title_or_place(m, word)
    said = TITLES.get(word) or ABBREVIATIONS.get(word)
    if said is None:
        return None
    if word in TITLES or word.lower() in _MID_SENTENCE:
        return said  # these never end a sentence: their period is not one
    return keep_period(m, said)


_STREET_BEFORE = re.compile(r"(?:\d+\w*|[A-Z][a-z]+)\s+$")
_SENTENCE_START = re.compile(r"(?:^|[.!?:\n]\s*|\[S[12]\]\s*)[A-Z][a-z]+\s+$")


def say_title_or_place(m: re.Match[str], word: str) -> str:
    """Dr. and St.: "Dr. Smith" Doctor, "Elm Dr." Drive; "St. Louis" Saint, "Main St." Street. A title comes
    before a capitalised name and not after a street name (a number or a capitalised word that does not
    start the sentence)."""
    title, place = _TITLE_OR_PLACE[word]
    nxt, prev = after(m, 2), before(m, 40)
    name_follows = nxt[:1] == " " and nxt[1:2].isupper()
    street_before = bool(_STREET_BEFORE.search(prev)) and not _SENTENCE_START.search(prev)
    return title if name_follows and not street_before else keep_period(m, place)


def say_needs_number(m: re.Match[str]) -> str:
    return _NEEDS_NUMBER[m.group("nn_w")]


def say_id(m: re.Match[str]) -> str | None:
    token = m.group("id")
    runs = re.findall(r"[A-Za-z]+|\d+", token)
    spoken: list[str] = []  # hyphenated parts are read with a pause between them, the rest run together
    for i, run in enumerate(runs):
        if run.isdigit():
            word_before_it = i > 0 and not say_run(runs[i - 1]).count(" ") and len(runs[i - 1]) > 2
            spoken.append(cardinal(int(run)) if word_before_it and len(run) <= 2 else grouped_digits(run))
        else:
            spoken.append(say_run(run))
    return (", " if "-" in token else " ").join(spoken)


def say_number(m: re.Match[str]) -> str | None:
    integer, frac = m.group("nu_int"), m.group("nu_frac")
    neg = "minus " if m.group("nu_neg") else ""
    if frac:
        return neg + decimal(integer, frac[1:])
    if "," not in integer:
        cue = word_before(m)
        if cue in DIGIT_CUES or _DIGIT_PHRASE.search(before(m, 30)):
            return digits(integer) if len(integer) <= 5 else grouped_digits(integer)
        if (len(integer) > 1 and integer[0] == "0") or len(integer) >= 7:
            return neg + grouped_digits(integer)  # an ID or account number, not an amount
        if len(integer) <= 4 and not neg and _is_year(m, int(integer), cue):
            return year(int(integer))
    return neg + integer_words(integer)


def _is_year(m: re.Match[str], n: int, cue: str) -> bool:
    if not 1000 <= n <= 2099:
        return False
    if cue in YEAR_CUES or re.search(r"\b(?:Q[1-4]|FY|H[12])\s*$", before(m, 6)):
        return True
    nxt = _NEXT_WORD.match(after(m, 20))
    quantity = cue in QUANTITY_BEFORE or (nxt is not None and nxt.group(1).lower() in QUANTITY_AFTER)
    return 1900 <= n <= 2099 and not quantity


def say_fraction(m: re.Match[str]) -> str | None:
    num, den = int(m.group("fr_n")), int(m.group("fr_d"))
    if den < 2 or den > 10 or num == 0 or num >= den:
        return f"{cardinal(num)} slash {cardinal(den)}"
    if den == 2:
        return "one half" if num == 1 else f"{cardinal(num)} halves"
    if den == 4:
        return "one quarter" if num == 1 else f"{cardinal(num)} quarters"
    denom = ordinal(den)
    return f"{cardinal(num)} {denom if num == 1 else denom + 's'}"


def say_range_dash(m: re.Match[str]) -> str:
    return " to "


def say_slash(m: re.Match[str]) -> str | None:
    left, right = m.group("sl_l"), m.group("sl_r")
    if left.lower() == "and" and right.lower() == "or":
        return "and or"
    if left == "24" and right == "7":
        return "twenty-four seven"
    if left.isdigit() and right.isdigit():
        return None  # numbers: the fraction rule reads them
    if left.isalpha() and right.lower() in PER_UNITS:
        return f"{UNITS.get(left.lower(), left)} per {UNITS.get(right.lower(), right)}"
    if left.isalpha() and right.isalpha():
        return f"{left} or {right}"
    if left[-1].isdigit() and right.isalpha():
        return f"{left} per {UNITS.get(right.lower(), right)}"
    return f"{left} slash {right}"


_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "~": " about ", "°": " degrees",
            "%": " percent", "½": " one half", "¼": " one quarter", "¾": " three quarters", "—": ", ",
            "–": ", ", "…": "...", "•": ", ", "/": " slash "}  # fmt: skip


def say_symbol(m: re.Match[str]) -> str:
    sym = m.group("sy")
    if sym == "#":
        return "number " if after(m, 1).isalnum() else "pound"
    if sym == "*":
        return "star" if not (after(m, 1).strip() and before(m, 1).strip()) and after(m, 1) != "*" else ""
    if sym in ("`", "**", "__", "```"):
        return ""
    return _SYMBOLS[sym]


def say_amp_letters(m: re.Match[str]) -> str:
    a, b = m.group("am_a"), m.group("am_b")
    return f"{letters(a)} and {letters(b)}"


def say_day_range(m: re.Match[str]) -> str:
    if m.group("dr_mf"):
        return keep_period(m, "Monday to Friday")
    first, last = (next(d for d in _DAYS if d.startswith(m.group(g)[:3])) for g in ("dr_a", "dr_b"))
    return keep_period(m, f"{first} to {last}")


def say_digit_groups(m: re.Match[str]) -> str:
    """SSN 123-45-6789, card 4111 1111 1111 1111: each group digit by digit, a pause between groups."""
    return ", ".join(digits(g) for g in re.split(r"[ -]", m.group("dg")))


def say_month_year(m: re.Match[str]) -> str:
    return f"{MONTHS[int(m.group('my_m')) - 1]} {year(int(m.group('my_y')))}"


def say_state_zip(m: re.Match[str]) -> str:
    zip_code = m.group("sz_zip")
    return f"{US_STATES[m.group('sz_st')]} {', '.join(digits(p) for p in zip_code.split('-'))}"


def say_spelled(m: re.Match[str]) -> str:
    word = m.group("sp")
    return _SPELL_AS.get(word) or letters(word.rstrip("#"))


def say_currency_code(m: re.Match[str]) -> str:
    names = CURRENCIES[CURRENCY_CODES[m.group("cc_code") or m.group("cc_code2")]]
    return money_words(m.group("cc_amt") or m.group("cc_amt2"), None, "", names)


def say_version(m: re.Match[str]) -> str:
    return " point ".join(cardinal(int(p)) if len(p) < 4 else digits(p) for p in m.group("ver").split("."))


def say_times(m: re.Match[str]) -> str:
    return f"{cardinal(int(m.group('tx_n')))} times"


def say_degrees(m: re.Match[str]) -> str:
    unit = {"F": " Fahrenheit", "C": " Celsius"}.get(m.group("dg_u") or "", "")
    return f"{number_words(m.group('dg_n'))} degrees{unit}"


def say_direction(m: re.Match[str]) -> str:
    return {"N": "North", "S": "South", "E": "East", "W": "West"}[m.group("dir")]


def say_acronym(m: re.Match[str]) -> str:
    return letters(m.group("ac"))


RULES = (
    Rule("markup", r'(?P<mk>\[S[12]\]|<break\s+time="[0-9]+(?:\.[0-9]*)?s"\s*/?>)', say_markup),
    Rule(
        "email",
        r"(?<![\w.+-])(?P<em_user>[A-Za-z0-9][A-Za-z0-9._%+-]*)@"
        r"(?P<em_host>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})(?![\w-])",
        say_email,
    ),
    Rule(
        "url",
        r"(?<![\w@.-])(?P<url>(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)]"
        r"|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|gov|edu|io|us|co|info|biz|ai)"
        r"(?:/[^\s<>\"]*[^\s<>\".,;:!?)])?)(?![\w@])",
        say_url,
        re.IGNORECASE,
    ),
    Rule(
        "phone",
        r"(?<![\w+])(?P<ph>\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
        r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}|1?\d{10}|\d{3}-\d{4})"
        r"(?:,? ?(?:x|ext\.?|extension) ?(?P<ph_ext>\d{1,6}))?(?![\w-])",
        say_phone,
    ),
    Rule(
        "digit_groups",
        rf"{B}(?P<dg>\d{{3}}-\d{{2}}-\d{{4}}|\d{{4}}(?: \d{{4}}){{3}}|\d{{4}}(?:-\d{{4}}){{3}}){E}(?![-\d])",
        say_digit_groups,
    ),
    Rule("month_year", rf"{B}(?P<my_m>0?[1-9]|1[0-2])/(?P<my_y>(?:19|20)\d\d){E}(?!/)", say_month_year),
    Rule(
        "state_zip",
        rf"(?<![\w.])(?P<sz_st>{'|'.join(US_STATES)}),? (?P<sz_zip>\d{{5}}(?:-\d{{4}})?){E}(?!-)",
        say_state_zip,
    ),
    Rule("version", rf"{B}(?P<ver>\d+\.\d+\.\d+(?:\.\d+)*){E}(?!\.\d)", say_version),
    Rule(
        "iso_date", rf"{B}(?P<iso_y>\d{{4}})-(?P<iso_m>\d{{1,2}})-(?P<iso_d>\d{{1,2}}){E}(?!-)", say_iso_date
    ),
    Rule(
        "us_date",
        rf"{B}(?P<us_m>\d{{1,2}})(?P<us_sep>[/.-])(?P<us_d>\d{{1,2}})"
        rf"(?:(?P=us_sep)(?P<us_y>\d{{4}}|\d{{2}}))?{E}(?![/.-]\d)",
        say_us_date,
    ),
    Rule(
        "month_date",
        rf"(?<![\w.])(?:(?P<md_mon>{_MONTH})\.? (?P<md_d>\d{{1,4}})(?:st|nd|rd|th)?"
        rf"(?:,? (?P<md_y>\d{{4}}))?|(?P<dm_d>\d{{1,2}})(?:st|nd|rd|th)? (?:of )?(?P<dm_mon>{_MONTH})\.?"
        rf"(?:,? (?P<dm_y>\d{{4}}))?)(?![\w@])",
        say_month_date,
    ),
    Rule(
        "time",
        rf"{B}(?:(?P<t_h>\d{{1,2}}):(?P<t_m>[0-5]\d)(?::(?P<t_s>[0-5]\d))?"
        r"(?: ?(?P<t_ap>[AaPp]\.?[Mm]\.?(?![\w.])|[AaPp]\.[Mm]\.))?"
        r"|(?P<th_h>\d{1,2}) ?(?P<th_ap>[AaPp]\.?[Mm]\.?(?![\w.])|[AaPp]\.[Mm]\.))(?P<t_noon> noon)?(?!\w)",
        say_time,
    ),
    Rule(
        "money",
        r"(?<![\w$€£])(?P<mo_neg>-)?(?P<mo_cur>[$€£]) ?(?P<mo_amt>\d{1,3}(?:,\d{3})+(?:\.\d+)?"
        r"|\d+(?:\.\d+)?|\.\d+)(?: ?[-–] ?[$€£]?(?P<mo_amt2>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?))?"
        r"(?:(?P<mo_sl>[kKmMbB]|bn|mm|MM)|(?: (?P<mo_sw>thousand|million|billion|trillion)))?"
        r"(?:/(?P<mo_per>hr|hour|h|day|week|wk|month|mo|year|yr|person|unit))?(?![\w@])",
        say_money,
    ),
    Rule(
        "currency_code",
        rf"{B}(?:(?P<cc_code>USD|EUR|GBP) ?(?P<cc_amt>{AMOUNT})"
        rf"|(?P<cc_amt2>{AMOUNT}) ?(?P<cc_code2>USD|EUR|GBP)){E}",
        say_currency_code,
    ),
    Rule("degrees", rf"(?<![\w.])(?P<dg_n>-?(?:{AMOUNT})) ?° ?(?P<dg_u>[FC])?(?!\w)", say_degrees),
    Rule("times", r"(?<![\w.])(?P<tx_n>\d{1,3})x(?!\w)", say_times),
    Rule(
        "percent",
        rf"(?<![\w.])(?P<pc_neg>-)?(?P<pc_a>{AMOUNT})(?: ?[-–] ?(?P<pc_b>{AMOUNT}))? ?%",
        say_percent,
    ),
    Rule(
        "year_range",
        rf"{B}(?P<yr_a>1[1-9]\d\d|20\d\d) ?[-–] ?(?P<yr_b>1[1-9]\d\d|20\d\d|\d\d){E}(?![-/])",
        say_year_range,
    ),
    Rule("ordinal", r"(?<![\w.])(?P<or_n>\d{1,3}(?:,\d{3})+|\d+)(?:st|nd|rd|th)(?![\w@])", say_ordinal),
    Rule("decade", r"(?<![\w.])(?:(?P<dc_c>1[1-9]|20)(?P<dc_d>\d0)|'(?P<dc_s>\d0))'?s(?![\w@])", say_decade),
    Rule("amp_letters", rf"{B}(?P<am_a>[A-Z]{{1,3}})&(?P<am_b>[A-Z]{{1,3}}){E}", say_amp_letters),
    Rule(
        "day_range",
        rf"{B}(?:(?P<dr_a>(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*)\.? ?[-–] ?"
        r"(?P<dr_b>(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*)\.?|(?P<dr_mf>M-F))(?!\w)",
        say_day_range,
    ),
    Rule("direction", r"(?<=\d )(?P<dir>[NSEW])\.(?= )", say_direction),
    Rule(
        "spelled", rf"(?<![\w.])(?P<sp>{'|'.join(sorted(SPELLED, key=len, reverse=True))})(?!\w)", say_spelled
    ),
    Rule("initialism", r"(?<![\w.])(?P<in_l>(?:[A-Z]\.){2,})(?!\w)", say_initialism),
    Rule("needs_number", r"(?<![\w.])(?P<nn_w>No|Nos|no|Vol|pg|pp)\.(?= ?#?\d)", say_needs_number),
    Rule("abbreviation", rf"(?<![\w.])(?P<ab_w>{_ABBR})\.(?!\w)", say_abbreviation),
    Rule("slash", r"(?<![\w/])(?P<sl_l>[A-Za-z]+|\d+)/(?P<sl_r>[A-Za-z]+|\d+)(?![\w/])", say_slash),
    Rule(
        "id",
        r"(?<![\w@.$€£-])(?P<id>(?=[A-Za-z0-9-]*\d)(?=[A-Za-z0-9-]*[A-Za-z])"
        r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)(?![\w@]|-\w)",
        say_id,
    ),
    Rule("fraction", rf"{B}(?P<fr_n>\d{{1,2}})/(?P<fr_d>\d{{1,2}}){E}(?!/)", say_fraction),
    Rule(
        "number",
        r"(?<![\w.,])(?P<nu_neg>(?<![\w.,-])-)?(?P<nu_int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
        r"(?P<nu_frac>\.\d+)?(?![\w@]|,\d{3})",
        say_number,
    ),
    Rule("point", r"(?<![\w.])\.(?P<pt>\d+)(?![\w@])", lambda m: f"point {digits(m.group('pt'))}"),
    Rule(
        "range_dash",
        r"(?<=[\d%])(?: ?[-–] ?)(?=[$€£]?\d)|(?<=[AaPp][Mm])[-–](?=\d)|(?<=[ap]\.m\.)[-–](?=\d)",
        say_range_dash,
    ),
    Rule("symbol", r"(?P<sy>```|\*\*|__|[&@+=~°%½¼¾—–…•#*`/])", say_symbol),
    Rule("acronym", r"(?<![\w.])(?P<ac>[B-DF-HJ-NP-TV-Z]{2,5})(?!\w|\.\w)", say_acronym),
)

_LOWER_ABBR = "|".join(re.escape(k) for k in ABBREVIATIONS if k[0].islower() and "." not in k)
# Where a rule can start near (rules.RuleSet): digits, symbols, markup, a period after a capital or inside a
# word (initialisms, URLs), lowercase abbreviations, consonant acronyms, day ranges.
GATE = (
    r"[\d$€£%&@#+=~°½¼¾—–…•*`/<\[]|__|[A-Z][a-z]{0,6}\.|\.[A-Za-z]|[A-Z]{2}|[A-Z][a-z][A-Z]|M-F"
    rf"|(?<![\w.])(?:{_LOWER_ABBR}|no|pg|pp)\.|[a-z]+/[a-z]+|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*\.? ?[-–]"
)
RULE_SET = RuleSet(RULES, GATE)

# Words that may join the next word into one reading ("March" 15, "Dr." Smith, "$5" million, "10" am):
# the streaming normaliser holds them back until the word after them is complete.
_STICKY = re.compile(
    rf"[\d$€£#+(]|^(?:{_MONTH}|{_ABBR}|No|Nos|Vol|pg|pp)\.?[,]?$|^[-–/&@°]+$|[-–/]$|^<"
    rf"|^(?:{'|'.join(US_STATES)}|USD|EUR|GBP),?$|^(?:no|pg|pp)\.$",
)


def sticky(word: str) -> bool:
    return bool(_STICKY.search(word))


__all__ = ["DIGITS", "NAME", "RULES", "RULE_SET", "sticky"]
