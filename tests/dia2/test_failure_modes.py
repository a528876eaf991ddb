"""Failure modes earlier Dia2 streaming servers hit with the real weights (issue 23), each forced here:

* special audio ids (BOS, PAD, the "ungenerated" marker) reaching the Mimi decoder: a sampler rigged to
  emit them mid-reply must not get one code past Mimi's lookup, and the reply ends cleanly;
* the model re-reading the voice prefix's transcript: after a voice is ingested no prefix word, piece
  or look-ahead is left for a reply's state machine (engine and one-shot generation);
* one speaker's prefix only: a speaker-2 partner prefix is part of the voice (kept, re-warmed, sized).

CPU, tiny fixture checkpoint, real engine; only the sampler is rigged (the thing under test is what
the engine does with its output) and Mimi's codebook lookup is observed, not replaced.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import dia2.frame as frame_mod
from dia2.engine import (
    AudioChunk,
    BatchEngine,
    ContextOverflowError,
    EngineOptions,
    SpeakOptions,
    VoicePrompt,
)
from dia2.generate import GenerationOptions
from dia2.mimi_stream import StreamingMimiDecoder
from dia2.prefix import PrefixSpeaker, PrefixWord
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2
from dia2.sampling import SamplingParams

GREEDY = SpeakOptions(text=SamplingParams(0.0, 1), audio=SamplingParams(0.0, 1), cfg_scale=1.0)
SCRIPT = "[S1] Hello, this is a verification call. [S2] Yes, speaking."


def make_engine(runtime: Dia2, **kw: Any) -> BatchEngine:
    opts = {"capacity": 2, "max_reply_steps": 120, "reply_reserve_steps": 40, **kw}
    return BatchEngine(runtime.model, runtime.ids, runtime.tokenizer, runtime.mimi, EngineOptions(**opts))


@pytest.fixture
def mimi_lookups(runtime: Dia2, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(min, max) of every code batch that reaches Mimi's codebook lookup."""
    quantizer = runtime.mimi.model.quantizer
    real = quantizer.decode
    seen: list[tuple[int, int]] = []

    def observed(codes: torch.Tensor) -> torch.Tensor:
        seen.append((int(codes.min()), int(codes.max())))
        return real(codes)

    monkeypatch.setattr(quantizer, "decode", observed)
    return seen


@pytest.mark.parametrize("special", ["audio_pad", "audio_bos", "ungenerated"])
@pytest.mark.parametrize("lane", [True, False])
def test_rigged_sampler_specials_never_reach_mimi(
    runtime: Dia2,
    monkeypatch: pytest.MonkeyPatch,
    mimi_lookups: list[tuple[int, int]],
    special: str,
    lane: bool,
) -> None:
    code = getattr(runtime.ids, special)
    real = frame_mod.sample_rows
    rig = {"on": False}

    def rigged(logits: torch.Tensor, *args: Any) -> torch.Tensor:
        out = real(logits, *args)
        if rig["on"] and logits.shape[-1] > 2:  # audio draws (codebook 0, depformer), not the action
            return torch.full_like(out, code)
        return out

    monkeypatch.setattr(frame_mod, "sample_rows", rigged)
    engine = make_engine(runtime, lead_in_lane=lane)
    call, other = engine.open_call(), engine.open_call()
    got: list[AudioChunk | None] = []
    bystander: list[AudioChunk | None] = []
    engine.speak(call, SCRIPT, got.append, GREEDY)
    engine.speak(other, SCRIPT, bystander.append, GREEDY)
    for _ in range(60):
        if len(got) >= 3:
            break
        engine.step()
    assert len(got) >= 3 and None not in got  # three good chunks first
    rig["on"] = True  # from now on every audio draw of every call is the special id
    for _ in range(40):
        if got[-1] is None:
            break
        engine.step()
    assert got[-1] is None, "the reply did not end after its sampler produced a special id"
    assert engine.invalid_codes >= 1
    limit = runtime.mimi.codebook_size
    assert mimi_lookups and all(0 <= lo and hi < limit for lo, hi in mimi_lookups)
    for chunk in got[:-1] + [c for c in bystander if c is not None]:
        assert chunk is not None and 0 <= int(chunk.codes.min()) and int(chunk.codes.max()) < limit
    assert call.turn is None and 0 <= int(call.codes.min()) and int(call.codes.max()) < limit

    # The call (and the engine) stay usable: the next reply runs normally.
    rig["on"] = False
    engine.cancel(other)
    again: list[AudioChunk | None] = []
    engine.speak(call, "[S1] Okay.", again.append, GREEDY)
    while engine.step():
        pass
    assert again[-1] is None and len(again) > 1
    assert all(0 <= lo and hi < limit for lo, hi in mimi_lookups)


def test_mimi_stream_decodes_out_of_range_codes_as_code_zero(
    runtime: Dia2, mimi_lookups: list[tuple[int, int]]
) -> None:
    """The last guard, inside the (graph-captured) decoder: no out-of-range lookup, ever."""
    k = runtime.mimi.num_codebooks
    dec = StreamingMimiDecoder(runtime.mimi.model, batch_size=1)
    bad = torch.full((1, k, 1), runtime.ids.audio_pad)
    bad[0, 1, 0], bad[0, 2, 0] = runtime.ids.audio_bos, runtime.ids.ungenerated
    zero = torch.zeros(1, k, 1, dtype=torch.long)
    out = dec.decode_frame(bad)
    ref = StreamingMimiDecoder(runtime.mimi.model, batch_size=1).decode_frame(zero)
    assert torch.equal(out, ref)
    assert all(0 <= lo and hi < runtime.mimi.codebook_size for lo, hi in mimi_lookups)


