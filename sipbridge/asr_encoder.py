"""Whisper's encoder replayed as one CUDA graph per batch size: the batched ASR's encoder.

Why: the encoder's shapes never change (30 s of log-mel, 3 000 frames, whatever the turn's length), yet run
eagerly it is ~400 kernel launches from Python per batch (32 layers of large-v3-turbo). On a host where the
ASR thread shares the GIL with the Dia2 engine thread and the event loop, each launch may wait for the GIL:
run G (docs/PERFORMANCE.md) found the ASR thread's time in the encoder's module calls once the decoder was a
graph. Here a batch of B rows copies its features into a static buffer and replays the graph of the
smallest bucket that holds B (the decoder's buckets: 1, 2, 4, ..., max_batch); rows past B hold whatever the
last batch left and are never read.

The graphs share one memory pool (one batch runs at a time: the ASR has one thread), so the activations of
the largest bucket are what they hold; each bucket keeps its own output tensor. On the CPU, or if capture
fails, the encoder runs eagerly, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sipbridge.asr_greedy import buckets

__all__ = ["GraphedEncoder"]

log = logging.getLogger(__name__)


class GraphedEncoder:
    """`encoder(features)[:B]` for a [B, mels, frames] batch, from a graph replay where one was captured."""

    def __init__(self, model: Any, *, max_batch: int, graphs: bool) -> None:
        self.encoder = model.get_encoder()
        cfg = model.config
        # the features the encoder accepts: mels x (2 x its positions), its stride-2 convolution
        self.shape = (int(cfg.num_mel_bins), 2 * int(cfg.max_source_positions))
        weight = next(self.encoder.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.sizes = buckets(max_batch)
        self._input: torch.Tensor | None = None
        self._outputs: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if graphs and self.device.type == "cuda":
            try:
                self._capture_all(max_batch)
            except RuntimeError:  # a driver or capture limit: the same forward runs eagerly
                log.exception("asr encoder: CUDA graph capture failed; encoding eagerly")
                self._graphs.clear()
                self._outputs.clear()
                self._input = None

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """The last hidden state [B, positions, d_model]. A graph's output is its own buffer, overwritten by
        the next call: use it (or copy it) before encoding again."""
        rows = features.shape[0]
        size = next((s for s in self.sizes if s >= rows), None)
        if size is None or size not in self._graphs or self._input is None:
            return self._eager(features)
        self._input[:rows].copy_(features)
        self._graphs[size].replay()
        return self._outputs[size][:rows]

    def _eager(self, features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            hidden: torch.Tensor = self.encoder(features).last_hidden_state
        return hidden

    def _capture_all(self, max_batch: int) -> None:
        """One graph per bucket, the largest first (its activations size the shared pool), each after two
        eager runs on a side stream, as capture needs."""
        self._input = torch.zeros(max_batch, *self.shape, device=self.device, dtype=self.dtype)
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for size in sorted(self.sizes, reverse=True):
                view = self._input[:size]
                for _ in range(2):
                    self.encoder(view)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    self._outputs[size] = self.encoder(view).last_hidden_state
                self._graphs[size] = graph
        torch.cuda.current_stream(self.device).wait_stream(side)
        log.info("asr encoder: %d graphs captured (batches %s)", len(self._graphs), self.sizes)
