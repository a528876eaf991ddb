"""Answer understanding (sipbridge/agents/answers.py) on a hand-labelled table of answers (answer_table.py),
with the real WordLlama embeddings from the wordllama wheel (offline)."""

from __future__ import annotations

from collections import Counter

import pytest

from sipbridge.agents.answer_examples import EXAMPLES, INTENTS
from sipbridge.agents.answers import AnswerClassifier, default_classifier, load_wordllama, normalise

from .answer_table import TABLE


@pytest.fixture(scope="module")
def classifier() -> AnswerClassifier:
    return default_classifier()


def test_the_table_is_big_enough_labelled_with_known_intents_and_not_copied_from_the_examples() -> None:
    assert len(TABLE) >= 200
    counts = Counter(label for _, label in TABLE)
    assert set(counts) == set(INTENTS) and min(counts.values()) >= 15, counts
    known = {normalise(p) for phrases in EXAMPLES.values() for p in phrases}
    # One- and two-word answers ("No.", "Sure.", "No comment.") are the same everywhere; longer ones differ.
    copied = [t for t, _ in TABLE if normalise(t) in known and len(normalise(t).split()) > 2]
    assert not copied, copied
    assert len({normalise(t) for t, _ in TABLE}) == len(TABLE)


def test_at_least_95_percent_of_the_table_is_understood(classifier: AnswerClassifier) -> None:
    wrong = [(t, label, classifier.classify(t)) for t, label in TABLE]
    wrong = [(t, label, a.intent, round(a.confidence, 3)) for t, label, a in wrong if a.intent != label]
    assert len(wrong) <= 0.05 * len(TABLE), wrong


def test_a_refusal_or_dont_know_is_never_a_yes_or_no(classifier: AnswerClassifier) -> None:
    for text, label in TABLE:
        if label in ("refuse", "unsure"):
            answer = classifier.classify(text)
            assert answer.intent not in ("yes", "no"), (text, answer)


def test_the_model_alone_without_the_keyword_safety_net_is_close(classifier: AnswerClassifier) -> None:
    bare = AnswerClassifier(classifier.embedder)
    bare.guards = False
    right = sum(bare.classify(t).intent == label for t, label in TABLE)
    assert right >= 0.93 * len(TABLE), right


@pytest.mark.parametrize(
    ("text", "intent", "evidence"),
    [
        ("Not a problem, yes.", "yes", "Not a problem"),
        ("No, she still works here.", "yes", "she still works here"),
        ("I can't say.", "refuse", "I can't say"),
        ("He doesn't work here anymore.", "no", "He doesn't work here anymore"),
        ("Yes, but I'd have to check.", "unsure", "I'd have to check"),
    ],
)
def test_negation_traps_and_the_words_that_decided(
    classifier: AnswerClassifier, text: str, intent: str, evidence: str
) -> None:
    answer = classifier.classify(text)
    assert (answer.intent, answer.evidence) == (intent, evidence)
    assert answer.text == text


def test_a_clear_particle_is_not_undone_by_a_misheard_clause(classifier: AnswerClassifier) -> None:
    # tiny.en heard "Yes, she does." as "Yes, keep on." in a loaded call: "keep on" matches nothing well.
    answer = classifier.classify("Yes, keep on.")
    assert answer.intent == "yes" and not answer.low_confidence


def test_two_contentful_clauses_that_disagree_are_a_guess(classifier: AnswerClassifier) -> None:
    answer = classifier.classify("She works here, she left last year.")
    assert answer.low_confidence


def test_the_model_loads_from_the_wheel_without_a_network() -> None:
    # load_wordllama passes disable_download: a missing file raises instead of reaching for a hub.
    model = load_wordllama()
    vectors = model.embed(["yes", "no"], norm=True)
    assert vectors.shape == (2, 256)
