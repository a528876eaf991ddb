"""Answer understanding: what did the caller mean — yes, no, a refusal, "don't know", wrong person, "say that
again", "call back later", or something else — and which words said so.

Why not a word list: "not a problem, yes", "no, she still works here" and "I can't say" all hold a negation
word, and only one of them is a no. Why not a large model: every caller turn waits for this, on the CPU.

How: an embedding-similarity classifier over labelled examples (answer_examples.py). Text is embedded with
WordLlama's 256-d static token embeddings (the `wordllama` wheel carries the weights; nothing is downloaded)
— mean-pooled, so one embedding costs microseconds. An answer is cut into clauses ("no" | "she still works
here"), each clause is matched against every example, and the clauses are combined by rules that say why:

* a refusal, a "don't know", a callback request or a wrong person in any clause decides the answer, in that
  order: "Yes, but I can't give that out" is not a yes we may record, and "No, I don't know" is not a no;
* between yes and no, a clause that says something ("she still works here") outweighs a bare "no"/"yes",
  but a particle that says the opposite makes the answer a guess the flow confirms; two contentful clauses
  that disagree are a guess too;
* "repeat" and "other" only win when no clause says anything more.

Contractions are expanded first ("can't" -> "can not") so negation is a token of its own in the mean.

The confidence is the deciding clause's margin: its best intent's similarity minus the best other intent's.
Flows re-ask when it is below `LOW_CONFIDENCE` (docs/AGENTS.md).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from sipbridge.agents.answer_examples import EXAMPLES, INTENTS, AnswerIntent

__all__ = [
    "INTENTS",
    "LOW_CONFIDENCE",
    "Answer",
    "AnswerClassifier",
    "AnswerIntent",
    "Embedder",
    "default_classifier",
    "guard_intent",
    "is_guard_phrase",
    "load_wordllama",
]

LOW_CONFIDENCE = 0.06  # margins below this are guesses (see test_answers.py for the distribution)
_FLOOR = 0.3  # a clause whose best similarity is below this matches nothing we know: "other"

_OVERRIDE = 0.15  # margin a callback / wrong-person clause needs to outweigh a sure yes or no beside it
# Decisive intents, strongest first: one clause of these decides the whole answer.
_DECISIVE: tuple[AnswerIntent, ...] = ("refuse", "unsure", "callback", "wrong_person")
_PARTICLES = frozenset(
    "yes yeah yep yup no nope nah sure right okay ok correct negative affirmative uh huh mm hmm "
    "no no yes yes well oh so".split()
)
_FILLERS = frozenset("um uh erm er hmm well oh so and".split())
_NEGATORS = frozenset("not no never nobody none neither nor nothing longer".split())
NEGATION_PENALTY = 0.12  # similarity taken off examples whose negation differs from the clause's

_CONTRACTIONS = (
    (re.compile(r"\bcan'?t\b"), "can not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"\bain't\b"), "is not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(he|she|it|that|there|what|who)'s\b"), r"\1 is"),
)
# The safety net under the model: phrases that make an answer a refusal or a "don't know" whatever the
# similarities say, because recording such an answer as a yes or a no is the one mistake we must not make.
# Matched on whole words of the normalised text ("can't" is "can not" by then).
GUARDS: dict[AnswerIntent, tuple[str, ...]] = {
    "refuse": (
        "confidential",
        "policy",
        "in writing",
        "written request",
        "work number",
        "not allowed",
        "not authorized",
        "not permitted",
        "can not disclose",
        "can not share",
        "can not give",
        "can not say",
        "can not tell you that",
        "can not release",
        "no comment",
        "privacy",
        "decline",
        "can not confirm",
        "can not verify",
    ),
    "unsure": (
        "not sure",
        "do not know",
        "no idea",
        "not certain",
        "do not remember",
        "can not remember",
        "no clue",
        "unsure",
        "maybe",
        "not aware",
        "can not recall",
        "do not recall",
    ),
}
_CLAUSE_SPLIT = re.compile(r"[.,;:!?…]+|\s+-+\s+|\b(?:but|though|if|whether|because)\b")


class Embedder(Protocol):
    def embed(self, texts: list[str], norm: bool = ...) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class Answer:
    """What one caller turn meant. `evidence` is the clause (as heard) that decided it."""

    intent: AnswerIntent
    confidence: float
    evidence: str
    text: str

    @property
    def low_confidence(self) -> bool:
        return self.confidence < LOW_CONFIDENCE

    def as_record(self) -> dict[str, object]:
        return {"intent": self.intent, "confidence": round(self.confidence, 3), "evidence": self.evidence}


@dataclass(frozen=True)
class _Clause:
    heard: str  # the words as the caller said them (evidence)
    intent: AnswerIntent
    best: float  # cosine similarity of the best example
    margin: float  # best minus the best example of any other intent

    @property
    def particle(self) -> bool:
        """A bare "yes"/"no"/"sure": the discourse marker that a contentful clause outweighs."""
        return all(w in _PARTICLES for w in normalise(self.heard).split())


def normalise(text: str) -> str:
    """Lower case, straight apostrophes, contractions written out, hyphens and digits kept."""
    low = text.lower().replace("’", "'").replace("‘", "'")
    for pattern, repl in _CONTRACTIONS:
        low = pattern.sub(repl, low)
    low = re.sub(r"[^a-z0-9'\- ]+", " ", low)
    return " ".join(low.split())


def negated(said: str) -> bool:
    """An odd number of negations in a normalised clause ("not a problem" yes, "not not" no)."""
    words = said.split()
    count = sum(w in _NEGATORS for w in words) - sum(
        a == "no" and b == "longer" for a, b in itertools.pairwise(words)
    )
    return count % 2 == 1


def clauses(text: str) -> list[str]:
    """The answer cut at punctuation and at "but": the pieces as heard, fillers dropped, empty ones gone."""
    out = []
    for piece in _CLAUSE_SPLIT.split(text):
        words = piece.split()
        while words and normalise(words[0]) in _FILLERS and len(words) > 1:
            words = words[1:]
        if words and normalise(" ".join(words)) not in ("", *_FILLERS):
            out.append(" ".join(words))
    return out


class AnswerClassifier:
    """Labelled examples, embedded once; `classify` is a matrix-vector product per clause."""

    def __init__(self, embedder: Embedder, examples: Mapping[AnswerIntent, Sequence[str]] = EXAMPLES) -> None:
        self.embedder = embedder
        self.guards = True  # tests switch the safety net off to measure the model alone
        texts, labels = [], []
        for intent, phrases in examples.items():
            if intent not in INTENTS:
                raise ValueError(f"unknown answer intent {intent!r} (known: {', '.join(INTENTS)})")
            for phrase in phrases:
                texts.append(normalise(phrase))
                labels.append(INTENTS.index(intent))
        self._vectors = self._embed(texts)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._negated = np.asarray([negated(t) for t in texts], dtype=bool)

    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return np.asarray(self.embedder.embed(texts, norm=True), dtype=np.float32)

    def with_examples(self, extra: Mapping[AnswerIntent, Sequence[str]]) -> AnswerClassifier:
        """A classifier that also knows `extra` (a flow state's own examples); shares this one's vectors."""
        clone = object.__new__(AnswerClassifier)
        clone.embedder = self.embedder
        clone.guards = self.guards
        more = AnswerClassifier(self.embedder, extra)
        clone._vectors = np.concatenate([self._vectors, more._vectors])
        clone._labels = np.concatenate([self._labels, more._labels])
        clone._negated = np.concatenate([self._negated, more._negated])
        return clone

    def classify(self, text: str) -> Answer:
        pieces = clauses(text)
        if not pieces:
            return Answer("other", 0.0, "", text)
        said = [normalise(p) for p in pieces]
        vectors = self._embed(said)
        found = [self._clause(p, s, v) for p, s, v in zip(pieces, said, vectors, strict=True)]
        answer = _combine(found, text)
        unsettled = answer.intent in ("yes", "no", "other", "repeat") or answer.low_confidence
        return _guarded(answer, pieces) if self.guards and unsettled else answer

    def _clause(self, heard: str, said: str, vector: npt.NDArray[np.float32]) -> _Clause:
        # A mean of word vectors barely moves for one "not": examples whose negation differs are marked down.
        sims = self._vectors @ vector - NEGATION_PENALTY * (self._negated != negated(said))
        per_intent = np.full(len(INTENTS), -1.0, dtype=np.float32)
        np.maximum.at(per_intent, self._labels, sims)
        order = np.argsort(per_intent)[::-1]
        best, second = float(per_intent[order[0]]), float(per_intent[order[1]])
        if best < _FLOOR:
            return _Clause(heard, "other", best, 0.0)
        return _Clause(heard, INTENTS[int(order[0])], best, best - second)


def _combine(found: list[_Clause], text: str) -> Answer:
    sure_polar = any(c.intent in ("yes", "no") and c.margin >= LOW_CONFIDENCE for c in found)
    for intent in _DECISIVE:
        # A faint callback or wrong-person clause does not undo a clear yes/no ("Yes, she's in the office");
        # a faint refusal or "don't know" does (it makes a guess to confirm: never a recorded yes or no).
        hits = [
            c
            for c in found
            if c.intent == intent
            and (c.margin >= _OVERRIDE or not sure_polar or intent in ("refuse", "unsure"))
        ]
        if hits:
            top = max(hits, key=lambda c: c.margin)
            return Answer(intent, top.margin, top.heard, text)
    polar = [c for c in found if c.intent in ("yes", "no")]
    if polar:
        # "No, she still works here": what was said outweighs the particle, unless it is itself a guess; a
        # guessed clause ("Yes, keep on." for a misheard "Yes, she does.") adds nothing.
        confident = [c for c in polar if c.margin >= LOW_CONFIDENCE]
        content = [c for c in confident if not c.particle] or confident or polar
        kinds = {c.intent for c in content}
        top = max(content, key=lambda c: c.margin)
        if len(kinds) > 1:  # two things said that disagree: a guess either way
            return Answer(top.intent, 0.0, ", ".join(c.heard for c in content), text)
        # "No, she still works here": the words decide, but a particle that says the opposite makes the
        # answer one to confirm (and a misheard "Yes, she does." -> "Yeah, she not." is not recorded as a no).
        if any(c.particle and c.intent != top.intent and c.margin >= LOW_CONFIDENCE for c in polar):
            return Answer(top.intent, 0.0, top.heard, text)
        # "Yes, she was.": a clear "yes" that agrees with the words makes it sure.
        sure = max(c.margin for c in polar if c.intent == top.intent)
        return Answer(top.intent, sure, top.heard, text)
    for intent in ("repeat", "other"):
        hits = [c for c in found if c.intent == intent]
        if hits:
            top = max(hits, key=lambda c: c.margin)
            return Answer(intent, top.margin, top.heard, text)
    raise AssertionError("every clause has an intent")  # pragma: no cover


def is_guard_phrase(text: str) -> bool:
    """The whole answer is one of the guard phrases ("Not sure.", "No comment.")."""
    said = normalise(text)
    return any(said == p for phrases in GUARDS.values() for p in phrases)


def guard_intent(text: str) -> tuple[AnswerIntent, str] | None:
    """The refusal or hedge phrase in `text`, if any: (intent, the clause it is in)."""
    for intent, phrases in GUARDS.items():
        for heard in clauses(text):
            said = f" {normalise(heard)} "
            if any(f" {p} " in said for p in phrases):
                return intent, heard
    return None


def _guarded(answer: Answer, pieces: list[str]) -> Answer:
    """An answer whose words hold a refusal or hedge phrase becomes that (confidence 1: it is a rule)."""
    found = guard_intent(", ".join(pieces))
    return answer if found is None else Answer(found[0], 1.0, found[1], answer.text)


# ------------------------------------------------------------------------------------- the model


def load_wordllama() -> Embedder:
    """WordLlama l2_supercat 256-d, from the files inside the installed wheel, never from the network.

    wordllama 0.4 looks for its bundled tokenizer under `tokenizer/` but the wheel ships it in `tokenizers/`,
    then tries to download it; passing the package directory as the cache directory finds both files, and
    `disable_download` turns any miss into an error instead of a network call.
    """
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("answer understanding needs the wordllama package") from exc
    return WordLlama.load(dim=256, cache_dir=Path(wordllama.__file__).parent, disable_download=True)


_lock = threading.Lock()
_default: list[AnswerClassifier] = []


def default_classifier() -> AnswerClassifier:
    """One classifier per process (loaded on first use, ~0.5 s; then shared: it holds no per-call state)."""
    with _lock:
        if not _default:
            _default.append(AnswerClassifier(load_wordllama()))
        return _default[0]
