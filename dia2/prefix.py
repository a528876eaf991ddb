"""Conversation prefix: earlier turns (audio + word timings) that the model hears before it speaks.

Each prefix speaker contributes Mimi codes of its audio and one entry per transcribed word. During
warm-up the decoder is fed the prefix frames one by one and the state machine is *forced* to start
each word at the frame its timing says, so the KV cache holds a consistent text/audio history.
Word timings come from an ASR backend or are given explicitly (``PrefixWord`` lists).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .script import WordEncoder
from .state_machine import Entry
from .wavfile import read_wav_mono, resample_linear

__all__ = [
    "PrefixPlan",
    "PrefixSpeaker",
    "PrefixWord",
    "build_prefix_plan",
    "load_prefix_audio",
    "load_words_json",
    "words_to_entries",
]

# Upstream shifts speaker 1's forced word starts by 3 frames ("legacy BOS/PAD offset") and does
# not shift speaker 2's; matched as is.
SPEAKER1_STEP_OFFSET = 3


class AudioEncoder(Protocol):
    sample_rate: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class PrefixWord:
    text: str
    start: float  # seconds from the start of that speaker's audio
    end: float


@dataclass(frozen=True)
class PrefixSpeaker:
    """One prefix turn: mono 24 kHz float audio ``[samples]`` and its word timings."""

    audio: torch.Tensor
    words: tuple[PrefixWord, ...]


@dataclass(frozen=True)
class PrefixPlan:
    entries: list[Entry]
    new_word_steps: list[int]  # warm-up steps at which the new-word action is forced
    aligned_tokens: torch.Tensor  # [K, frames] speaker-1 codes then speaker-2 codes

    @property
    def aligned_frames(self) -> int:
        return int(self.aligned_tokens.shape[-1])


def load_prefix_audio(path: str | os.PathLike[str], sample_rate: int) -> torch.Tensor:
    audio, rate = read_wav_mono(path)
    return resample_linear(audio, rate, sample_rate)


def load_words_json(path: str | os.PathLike[str]) -> tuple[PrefixWord, ...]:
    """A JSON list of ``{"text": ..., "start": s, "end": s}`` (or ``{"words": [...]}``)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    items = raw["words"] if isinstance(raw, dict) else raw
    words = []
    for item in items:
        text = str(item.get("text") or item.get("word") or "").strip()
        if text:
            words.append(PrefixWord(text=text, start=float(item["start"]), end=float(item["end"])))
    return tuple(words)


def words_to_entries(
    words: Sequence[PrefixWord], encoder: WordEncoder, speaker_tag: str, frame_rate: float
) -> tuple[list[Entry], list[int]]:
    """Entries and forced new-word steps of one speaker's words (frame units of that speaker).

    A word starts at ``round(start * rate)`` but never before the previous word's pieces are out;
    its padding covers the frames up to the next word (the last word: up to its own end).
    """
    entries: list[Entry] = []
    steps: list[int] = []
    previous_end = 0
    for i, word in enumerate(words):
        text = f"{speaker_tag} {word.text}" if i == 0 else word.text
        tokens = tuple(encoder.encode(text))
        start = max(previous_end + 1, round(word.start * frame_rate))
        end = start + len(tokens)
        steps.append(start - 1)
        # The next word's start, or for the last word its own end.
        following = round((words[i + 1].start if i + 1 < len(words) else word.end) * frame_rate)
        next_start = max(end + 1, following)
        entries.append(Entry(tokens=tokens, text=word.text, padding=max(0, next_start - start - 1)))
        previous_end = end
    return entries, steps


def build_prefix_plan(
    speaker_1: PrefixSpeaker,
    speaker_2: PrefixSpeaker | None,
    *,
    codec: AudioEncoder,
    encoder: WordEncoder,
    frame_rate: float,
) -> PrefixPlan:
    entries, steps1 = words_to_entries(speaker_1.words, encoder, "[S1]", frame_rate)
    new_word_steps = [s + SPEAKER1_STEP_OFFSET for s in steps1]
    codes = codec.encode(speaker_1.audio).to(torch.long)
    if speaker_2 is not None:
        entries2, steps2 = words_to_entries(speaker_2.words, encoder, "[S2]", frame_rate)
        offset = int(codes.shape[-1])
        new_word_steps.extend(s + offset for s in steps2)
        entries.extend(entries2)
        codes = torch.cat([codes, codec.encode(speaker_2.audio).to(codes.device, torch.long)], dim=1)
    return PrefixPlan(entries=entries, new_word_steps=new_word_steps, aligned_tokens=codes)
