"""Text normalisation (sipbridge/text): the spoken form of each category, streaming, lexicon, script shaping,
the CLI, and the engines speaking normalised text.

The table is the contract: each row is a written text and what a US phone agent would say for it. Streaming
is checked against the whole-text result at every split point, which is the property the LLM path relies on.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dia2.script import ScriptStream, parse_script
from dia2.state_machine import TokenIds
from dia2.tokenizer import Dia2Tokenizer
from sipbridge.config import ConfigError, EngineConfig, load_config
from sipbridge.engine import make_engine
from sipbridge.engine.base import SpeakParams
from sipbridge.text import normalize
from sipbridge.text.frontend import TextFrontend
from sipbridge.text.lexicon import LexiconEntry
from sipbridge.text.normalizer import Normalizer
from sipbridge.text.shape import ReplyShaper, ShapePolicy
from sipbridge.text.stream import StreamNormalizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "dia2-tiny"

# (category, written, spoken)
CASES = [
    ("cardinal", "I have 3 kids.", "I have three kids."),
    ("cardinal", "There are 42 open roles.", "There are forty-two open roles."),
    ("cardinal", "We hired 100 people.", "We hired one hundred people."),
    ("cardinal", "About 1,234 employees.", "About one thousand two hundred thirty-four employees."),
    ("cardinal", "It was 52,300 miles.", "It was fifty-two thousand three hundred miles."),
    ("cardinal", "A million is 1,000,000.", "A million is one million."),
    ("cardinal", "Zero is 0.", "Zero is zero."),
    ("cardinal", "Room count 17 today.", "Room count seventeen today."),
    ("cardinal", "We made 101 calls.", "We made one hundred one calls."),
    ("cardinal", "Temperature was -7 at night.", "Temperature was minus seven at night."),
    (
        "cardinal",
        "Count 999,999 please.",
        "Count nine hundred ninety-nine thousand nine hundred ninety-nine please.",
    ),
    ("cardinal", "It took 12 weeks.", "It took twelve weeks."),
    ("ordinal", "He came 1st.", "He came first."),
    ("ordinal", "She was 2nd in line.", "She was second in line."),
    ("ordinal", "The 3rd floor.", "The third floor."),
    ("ordinal", "The 4th quarter.", "The fourth quarter."),
    ("ordinal", "Our 11th year.", "Our eleventh year."),
    ("ordinal", "The 12th month.", "The twelfth month."),
    ("ordinal", "The 13th day.", "The thirteenth day."),
    ("ordinal", "The 21st century.", "The twenty-first century."),
    ("ordinal", "The 22nd of them.", "The twenty-second of them."),
    ("ordinal", "His 23rd try.", "His twenty-third try."),
    ("ordinal", "The 100th caller.", "The one hundredth caller."),
    ("ordinal", "The 101st day.", "The one hundred first day."),
    ("decimal", "Pi is 3.14.", "Pi is three point one four."),
    ("decimal", "It rose 0.5 points.", "It rose zero point five points."),
    ("decimal", "It fell .25 points.", "It fell point two five points."),
    ("decimal", "A GPA of 3.85 overall.", "A GPA of three point eight five overall."),
    (
        "decimal",
        "The rate is 1,234.5 units.",
        "The rate is one thousand two hundred thirty-four point five units.",
    ),
    ("decimal", "Version 2.0 shipped.", "Version two point zero shipped."),
    ("decimal", "It is -0.75 now.", "It is minus zero point seven five now."),
    ("percent", "It is 50% done.", "It is fifty percent done."),
    ("percent", "Growth of 3.5% this year.", "Growth of three point five percent this year."),
    ("percent", "Only 100% will do.", "Only one hundred percent will do."),
    ("percent", "About 10-20% of staff.", "About ten to twenty percent of staff."),
    ("percent", "A 0.5% fee.", "A zero point five percent fee."),
    ("percent", "It dropped -2% overnight.", "It dropped minus two percent overnight."),
    ("percent", "A 7 % raise.", "A seven percent raise."),
    ("money", "It costs $5.", "It costs five dollars."),
    ("money", "It costs $1.", "It costs one dollar."),
    ("money", "Pay $52,300.50 now.", "Pay fifty-two thousand three hundred dollars and fifty cents now."),
    ("money", "Only $0.99 today.", "Only ninety-nine cents today."),
    ("money", "Just $0.01 left.", "Just one cent left."),
    ("money", "A $1.5 million deal.", "A one point five million dollars deal."),
    ("money", "Raised $20k so far.", "Raised twenty thousand dollars so far."),
    ("money", "A $3M budget.", "A three million dollars budget."),
    ("money", "A $2.5 billion fund.", "A two point five billion dollars fund."),
    ("money", "Paid $5.00 even.", "Paid five dollars even."),
    ("money", "Costs $10-$20 each.", "Costs ten to twenty dollars each."),
    ("money", "Earns $25/hour now.", "Earns twenty-five dollars per hour now."),
    ("money", "It is €30 in Paris.", "It is thirty euros in Paris."),
    ("money", "It is £12.50 in London.", "It is twelve pounds and fifty pence in London."),
    ("money", "A balance of -$40 today.", "A balance of minus forty dollars today."),
    ("money", "Salary $85,000 per year.", "Salary eighty-five thousand dollars per year."),
    ("money", "It was $1,000,000 flat.", "It was one million dollars flat."),
    ("money", "Tip $3.5 each.", "Tip three dollars and fifty cents each."),
    ("date", "Started on 03/15/2019.", "Started on March fifteenth, twenty nineteen."),
    ("date", "Started on 3/15/19.", "Started on March fifteenth, twenty nineteen."),
    ("date", "Due 12/31/2020.", "Due December thirty-first, twenty twenty."),
    ("date", "Born 07/04/1976.", "Born July fourth, nineteen seventy-six."),
    ("date", "On 2019-03-15 we met.", "On March fifteenth, twenty nineteen we met."),
    ("date", "On 2021-1-5 it began.", "On January fifth, twenty twenty-one it began."),
    ("date", "Hired March 15, 2019.", "Hired March fifteenth, twenty nineteen."),
    ("date", "Hired March 15 2019.", "Hired March fifteenth, twenty nineteen."),
    ("date", "Left on Jan. 5th.", "Left on January fifth."),
    ("date", "Left on Feb 28.", "Left on February twenty-eighth."),
    ("date", "Since 15 March 2019.", "Since the fifteenth of March, twenty nineteen."),
    ("date", "The 3rd of May 2005.", "The third of May, two thousand five."),
    ("date", "Joined in March 2019.", "Joined in March twenty nineteen."),
    ("date", "On 12-25-2020 it snowed.", "On December twenty-fifth, twenty twenty it snowed."),
    ("date", "Meet on 3/15 then.", "Meet on March fifteenth then."),
    ("date", "Not a date 13/45/2019.", "Not a date thirteen slash forty-five slash twenty nineteen."),
    ("date", "Due 2/30/2020 is invalid.", "Due two slash thirty slash twenty twenty is invalid."),
    ("date", "Hired Sept. 1, 2020.", "Hired September first, twenty twenty."),
    ("date", "Ended December 1st.", "Ended December first."),
    ("year", "Founded in 1999.", "Founded in nineteen ninety-nine."),
    ("year", "Since 2005 we grew.", "Since two thousand five we grew."),
    ("year", "Back in 1905 it began.", "Back in nineteen oh five it began."),
    ("year", "During 2019 we grew.", "During twenty nineteen we grew."),
    ("year", "By 2030 we plan.", "By twenty thirty we plan."),
    ("year", "The class of 2010.", "The class of twenty ten."),
    ("year", "From 2015-2019 he worked.", "From twenty fifteen to twenty nineteen he worked."),
    ("year", "From 2019-21 he worked.", "From twenty nineteen to twenty-one he worked."),
    ("year", "The 1990s were fun.", "The nineteen nineties were fun."),
    ("year", "The '80s were loud.", "The eighties were loud."),
    ("year", "In the 2000s we moved.", "In the two thousands we moved."),
    ("year", "Until 1900 it stood.", "Until nineteen hundred it stood."),
    ("year", "We sold 2019 units.", "We sold two thousand nineteen units."),
    ("time", "Meet at 10:30.", "Meet at ten thirty."),
    ("time", "Meet at 10:05.", "Meet at ten oh five."),
    ("time", "Meet at 10:00.", "Meet at ten o'clock."),
    ("time", "Meet at 9am.", "Meet at nine A M."),
    ("time", "Meet at 9 a.m. sharp.", "Meet at nine A M sharp."),
    ("time", "Meet at 5 PM today.", "Meet at five P M today."),
    ("time", "Meet at 10:30 am please.", "Meet at ten thirty A M please."),
    ("time", "Meet at 2:15 p.m. please.", "Meet at two fifteen P M please."),
    ("time", "Meet at 14:30 today.", "Meet at two thirty P M today."),
    ("time", "Meet at 09:00 today.", "Meet at nine o'clock today."),
    ("time", "Meet at 00:30 tonight.", "Meet at twelve thirty A M tonight."),
    ("time", "Meet at 12pm.", "Meet at noon."),
    ("time", "Meet at 12am.", "Meet at midnight."),
    ("time", "Meet at 12:00 pm.", "Meet at noon."),
    ("time", "Meet at 12 noon.", "Meet at twelve noon."),
    ("time", "Open 9am-5pm daily.", "Open nine A M to five P M daily."),
    ("time", "Lap time 10:30:15 flat.", "Lap time ten thirty and fifteen seconds flat."),
    ("time", "It ends at 5 p.m. Then we go.", "It ends at five P M. Then we go."),
    ("phone", "Call (415) 555-0132 now.", "Call four one five, five five five, zero one three two now."),
    ("phone", "Call 415-555-0132 now.", "Call four one five, five five five, zero one three two now."),
    ("phone", "Call 415.555.0132 now.", "Call four one five, five five five, zero one three two now."),
    ("phone", "Call 415 555 0132 now.", "Call four one five, five five five, zero one three two now."),
    ("phone", "Call 4155550132 now.", "Call four one five, five five five, zero one three two now."),
    (
        "phone",
        "Call +1 415 555 0132 now.",
        "Call plus one, four one five, five five five, zero one three two now.",
    ),
    ("phone", "Call 1-800-555-0199 now.", "Call one, eight hundred, five five five, zero one nine nine now."),
    ("phone", "Call (800) 555-0199 now.", "Call eight hundred, five five five, zero one nine nine now."),
    (
        "phone",
        "Call +44 20 7946 0958 now.",
        "Call plus four four, two zero, seven nine four six, zero nine five eight now.",
    ),
    ("phone", "Call 555-0132 now.", "Call five five five, zero one three two now."),
    (
        "phone",
        "Call (415) 555-0132 ext. 204 now.",
        "Call four one five, five five five, zero one three two, extension two zero four now.",
    ),
    (
        "phone",
        "Call 415-555-0132 x12 now.",
        "Call four one five, five five five, zero one three two, extension one two now.",
    ),
    (
        "phone",
        "Call +33 1 42 68 53 00 now.",
        "Call plus three three, one, four two, six eight, five three, zero zero now.",
    ),
    ("id", "Your ID is EMP-40213.", "Your ID is E M P, four zero two, one three."),
    ("id", "Badge A12B9 please.", "Badge A one two B nine please."),
    ("id", "Ticket AB-1234-XY open.", "Ticket A B, one two, three four, X Y open."),
    ("id", "Form W2 needed.", "Form W two needed."),
    ("id", "Code X7 ok.", "Code X seven ok."),
    ("id", "Order 1234567 shipped.", "Order one two three, four five, six seven shipped."),
    ("id", "Account 00123 is open.", "Account zero zero one two three is open."),
    ("id", "Zip code 94107 please.", "Zip code nine four one zero seven please."),
    ("id", "The ZIP 02139 please.", "The ZIP zero two one three nine please."),
    ("id", "Employee number 40213 please.", "Employee number four zero two one three please."),
    ("id", "SSN 123-45-6789 on file.", "S S N one two three, four five, six seven eight nine on file."),
    (
        "id",
        "Card 4111 1111 1111 1111 on file.",
        "Card four one one one, one one one one, one one one one, one one one one on file.",
    ),
    ("id", "Covid COVID-19 rules.", "Covid COVID, nineteen rules."),
    ("id", "A 5GB drive.", "A five G B drive."),
    ("id", "Ref REF2024A ok.", "Ref R E F two zero, two four A ok."),
    ("email", "Email john.doe@acme.com today.", "Email john dot doe at acme dot com today."),
    ("email", "Email hr@acme.org now.", "Email H R at acme dot org now."),
    (
        "email",
        "Email j_smith-99@mail.example.co.uk now.",
        "Email J underscore smith dash nine nine at mail dot example dot co dot U K now.",
    ),
    ("email", "Email jane+jobs@acme.io now.", "Email jane plus jobs at acme dot I O now."),
    ("email", "Email ADMIN@Acme.COM now.", "Email admin at acme dot com now."),
    ("url", "Visit https://www.acme.com/careers now.", "Visit W W W dot acme dot com slash careers now."),
    ("url", "Visit www.acme.com today.", "Visit W W W dot acme dot com today."),
    ("url", "Visit acme.com/jobs today.", "Visit acme dot com slash jobs today."),
    (
        "url",
        "Visit http://hr.acme.net/apply-now/form now.",
        "Visit H R dot acme dot net slash apply slash now slash form now.",
    ),
    ("url", "Visit acme.org.", "Visit acme dot org."),
    ("abbr", "Dr. Smith will call.", "Doctor Smith will call."),
    ("abbr", "Ask Dr. Jones now.", "Ask Doctor Jones now."),
    ("abbr", "He lives on Elm Dr. now.", "He lives on Elm Drive now."),
    ("abbr", "She lives on Main St. in town.", "She lives on Main Street in town."),
    ("abbr", "We went to St. Louis.", "We went to Saint Louis."),
    ("abbr", "Mr. Lee and Mrs. Lee and Ms. Park.", "Mister Lee and Missus Lee and Miz Park."),
    ("abbr", "It is at 12 Oak Ave. today.", "It is at twelve Oak Avenue today."),
    ("abbr", "Acme Inc. is hiring.", "Acme Incorporated is hiring."),
    ("abbr", "He works at Acme Inc. Then he left.", "He works at Acme Incorporated. Then he left."),
    (
        "abbr",
        "Acme Corp. and Acme Ltd. and Acme Co. now.",
        "Acme Corporation and Acme Limited and Acme Company now.",
    ),
    ("abbr", "Apt. 4 and Ste. 200 please.", "Apartment four and Suite two zero zero please."),
    ("abbr", "Bring pens, paper, etc. please.", "Bring pens, paper, et cetera please."),
    ("abbr", "Red vs. blue.", "Red versus blue."),
    ("abbr", "Some fruit, e.g. apples.", "Some fruit, for example apples."),
    ("abbr", "The boss, i.e. Pat.", "The boss, that is Pat."),
    ("abbr", "The No. 5 bus.", "The number five bus."),
    ("abbr", "The U.S. Army hired him.", "The U S Army hired him."),
    ("abbr", "Bob Smith Jr. called.", "Bob Smith Junior called."),
    ("abbr", "Call HR about the SSN.", "Call H R about the S S N."),
    ("abbr", "Open Mon-Fri now.", "Open Monday to Friday now."),
    ("abbr", "Ask about the CPA exam.", "Ask about the CPA exam."),
    ("abbr", "Open Mon. to Fri. now.", "Open Monday to Friday now."),
    ("symbol", "Tom & Jerry.", "Tom and Jerry."),
    ("symbol", "R&D and AT&T.", "R and D and A T and T."),
    ("symbol", "Press # now.", "Press pound now."),
    ("symbol", "Floor #5 now.", "Floor number five now."),
    ("symbol", "Press * now.", "Press star now."),
    ("symbol", "The **new** policy.", "The new policy."),
    ("symbol", "It was ~20 people.", "It was about twenty people."),
    ("symbol", "It was 72° today.", "It was seventy-two degrees today."),
    ("symbol", "Use `code` here.", "Use code here."),
    ("symbol", "He said yes/no.", "He said yes or no."),
    ("symbol", "Choose and/or both.", "Choose and or both."),
    ("symbol", "Support is 24/7.", "Support is twenty-four seven."),
    ("symbol", "Add 2 + 2 now.", "Add two plus two now."),
    ("symbol", "Half is ½ cup.", "Half is one half cup."),
    ("range", "Hours 9-5 daily.", "Hours nine to five daily."),
    ("range", "Pages 10–12 now.", "Pages ten to twelve now."),
    ("range", "Ages 18-25 apply.", "Ages eighteen to twenty-five apply."),
    ("range", "About 1/2 of them.", "About one half of them."),
    ("range", "About 3/4 of them.", "About three quarters of them."),
    ("range", "About 2/3 of them.", "About two thirds of them."),
    ("words", "Hello, how are you today?", "Hello, how are you today?"),
    ("words", "Yes.", "Yes."),
    ("words", "I can't do that, can I?", "I can't do that, can I?"),
    ("words", "The quick brown fox jumps over the lazy dog.", "The quick brown fox jumps over the lazy dog."),
    ("words", 'She said "okay" and left.', 'She said "okay" and left.'),
    ("words", "NASA and ID and OK.", "NASA and ID and OK."),
    ("abbr", "Made in the USA.", "Made in the U S A."),
    ("words", "May I help you?", "May I help you?"),
    ("words", "Jan said hello.", "Jan said hello."),
    ("words", "Newline here", "Newline here"),
    ("words", "It's a well-known fact.", "It's a well-known fact."),
    ("markup", "[S1] Hello there.", "[S1] Hello there."),
    ("markup", 'Wait <break time="0.5s"/> then 5.', 'Wait <break time="0.5s"/> then five.'),
    (
        "date",
        "Worked there 06/2015 to 08/2019.",
        "Worked there June twenty fifteen to August twenty nineteen.",
    ),
    ("year", "Q3 2023 results.", "Q three twenty twenty-three results."),
    ("year", "The 2023 event.", "The twenty twenty-three event."),
    ("year", "About 1999 people came.", "About one thousand nine hundred ninety-nine people came."),
    ("money", "It costs USD 50.", "It costs fifty dollars."),
    ("money", "It costs 20 EUR.", "It costs twenty euros."),
    ("money", "Earns $72,500/yr now.", "Earns seventy-two thousand five hundred dollars per year now."),
    ("id", "Springfield, IL 62704 office.", "Springfield, Illinois six two seven zero four office."),
    ("id", "Reference #A-1029-B please.", "Reference number A, one zero, two nine, B please."),
    ("id", "Case no. 55123 open.", "Case number five five one two three open."),
    ("id", "His SSN ends in 6789.", "His S S N ends in six seven eight nine."),
    ("id", "Last 4 digits: 1234.", "Last four digits: one two three four."),
    ("decimal", "Version 3.2.1 shipped.", "Version three point two point one shipped."),
    ("symbol", "It was 100°F today.", "It was one hundred degrees Fahrenheit today."),
    ("symbol", "It is 2x faster.", "It is two times faster."),
    ("symbol", "He worked 40 hrs/week.", "He worked forty hours per week."),
    ("abbr", "At 1234 W. Elm St. now.", "At one thousand two hundred thirty-four West Elm Street now."),
    ("abbr", "Open 9-5 EST, M-F.", "Open nine to five E S T, Monday to Friday."),
    ("abbr", "Up 5% YoY.", "Up five percent year over year."),
    ("abbr", "Approx. 40 people.", "Approximately forty people."),
]


@pytest.mark.parametrize(
    ("category", "written", "spoken"), CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_spoken_form(category: str, written: str, spoken: str) -> None:
    assert normalize(written) == spoken


def test_table_covers_every_category() -> None:
    counts = Counter(c for c, _, _ in CASES)
    assert len(CASES) >= 150
    for category in ("cardinal", "ordinal", "decimal", "percent", "money", "date", "year", "time", "phone",
                     "id", "email", "url", "abbr", "symbol", "range", "words"):  # fmt: skip
        assert counts[category] >= 4, category


def test_ordinary_words_are_untouched() -> None:
    text = "Hello! I'm calling about Jane's employment, could you confirm her title? Thanks, bye."
    assert normalize(text) == text


# ------------------------------------------------------------------------------------------ streaming

STREAM_TEXTS = [
    "You owe $52,300.50 by March 15, 2019 at 3 pm. Call Dr. Smith at (415) 555-0132.",
    "Your employee ID is EMP-40213 and your start date was 03/15/2019.",
    "Email john.doe@acme.com or visit https://www.acme.com/careers today.",
    "We are open 9-5, Mon-Fri. R&D is on floor #5, call +44 20 7946 0958 ext. 12.",
    "He worked at Acme Inc. from 2015-2019 and earned 3.5% more, i.e. $1.5 million.",
    "Meet me at 10:30 a.m. on Jan. 5th, or at 14:30 on 2019-03-15, or 12 noon.",
    "The 1990s were fine. 1/2 of the staff, 24/7 support, and/or yes/no at 5 p.m. today.",
    "St. Louis and Main St. and Elm Dr. and the U.S. Army and HR and SSN 123-45-6789.",
    '<break time="0.5s"/> [S1] Yes. 42 is the answer, not -7 or 0.25 or 1,000,000.',
    "In\n2019 we hired 12\npeople at $20/hour,   double  spaced & more.",
    "He worked 40 hrs/week at our 1234 W. 5th St., Suite 300, Springfield, IL 62704 office from 06/2015.",
    "Reference #A-1029-B, case no. 55123, costs USD 50 or 20 EUR, Q3 2023 up 12.5% YoY, 8:30am–5:30pm EST.",
    "Open M-F. Version 3.2.1 is 2x faster at 100°F; SSN ends in 6789; we sold 2019 units in 2019.",
    "Approx. 2023 people.",
]


def _streamed(normalizer: Normalizer, pieces: list[str]) -> list[str]:
    stream = StreamNormalizer(normalizer)
    return [stream.feed(p) for p in pieces] + [stream.finish()]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_equals_whole_at_every_split(text: str) -> None:
    normalizer = Normalizer()
    whole = normalizer.normalize(text)
    for cut in range(1, len(text)):
        assert "".join(_streamed(normalizer, [text[:cut], text[cut:]])) == whole, cut
    assert "".join(_streamed(normalizer, list(text))) == whole  # one character at a time
    rng = np.random.default_rng(len(text))
    for _ in range(30):  # token-like pieces of 1-6 characters
        cuts = np.cumsum(rng.integers(1, 7, size=len(text)))
        bounds = [0, *[int(c) for c in cuts if c < len(text)], len(text)]
        pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
        assert "".join(_streamed(normalizer, pieces)) == whole


def test_stream_reads_a_split_number_once_without_holding_the_words_before() -> None:
    outs = _streamed(Normalizer(), ["You", " owe", " $52", ",", "300", ".50", " today", " ok", "."])
    assert outs[:3] == ["", "You ", "owe "]  # released as soon as each word is complete
    # The amount waits until it is whole and the word after it is complete ("million" would join it)...
    assert outs[3:7] == ["", "", "", ""]
    assert outs[7] == "fifty-two thousand three hundred dollars and fifty cents today "  # ...read once
    assert outs[8:] == ["", "ok."]


def test_stream_holds_a_date_and_a_title_until_the_next_word() -> None:
    pieces = ["Since", " March", " 15", ", 2019", " we", " met", " Dr", ".", " Smith", " at", " noon", "."]
    outs = _streamed(Normalizer(), pieces)
    assert outs == ["", "Since ", "", "", "", "March fifteenth, twenty nineteen we ", "met ", "", "",
                    "Doctor Smith ", "at ", "", "noon."]  # fmt: skip


def test_stream_keeps_dia2_markup_whole() -> None:
    text = 'Okay <break time="0.5s"/> 5 more [S1] minutes.'
    whole = Normalizer().normalize(text)
    assert whole == 'Okay <break time="0.5s"/> five more [S1] minutes.'
    for cut in range(1, len(text)):
        assert "".join(_streamed(Normalizer(), [text[:cut], text[cut:]])) == whole


def test_stream_bounds_what_it_holds() -> None:
    digits_only = " ".join(["123"] * 200) + " "  # a hostile stream of sticky words never released alone
    stream = StreamNormalizer(Normalizer())
    out = stream.feed(digits_only)
    assert out.startswith("one hundred twenty-three") and len(digits_only) - len(stream._pending) > 400


# -------------------------------------------------------------------------------------------- lexicon


def _lexicon(*entries: dict[str, object]) -> Normalizer:
    return Normalizer("en-US", [LexiconEntry(**e) for e in entries])  # type: ignore[arg-type]


def test_lexicon_words_and_patterns_override_the_rules() -> None:
    n = _lexicon(
        {"word": "Acme", "say": "Ack-mee"},
        {"word": "SQL", "say": "sequel", "case_sensitive": True},
        {"pattern": r"EMP-(\d+)", "say": r"employee \1"},
        {"pattern": r"(?P<n>\d+) Main", "say": r"\g<n> Main Street, the head office"},
    )
    assert n.normalize("ACME uses SQL, not sql.") == "Ack-mee uses sequel, not sql."
    assert n.normalize("ID EMP-40213.") == "ID employee four zero two one three."  # its digits still read
    assert n.normalize("At 12 Main today") == "At twelve Main Street, the head office today"
    assert n.normalize("Acmes and MyAcme stay.") == "Acmes and MyAcme stay."  # whole words only


def test_lexicon_first_entry_wins_and_never_feeds_itself() -> None:
    n = _lexicon({"word": "HR", "say": "human resources"}, {"word": "human", "say": "person"},
                 {"word": "hr", "say": "hour"})  # fmt: skip
    assert n.normalize("Call HR.") == "Call human resources."


def test_lexicon_in_a_stream() -> None:
    n = _lexicon({"word": "Acme", "say": "Ack-mee"})
    text = "Welcome to Acme, where 5 people work."
    for cut in range(1, len(text)):
        assert (
            "".join(_streamed(n, [text[:cut], text[cut:]])) == "Welcome to Ack-mee, where five people work."
        )


def _config_issues(tmp_path: Path, yaml_text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    return [str(i) for i in caught.value.issues]


def test_bad_lexicon_entries_are_named_at_load(tmp_path: Path) -> None:
    issues = _config_issues(
        tmp_path,
        "engine:\n  text:\n    lexicon:\n"
        "      - {word: Acme, say: Ack-mee}\n"
        "      - {pattern: 'EMP-(\\d+', say: employee}\n"
        "      - {pattern: 'X(\\d)', say: 'ex \\2'}\n"
        "      - {say: nothing}\n"
        "      - {word: a, pattern: b, say: c}\n"
        "      - {pattern: 'x*', say: y}\n"
        "      - {pattern: '(?P<a>x)', say: '\\g<b>'}\n"
        "      - {word: '  ', say: blank}\n",
    )
    assert len(issues) == 7, issues
    assert "c.yaml:5: engine.text.lexicon[1].pattern: not a valid regular expression" in issues[0]
    assert "lexicon[2]: say refers to group 2 but the pattern has 1" in issues[1]
    assert "lexicon[3]: give exactly one of word or pattern" in issues[2]
    assert "lexicon[4]: give exactly one of word or pattern" in issues[3]
    assert "lexicon[5]: pattern matches empty text" in issues[4]
    assert "lexicon[6]: say refers to group <b>" in issues[5]
    assert "lexicon[7]: word is empty" in issues[6]


def test_text_settings_are_validated(tmp_path: Path) -> None:
    issues = _config_issues(tmp_path, "engine:\n  text:\n    locale: fr-FR\n    short_reply_words: 0\n")
    assert any("engine.text.locale" in i for i in issues) and any("short_reply_words" in i for i in issues)


# ------------------------------------------------------------------------------------ script shaping

DIA2 = ShapePolicy(speaker_tag="[S1]", breaks=True)


def test_speaker_tag_once_and_caller_tags_removed() -> None:
    segments = ReplyShaper(DIA2).shape("[S1] Sure thing. [S2] I am the caller now. [S1] Bye for now.")
    assert segments == ["[S1] Sure thing. I am the caller now. ", "Bye for now."]  # 2 words: merged
    assert ReplyShaper(ShapePolicy()).shape('[S1] Hi <break time="1s"/> there, friend.') == [
        "Hi there, friend."
    ]


def test_short_reply_gets_a_trailing_pause_for_dia2_only() -> None:
    assert ReplyShaper(DIA2).shape("Yes.") == ['[S1] Yes. <break time="0.3s"/>']
    assert ReplyShaper(DIA2).shape("Yes, of course.") == ["[S1] Yes, of course."]
    assert ReplyShaper(ShapePolicy(breaks=True, short_pause_s=0)).shape("Yes.") == ["Yes."]
    assert ReplyShaper(ShapePolicy()).shape("Yes.") == ["Yes."]
    assert ReplyShaper(DIA2).shape("") == []


def test_short_sentences_are_merged_with_a_neighbour() -> None:
    text = "Yes. Her start date was March fifteenth. Thanks. Anything else I can confirm today?"
    assert ReplyShaper(DIA2).shape(text) == [
        "[S1] Yes. Her start date was March fifteenth. ",
        "Thanks. Anything else I can confirm today?",
    ]
    assert ReplyShaper(DIA2).shape("Her start date was March fifteenth. Thanks.") == [
        "[S1] Her start date was March fifteenth. Thanks."
    ]


def test_long_replies_are_split_at_sentences_and_clauses() -> None:
    sentence = "She worked here from twenty fifteen until twenty nineteen as an analyst. "
    segments = ReplyShaper(DIA2).shape(sentence * 4)
    assert len(segments) == 4 and all(s.rstrip().endswith("analyst.") for s in segments)
    long_clause = ", ".join(["one two three four five"] * 12) + "."
    pieces = ReplyShaper(ShapePolicy(max_words=20)).shape(long_clause)
    assert len(pieces) > 2 and all(len(p.split()) <= 20 for p in pieces)
    assert all(p.rstrip().endswith((",", ".")) for p in pieces)
    assert " ".join(p.strip() for p in pieces) == long_clause


def test_streamed_reply_starts_at_the_first_clause() -> None:
    shaper = ReplyShaper(DIA2)
    assert shaper.feed("Sure, I can ") == []  # "Sure," alone is too short to be a segment
    assert shaper.feed("check that, one moment ") == ["[S1] Sure, I can check that, "]
    assert shaper.feed("please. Her title ") == ["one moment please. "]
    assert shaper.feed("was analyst.") == []
    assert shaper.finish() == ["Her title was analyst."]


def _dia2_text() -> tuple[Dia2Tokenizer, TokenIds]:
    tok = Dia2Tokenizer.from_dir(TINY)
    s1, s2 = tok.token_id("[S1]"), tok.token_id("[S2]")
    assert s1 is not None and s2 is not None
    return tok, TokenIds(new_word=3, pad=4, bos=1, zero=5, spk1=s1, spk2=s2, audio_pad=6, audio_bos=7)


def test_dia2_script_from_segments_has_one_speaker_tag() -> None:
    """The segments as the Dia2 engine receives them (dia2.script.ScriptStream, fed piece by piece): one
    [S1] token at the start, no [S2], the pause entry, and the same entries as the whole script."""
    tok, ids = _dia2_text()
    frontend = TextFrontend(policy=DIA2)
    for text in ("[S1] Yes.", "Your ID is EMP-40213. [S2] Call (415) 555-0132 by 5pm. [S1] Thanks!"):
        segments = frontend.shape(text)
        stream = ScriptStream(tok, ids, 12.5)
        entries = [e for s in segments for e in stream.feed(s)] + stream.feed("", final=True)
        assert entries == parse_script("".join(segments), tok, ids, 12.5)
        tokens = [t for e in entries for t in e.tokens]
        assert tokens.count(ids.spk1) == 1 and tokens[0] == ids.spk1 and ids.spk2 not in tokens
    assert entries[-1].text == "Thanks!" and "four" in [e.text for e in entries]
    short = frontend.shape("[S1] Yes.")
    assert parse_script("".join(short), tok, ids, 12.5)[-1].padding == round(0.3 * 12.5)


# ---------------------------------------------------------------------------- engines and the CLI


def _espeak_pcm(text: str) -> np.ndarray:
    """espeak-ng itself, run the way the engine runs it, for a byte-exact reference."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "165", "--stdout", "--", text], check=True, capture_output=True
    ).stdout
    return np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768.0