def _voice_with_leftovers(engine: BatchEngine, reference: ReferenceFixture) -> VoicePrompt:
    """The fixture's 2 s voice (25 frames) with words timed so that ingesting it leaves work behind
    without the fix: a long word forced to start at the last frame (pieces still unspelled) and a word
    whose forced start (+3 for speaker 1) lies past the audio (never started)."""
    voice = reference.prefix_speakers()[0]
    prompt = engine.encode_voice(voice.audio, 24000, ())
    frames = prompt.frames
    rate = engine.frame_rate
    long_word = "extraordinarily"
    assert len(engine.encoder.encode(long_word)) >= 3  # else nothing would be left to spell
    words = (
        PrefixWord("Good", 0.16, 0.40),
        PrefixWord(long_word, (frames - 3) / rate, (frames - 1) / rate),  # forced at frame - 2 + 3 - 1
        PrefixWord("zebra", (frames + 1) / rate, (frames + 2) / rate),  # forced past the audio
    )
    return VoicePrompt(prompt.codes, words)


def test_engine_reply_never_reenters_the_voice_transcript(runtime: Dia2, reference: ReferenceFixture) -> None:
    engine = make_engine(runtime)
    call = engine.open_call()
    engine.set_voice_prompt(call, _voice_with_leftovers(engine, reference))
    state = call.machine
    assert [w for w, _ in state.transcript][-1] == "extraordinarily"  # it did start in the voice
    assert not state.entries and not state.pending_tokens and not state.lookahead_tokens
    heard = len(state.transcript)
    got: list[AudioChunk | None] = []
    engine.speak(call, "[S1] Okay then.", got.append, GREEDY)
    while engine.step():
        pass
    spoken = [w for w, _ in call.machine.transcript[heard:]]
    assert spoken and set(spoken) <= {"Okay", "then."}, spoken


def test_generation_never_reenters_prefix_entries(runtime: Dia2, reference: ReferenceFixture) -> None:
    """One-shot ``Dia2.generate`` with a prefix whose last word is forced past its audio: upstream keeps
    that word queued and the reply starts by saying it; here the reply's words are the script's only."""
    voice = reference.prefix_speakers()[0]
    frames = runtime.mimi.encode(voice.audio).shape[-1]
    rate = float(runtime.mimi.sample_rate) / float(runtime.mimi.frame_size)
    words = (PrefixWord("Good", 0.16, 0.40), PrefixWord("zebra", (frames + 1) / rate, (frames + 2) / rate))
    plan = runtime.prefix_plan(PrefixSpeaker(voice.audio, words), None)
    opts = GenerationOptions(
        text=SamplingParams(0.0, 1), audio=SamplingParams(0.0, 1), cfg_scale=1.0, max_steps=80
    )
    result = runtime.generate("[S1] Okay then.", prefix=plan, options=opts, decode=False)
    started = [w for w, _ in result.details.transcript]  # every word the state machine started
    assert started[0] == "Good" and "zebra" not in started, started
    assert set(started[1:]) <= {"Okay", "then."} and started[1:], started
    assert [w for w, _ in result.timestamps] == started[1:]  # the prefix's words dropped by count


def test_partner_prefix_is_part_of_the_voice(runtime: Dia2, reference: ReferenceFixture) -> None:
    engine = make_engine(runtime)
    call = engine.open_call()
    voice_spk, caller_spk = reference.prefix_speakers()
    voice = engine.encode_voice(voice_spk.audio, 24000, voice_spk.words)
    partner = engine.encode_voice(caller_spk.audio, 24000, caller_spk.words)
    engine.set_voice_prompt(call, voice, partner=partner)
    a, b = voice.frames, voice.frames + partner.frames
    assert call.segments == [("voice", 0, a), ("voice", a, b)]
    spk2 = runtime.ids.spk2
    assert any(main == spk2 for main, _ in call.text[a : b + 1])  # the partner speaks as [S2]
    assert not any(main == spk2 for main, _ in call.text[: a + 1])
    text = list(call.text)

    # Caller turns until the context policy must drop some: both voice segments always stay first.
    for _ in range(6):
        engine.user_spoke_prompt(call, partner)
    engine.speak(call, "[S1] Okay.", lambda c: None, GREEDY)
    engine.cancel(call)
    assert call.dropped_segments > 0
    assert call.segments[:2] == [("voice", 0, a), ("voice", a, b)]
    assert call.text[:b] == text[:b]

    engine.reset(call)  # re-warms both
    assert call.segments == [("voice", 0, a), ("voice", a, b)] and call.text == text

    # Too long together: refused before anything changes.
    long = VoicePrompt(partner.codes.repeat(1, 8), ())
    with pytest.raises(ContextOverflowError, match="partner"):
        engine.set_voice_prompt(call, voice, partner=long)
    assert call.segments == [("voice", 0, a), ("voice", a, b)] and call.text == text
