"""Whisper in transformers on torch, batched across calls: the GPU ASR backend (`asr.backend: transformers`).

CTranslate2 (faster-whisper) decodes one clip per worker; on a GPU host with many calls the turns of
different calls arrive a few ms apart, and one batched generate of 8 clips costs little more than one. So
every transcription is a `_Job` handed to one batch thread: it takes the first job, waits at most
`asr.batch_window_ms` for more (up to `asr.max_batch`), runs one `generate` over all of them, and resolves
each job's future with its own row. Rows never mix: job i of the batch reads row i of every output tensor.

Word timestamps come from cross-attention DTW over the model's `alignment_heads` (its generation config; eager
attention exposes the weights): generate decodes tokens only, then one decoder forward over the rows that
want words gives those heads' weights and sipbridge/word_times.py aligns them, with the same times as
transformers' `return_token_timestamps`, without its per-step attention bookkeeping. Tokens are grouped into
words where a token starts with a space. Early ASR needs nothing special: a partial turn is one more job.

A decoder on noise (or random weights) may not stop by itself: every batch is capped at
`asr.max_tokens_per_second` tokens per second of its longest clip, plus a few for the prompt.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sipbridge.word_times import alignment_weights, encoder_frames, token_times

if TYPE_CHECKING:
    from sipbridge.asr_encoder import GraphedEncoder
    from sipbridge.asr_greedy import GreedyWhisper

log = logging.getLogger(__name__)

TimedWord = tuple[str, float, float]  # word, start s, end s
AsrResult = tuple[str, list[TimedWord]]
_RATE = 16000
_MIN_TOKENS = 4  # what a cap never goes below: a 0.3 s "yes" still gets its word and the end token


class BatchLoadError(Exception):
    """The transformers model or its processor cannot be loaded."""


@dataclass
class _Job:
    audio: npt.NDArray[np.float32]
    words: bool
    future: concurrent.futures.Future[AsrResult] = field(default_factory=concurrent.futures.Future)
    queued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    peak_batch: int = 0
    last_batch_ms: float = 0.0
    total_batch_s: float = 0.0  # generate time summed: with `rows`, what a load run divides by
    # With BatchedWhisper.profile on (benchmarks): ms per phase summed over batches, the GPU waited for at
    # each phase's end (features, encoder, decode, align, dtw, text).
    phase_ms: dict[str, float] = field(default_factory=dict)


def token_cap(seconds: float, per_second: float) -> int:
    """Most new tokens for a batch whose longest clip lasts `seconds`."""
    return max(_MIN_TOKENS, math.ceil(seconds * per_second) + 2)


def group_words(pieces: list[str], times: list[float]) -> list[TimedWord]:
    """(word, start, end) from decoded token texts and their DTW times: a token that starts with a space (or
    the first one) opens a word; a word ends where the next token starts (the last one at its own time)."""
    words: list[list[Any]] = []
    for i, piece in enumerate(pieces):
        end = times[i + 1] if i + 1 < len(times) else times[i]
        if not words or piece.startswith(" "):
            words.append([piece, times[i], end])
        else:
            words[-1][0] += piece
            words[-1][2] = end
    return [(w.strip(), float(s), float(e)) for w, s, e in words if w.strip()]


class BatchedWhisper:
    """One transformers Whisper model and the thread that batches every call's transcriptions through it."""

    def __init__(
        self,
        model: str,
        *,
        device: str,
        dtype: str,
        language: str | None,
        window_ms: float,
        max_batch: int,
        max_tokens_per_second: float,
        static_decoder: bool = True,
        encoder_graphs: bool = True,
    ) -> None:
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self.max_tokens_per_second = max_tokens_per_second
        self.language = language
        self.device = device
        self.stats = BatchStats()
        self.profile = False  # benchmarks: wait for the GPU after each phase and time it (stats.phase_ms)
        self._lap_at = 0.0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._model, self._processor = _load(model, device, dtype)
        self._stream = _side_stream(device)
        self._dtype = next(self._model.parameters()).dtype
        self._greedy = self._static_decoder(static_decoder)
        self._encoder = self._graphed_encoder(encoder_graphs)
        from sipbridge.asr_features import LogMel  # torch: only the transformers backend needs it

        self._log_mel = LogMel(self._processor.feature_extractor, device)
        self._special = set(self._processor.tokenizer.all_special_ids)
        self._eos = int(self._processor.tokenizer.eos_token_id)
        self._thread = threading.Thread(target=self._serve, name="asr-batch", daemon=True)
        self._thread.start()

    def _static_decoder(self, wanted: bool) -> GreedyWhisper | None:
        """sipbridge/asr_greedy.py's decoder for this model, if wanted and it can stand in for generate (a
        fixed prompt: a multilingual model needs its language set; plain greedy decoding)."""
        from sipbridge.asr_greedy import GreedyWhisper, unsupported

        if not wanted:
            return None
        multilingual = getattr(self._model.generation_config, "is_multilingual", False)
        why = unsupported(self._model.generation_config)
        if why is None and multilingual and not self.language:
            why = "a multilingual model without asr.language detects the language per turn"
        if why is not None:
            log.warning("asr: transformers' generate decodes (%s)", why)
            return None
        with self._own_stream():
            return GreedyWhisper(
                self._model, prompt=self._prompt(), max_batch=self.max_batch, graphs=self._stream is not None
            )

    def _graphed_encoder(self, graphs: bool) -> GraphedEncoder:
        """sipbridge/asr_encoder.py's encoder: graph replays on a CUDA device if wanted, else eager."""
        from sipbridge.asr_encoder import GraphedEncoder

        with self._own_stream():
            return GraphedEncoder(
                self._model, max_batch=self.max_batch, graphs=graphs and self._stream is not None
            )

    def _lap(self, phase: str) -> None:
        """With `profile` on: wait for the GPU and add the time since the last lap to `phase`."""
        if not self.profile:
            return
        if self._stream is not None:
            self._stream.synchronize()
        now = time.perf_counter()
        if phase:
            self.stats.phase_ms[phase] = self.stats.phase_ms.get(phase, 0.0) + (now - self._lap_at) * 1000
        self._lap_at = now

    def _prompt(self) -> list[int]:
        """The tokens generate feeds before the first decoded one (start of transcript, language and task,
        no timestamps), as transformers builds them for this model: one decoding step over a silent
        encoder output, recorded."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        cfg = self._model.config
        silent = torch.zeros(1, cfg.max_source_positions, cfg.d_model, device=self.device, dtype=self._dtype)
        steps = _StepRecorder()
        with torch.inference_mode():
            self._model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=silent),
                logits_processor=[steps],
                max_new_tokens=1,
                **self._language(),
            )
        return [int(t) for t in steps.fed[0].tolist()]

    def _language(self) -> dict[str, Any]:
        if getattr(self._model.generation_config, "is_multilingual", False):
            return {"language": self.language, "task": "transcribe"}
        return {}

    def submit(self, audio: npt.NDArray[np.float32], words: bool) -> concurrent.futures.Future[AsrResult]:
        """Queue one 16 kHz clip; the future resolves with its text and timed words (if asked for)."""
        job = _Job(audio, words)
        self._jobs.put(job)
        return job.future

    def run(self, audio: npt.NDArray[np.float32], words: bool) -> AsrResult:
        return self.submit(audio, words).result()

    def close(self) -> None:
        self._jobs.put(None)

    def _serve(self) -> None:
        while (batch := self._collect()) is not None:
            # A call that moved on cancels its transcription (early ASR whose caller went on, a hang-up):
            # it costs no row, and its future, now running, can no longer be cancelled under set_result
            # (that raised InvalidStateError and ended this thread: every later turn of every call waited
            # for ever; found by the 32-call GPU system run).
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)

    def _collect(self) -> list[_Job] | None:
        """The first job, then whatever else arrives within the window (from that first job's arrival)."""
        first = self._jobs.get()
        if first is None:
            return None
        batch, deadline = [first], first.queued + self.window_s
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _run_batch(self, batch: list[_Job]) -> None:
        t0 = time.monotonic()
        try:
            results = self._generate(batch)
        except Exception as exc:  # a failed batch fails each of its turns, never the thread
            log.exception("asr batch of %d failed", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.rows += len(batch)
        self.stats.peak_batch = max(self.stats.peak_batch, len(batch))
        self.stats.last_batch_ms = (time.monotonic() - t0) * 1000
        self.stats.total_batch_s += self.stats.last_batch_ms / 1000
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)

    def _generate(self, batch: list[_Job]) -> list[AsrResult]:
        with self._own_stream():
            return self._generate_here(batch)

    def _own_stream(self) -> contextlib.AbstractContextManager[Any]:
        """The ASR's own CUDA stream as the current one (nothing on the CPU). On the default stream, which
        Dia2's graph replays use, every ASR kernel queued behind an engine step and every engine step behind
        the ASR's kernels (32 calls on an H100: turns transcribed ~18 s late, replies underran). PyTorch's
        side streams do not sync with the default one. The decoder's and encoder's graphs are captured from
        it too."""
        if self._stream is None:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.stream(self._stream)

    def _generate_here(self, batch: list[_Job]) -> list[AsrResult]:
        self._lap("")
        # each row's real frames too: DTW crops its own row to them
        features, real = self._log_mel([job.audio for job in batch])
        feats = features.to(self._dtype)
        caps = [token_cap(len(job.audio) / _RATE, self.max_tokens_per_second) for job in batch]
        timed = [i for i, job in enumerate(batch) if job.words]
        frames = encoder_frames(real)
        self._lap("features")
        tokens, times = self.decode(feats, max(caps), timed, [frames[i] for i in timed])
        stamps: list[Any] = [None] * len(batch)
        for i, row in zip(timed, times, strict=True):
            stamps[i] = row
        rows = [self._row(tokens[i], stamps[i], job, caps[i]) for i, job in enumerate(batch)]
        self._lap("text")
        return rows

    def decode(
        self, feats: Any, max_new_tokens: int, timed: list[int], frames: list[int]
    ) -> tuple[list[list[int]], list[npt.NDArray[np.float32]]]:
        """Each row's decoded token ids (greedy, the prompt left out, padded with end tokens), and for the
        rows `timed` (whose real encoder frames are `frames`) each decoded token's time in seconds.

        generate is asked for tokens only: word timestamps there made it keep every decoder layer's
        cross-attention at every step and split them per row in Python (most of the ASR thread's time at 128
        calls), and keep every encoder layer's attention too (~29 GB for 10 rows of large-v3-turbo). One more
        decoder forward over the timed rows' steps gives the alignment heads' weights instead
        (sipbridge/word_times.py). The encoder runs here, once, for both."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        with torch.inference_mode():
            encoded = self._encoder(feats)
            self._lap("encoder")
            if self._greedy is not None:
                out, fed = self._greedy.decode(encoded, max_new_tokens)
                prompt = len(self._greedy.prompt)
            else:
                steps = _StepRecorder()
                out = self._model.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                    logits_processor=[steps],
                    max_new_tokens=max_new_tokens,
                    **self._language(),
                )
                fed, prompt = steps.fed, steps.prompt
            tokens: list[list[int]] = out.tolist()
            self._lap("decode")
            if not timed:
                return tokens, []
            rows = torch.tensor(timed, device=fed.device)
            weights = alignment_weights(
                self._model,
                fed[rows],
                encoded[rows],
                self._model.generation_config.alignment_heads,
                max(frames),
            )
            self._lap("align")
            # the cost matrices are made on the device too: one small transfer, not a dozen ops per row
            times = token_times(weights, frames, prompt, int(self._model.config.median_filter_width))
        self._lap("dtw")
        return tokens, times

    def _row(self, ids: list[int], times: npt.NDArray[np.float32] | None, job: _Job, cap: int) -> AsrResult:
        """One call's text (and words) from its decoded ids and their times: its own token cap applies, so a
        short turn batched with a long one reads exactly as it would alone (greedy rows do not depend on each
        other)."""
        # past any special the model says first (a language id): skipped as before, not taken for the end
        start = next((i for i, t in enumerate(ids) if t < self._eos), len(ids))
        keep: list[int] = []
        for i in range(start, min(len(ids), start + cap)):
            if ids[i] in self._special or ids[i] >= self._eos:  # every id from end-of-text up is special
                break  # end of text (and the padding after it)
            keep.append(i)
        tok = self._processor.tokenizer
        text = tok.decode([ids[i] for i in keep]).strip()
        if not job.words or times is None or not keep:
            return text, []
        duration = len(job.audio) / _RATE
        stamps = [min(float(x), duration) for x in times.tolist()]  # DTW may not place a word past the audio
        # each kept token's DTW time; the stamp after the last one closes the last word
        tail = [stamps[keep[-1] + 1]] if keep[-1] + 1 < len(stamps) else []
        return text, group_words([tok.decode([ids[i]]) for i in keep], [stamps[i] for i in keep] + tail)


class _StepRecorder:
    """A logits processor that changes nothing: it keeps what the decoder was fed at the last step (the
    prompt and every decoded token but the last, a finished row's end token and padding included) and how
    long the prompt was (generate builds it: start, language and task tokens, no-timestamps). Plain generate
    returns neither (the decoded tokens only, the end token dropped), and the alignment forward must rerun
    exactly these steps: transformers' DTW counts every one of them, so its times need them too."""

    def __init__(self) -> None:
        self.fed: Any = None
        self.prompt = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.fed is None:
            self.prompt = int(input_ids.shape[1])
        self.fed = input_ids
        return scores


def _side_stream(device: str) -> Any:
    """A CUDA stream of the ASR's own on a CUDA device (None on the CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.Stream(device=torch.device(device))


def _load(model: str, device: str, dtype: str) -> tuple[Any, Any]:
    """A hub id (from the local cache when offline) or a folder in transformers' layout (config.json,
    safetensors, generation_config.json, tokenizer and preprocessor files)."""
    try:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
    except ImportError as exc:
        raise BatchLoadError("asr.backend transformers needs torch and transformers installed") from exc
    try:
        processor = WhisperProcessor.from_pretrained(model)
        net = WhisperForConditionalGeneration.from_pretrained(
            model, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
    except Exception as exc:  # hub, file and format errors have no common base class
        raise BatchLoadError(f"cannot load ASR model {model!r} with transformers: {exc}") from exc
    if not getattr(net.generation_config, "alignment_heads", None):
        # Whisper's own rule when no heads are published: every head of the upper half of the decoder.
        log.warning("asr model %s has no alignment_heads: word timestamps use the upper decoder half", model)
        layers, heads = net.config.decoder_layers, net.config.decoder_attention_heads
        upper = range(layers // 2, layers)
        # GenerationConfig keeps model-specific keys as dynamic attributes, which its stubs do not declare.
        net.generation_config.alignment_heads = [[n, h] for n in upper for h in range(heads)]  # type: ignore[attr-defined]
    # transformers types `to` through a decorator that drops the device argument's type.
    return net.to(device).eval(), processor  # type: ignore[arg-type]