async def _speak(text: object, params: SpeakParams | None = None) -> np.ndarray:
    engine = make_engine(EngineConfig())  # espeak, text normalised (the default config)
    await engine.start()
    session = engine.open_session("t")
    try:
        chunks = [c async for c in session.speak(text, params)]  # type: ignore[arg-type]
    finally:
        await session.close()
    return np.concatenate(chunks)


def test_espeak_engine_speaks_the_normalised_text() -> None:
    written = "Your ID is EMP-40213."
    spoken = asyncio.run(_speak(written))
    assert np.array_equal(spoken, _espeak_pcm("Your ID is E M P, four zero two, one three."))
    raw = asyncio.run(_speak(written, SpeakParams(normalize=False)))  # switched off per utterance
    assert np.array_equal(raw, _espeak_pcm(written)) and not np.array_equal(raw, spoken)


def test_espeak_engine_normalises_a_token_stream_by_sentence() -> None:
    async def tokens():  # type: ignore[no-untyped-def]
        for piece in ["Call", " (415)", " 555-", "0132", " today", ". Thanks", " a", " lot."]:
            yield piece

    spoken = asyncio.run(_speak(tokens()))
    expected = np.concatenate([
        _espeak_pcm("Call four one five, five five five, zero one three two today."),
        _espeak_pcm("Thanks a lot."),
    ])  # fmt: skip
    assert np.array_equal(spoken, expected)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sipbridge.cli", "normalize", *args],
        capture_output=True, text=True, env=env, input=stdin, timeout=60,
    )  # fmt: skip


def test_cli_prints_the_spoken_form(tmp_path: Path) -> None:
    done = _cli("Call (415) 555-0132\nby 5pm.")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Call four one five, five five five, zero one three two by five P M.\n"
    config = tmp_path / "c.yaml"
    config.write_text("engine:\n  kind: dia2\n  text:\n    lexicon:\n      - {word: Acme, say: Ack-mee}\n")
    done = _cli("--config", str(config), "--segments", "Yes. Acme hired her in 2019. Thanks.")
    assert done.stdout.splitlines() == ["[S1] Yes. Ack-mee hired her in twenty nineteen. Thanks."]
    assert _cli("-", stdin="$5\n3rd\n").stdout == "five dollars\nthird\n"


def test_cli_names_a_bad_lexicon_entry(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("engine:\n  text:\n    lexicon:\n      - {pattern: '(', say: x}\n")
    done = _cli("--config", str(config), "hello")
    assert done.returncode == 2 and "engine.text.lexicon[0].pattern" in done.stderr


def test_gated_scan_equals_the_full_scan() -> None:
    """The locale's gate (rules.RuleSet) only skips text where no rule can start: the same output as
    trying every rule at every position, on the table and on random mixtures of its words."""
    from sipbridge.text.locales import en_us
    from sipbridge.text.rules import RuleSet

    full = RuleSet(en_us.RULES)
    texts = [w for _, w, _ in CASES] + STREAM_TEXTS
    words = [t for x in texts for t in x.split()]
    rng = np.random.default_rng(7)
    texts += [" ".join(rng.choice(words, size=int(rng.integers(1, 9)))) for _ in range(3000)]
    for text in texts:
        assert en_us.RULE_SET.rewrite(text) == full.rewrite(text), text


@pytest.mark.parametrize("text", STREAM_TEXTS[:4])
def test_streamed_segments_equal_whole_segments(text: str) -> None:
    """Through the whole frontend: a reply streamed in small pieces reaches the engine as the same text."""
    frontend = TextFrontend(policy=DIA2)

    async def pieces():  # type: ignore[no-untyped-def]
        for i in range(0, len(text), 3):
            yield text[i : i + 3]

    async def collect() -> list[str]:
        return [s async for s in frontend.stream(pieces())]

    streamed = asyncio.run(collect())
    assert "".join(streamed).split() == "".join(frontend.shape(text)).split()
    assert streamed[0].startswith("[S1] ") and sum(s.count("[S1]") for s in streamed) == 1


def test_a_paused_stream_is_spoken_as_it_stands() -> None:
    """A producer that waits for audio before sending more (a WebSocket client sending a sentence without
    a trailing space) gets its held words after `idle_flush_s`, not a deadlock; the rest still follows."""
    frontend = TextFrontend(policy=DIA2, idle_flush_s=0.05)

    async def run() -> list[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def pieces():  # type: ignore[no-untyped-def]
            while (piece := await queue.get()) is not None:
                yield piece

        segments = frontend.stream(pieces())
        queue.put_nowait("Hello, this is the first sentence.")
        first = await asyncio.wait_for(anext(segments), 10)  # only the idle flush can produce it
        queue.put_nowait(" It costs $5")
        second = await asyncio.wait_for(anext(segments), 10)  # the held amount, read as it stands
        queue.put_nowait(" today.")
        queue.put_nowait(None)
        return [first, second, *[s async for s in segments]]

    assert asyncio.run(run()) == [
        "[S1] Hello, this is the first sentence. ",
        "It costs five dollars ",
        "today.",
    ]


def test_http_generate_and_tts_normalise_unless_switched_off(tmp_path: Path) -> None:
    """A real `sipbridge run` (espeak, a lexicon in its config): /generate and /tts speak the normalised
    text, byte for byte what the pre-normalised text gives with normalisation off; `normalize: false`
    speaks the text as written."""
    import httpx

    from .bridge import Bridge

    lexicon = [{"word": "Acme", "say": "Ack-mee"}]
    bridge = Bridge.start(tmp_path, {"asr": {"backend": "none"}, "engine": {"text": {"lexicon": lexicon}}})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{bridge.http_port}", timeout=60) as client:

            def audio(path: str, text: str, **extra: object) -> bytes:
                response = client.post(path, json={"text": text, "format": "pcm16", **extra})
                assert response.status_code == 200, response.text
                return response.content

            written = "Acme ID EMP-40213."
            spoken = "Ack-mee ID E M P, four zero two, one three."
            for path in ("/generate", "/tts"):
                normalised = audio(path, written)
                assert normalised == audio(path, spoken, normalize=False)
                assert audio(path, written, normalize=False) != normalised
            form = client.post("/generate", data={"text": written, "format": "pcm16", "normalize": "false"})
            assert form.status_code == 200 and form.content == audio("/generate", written, normalize=False)
    finally:
        assert bridge.stop() == 0


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("$" + "9" * 20, "nine nine nine, " * 6 + "nine nine dollars"),
        ("9" * 18 + "th", ("nine nine nine, " * 6)[:-2]),
        ("Owe " + "1" * 5000 + " now", "Owe " + "1" * 5000 + " now"),  # too long to be a number: as written
        ("x" * 300 + "@acme.com", "x" * 300 + "@acme.com"),
        ("A" * 3000, "A" * 3000),
    ],
)
def test_hostile_text_is_spoken_never_fails(written: str, spoken: str) -> None:
    """Numbers too long for words are read digit by digit (num2words and int() refuse huge values) and
    runs without spaces longer than rules.MAX_TOKEN_CHARS are copied: no reply fails on its text."""
    assert normalize(written) == spoken


def test_a_failing_rule_declines_instead_of_failing_the_reply() -> None:
    from sipbridge.text.rules import Rule, RuleSet

    def broken(m: object) -> str:
        raise OverflowError("a library refused the value")

    rules = RuleSet([Rule("broken", r"(?P<b>\d+)", broken), Rule("digits", r"(?P<d>\d+)", lambda m: "N")])
    assert rules.rewrite("a 12 b") == "a N b"
