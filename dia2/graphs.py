"""How the engine's frame phases run: a captured CUDA graph when there is one, else the same code eagerly.

:class:`FrameGraphs` owns every graph the engine replays: per batch bucket the main step, the depformer,
the lead-in finish and the Mimi decode; the main step per (bucket, KV length); the lead-in lane per (lane
bucket, KV length); and the Mimi priming graph. It also picks the fused path (``dia2/fused.py``) and the
Triton kernels. On the CPU (or with ``cuda_graphs`` off, or where a capture failed) nothing is captured
and every ``run_*`` runs the phase of ``dia2/frame.py`` directly: the engine's logic never knows which.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .frame import FrameBuffers, FrameConstants, depformer_phase, finish_phase, lane_phase, main_phase
from .mimi_rows import MimiRows
from .model import Dia2Model

__all__ = ["FrameGraphs", "kernel_choice"]

logger = logging.getLogger(__name__)


class FrameGraphs:
    def __init__(
        self,
        model: Dia2Model,
        consts: FrameConstants,
        buf: FrameBuffers,
        lane: FrameBuffers,
        lane_slots: torch.Tensor,
        mimi: MimiRows,
        fused: Any,
        gen: torch.Generator | None,
        *,
        buckets: list[int],
        kv_buckets: list[int],
        lane_buckets: list[int],
    ) -> None:
        self.model, self.consts, self.buf, self.lane, self.lane_slots = model, consts, buf, lane, lane_slots
        self.mimi, self.fused, self.gen = mimi, fused, gen
        self.buckets, self.kv_buckets, self.lane_buckets = buckets, kv_buckets, lane_buckets
        self.max_steps = kv_buckets[-1]
        self.steps: dict[int, tuple[Any, Any, Any, Any]] = {}  # bucket → (main, depformer, Mimi, finish)
        self.main: dict[tuple[int, int], Any] = {}  # (bucket, KV length) → main step
        self.lane_graphs: dict[tuple[int, int], Any] = {}  # (lane bucket, KV length) → lane step
        self.prime: Any = None
        self.errors: list[str] = []

    # --- replay or run ----------------------------------------------------------------------------

    def run_main(self, n: int, kv_len: int | None = None) -> None:
        kv_len = kv_len or self.max_steps
        graph = self.main.get((n, kv_len))
        if graph is not None:
            graph.replay()
        else:
            main_phase(self.model, self.buf.view(n), self.consts, self.gen, self.fused, kv_len)

    def run_depformer(self, n: int, lead: bool = False) -> None:
        graphs = self.steps.get(n)
        if graphs is None:
            if lead:
                finish_phase(self.buf.view(n), self.consts)
            else:
                depformer_phase(self.model, self.buf.view(n), self.consts, self.gen, self.fused)
        else:
            graphs[3 if lead else 1].replay()

    def run_mimi(self, n: int) -> None:
        graphs = self.steps.get(n)
        if graphs is not None and graphs[2] is not None:
            graphs[2].replay()
        else:
            self.mimi.decode(n)

    def run_lane(self, m: int, kv_len: int) -> None:
        graph = self.lane_graphs.get((m, kv_len))
        if graph is not None:
            graph.replay()
        else:
            lane_phase(
                self.model,
                self.buf,
                self.lane.view(m),
                self.lane_slots[:m],
                self.consts,
                self.gen,
                self.fused,
                kv_len,
            )

    def replay_prime(self, slot: int) -> bool:
        """Prime ``slot``'s Mimi row from its ring with one graph replay; False when there is no graph.
        No host copy: a kernel fill of the slot index keeps several primes in one step ordered."""
        if self.prime is None:
            return False
        self.mimi.prime_slot.fill_(slot)
        self.prime.replay()
        return True

    # --- capture (CUDA) ---------------------------------------------------------------------------

    def capture(self, lane_on: bool) -> None:
        """Capture the frame graphs of every bucket once (main step; depformer; Mimi decode), then clear
        the buffers the warm-up touched (the engine resets its host mirror of them). A failed capture
        leaves that part eager (logged, in ``errors``)."""
        pool = torch.cuda.graph_pool_handle()
        # The Mimi graphs replay on their own stream beside the frame graphs: a pool of their own, so
        # the two never share scratch memory.
        mimi_pool = torch.cuda.graph_pool_handle()
        self.buf.active.fill_(True)
        self.errors = []
        with torch.inference_mode():
            for n in self.buckets:
                self._capture_bucket(n, pool, mimi_pool)
            if lane_on:
                self._capture_lane(pool)
                self._capture_prime(mimi_pool)
        torch.cuda.synchronize()
        for t in (self.buf.step, self.buf.known, self.buf.positions, self.buf.cache_index, self.buf.ring):
            t.zero_()
        self.buf.active.fill_(False)
        self.lane_slots.fill_(self.mimi.capacity)  # the spare call entry (lane padding)
        self.mimi.master.reset()

    def _capture_bucket(self, n: int, pool: Any, mimi_pool: Any) -> None:
        view, model, consts, fused = self.buf.view(n), self.model, self.consts, self.fused
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy inits, cuBLAS handles, allocator
                main_phase(model, view, consts, None, fused)
                depformer_phase(model, view, consts, None, fused)
                finish_phase(view, consts)
                self.mimi.decode(n)
            for kv_len in self.kv_buckets:
                main_phase(model, view, consts, None, fused, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        try:
            g_main, g_dep, g_lead = (torch.cuda.CUDAGraph() for _ in range(3))
            with torch.cuda.graph(g_main, pool=pool):
                main_phase(model, view, consts, None, fused)
            with torch.cuda.graph(g_dep, pool=pool):
                depformer_phase(model, view, consts, None, fused)
            with torch.cuda.graph(g_lead, pool=pool):
                finish_phase(view, consts)
            for kv_len in self.kv_buckets[:-1]:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    main_phase(model, view, consts, None, fused, kv_len)
                self.main[(n, kv_len)] = g
            self.main[(n, self.max_steps)] = g_main
        except RuntimeError as exc:
            logger.exception("frame graph capture failed for %d calls; running eagerly", n)
            self.errors.append(f"frame[{n}]: {exc}")
            return
        g_mimi: Any = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g_mimi, pool=mimi_pool):
                self.mimi.decode(n)
        except RuntimeError as exc:
            logger.exception("Mimi graph capture failed for %d calls; decoding eagerly", n)
            self.errors.append(f"mimi[{n}]: {exc}")
            g_mimi = None
        self.steps[n] = (g_main, g_dep, g_mimi, g_lead)
        logger.info("captured frame graphs for %d calls", n)

    def _capture_prime(self, pool: Any) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.mimi.prime_body()
        torch.cuda.current_stream().wait_stream(side)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.mimi.prime_body()
            self.prime = g
        except RuntimeError as exc:
            logger.exception("Mimi priming graph capture failed; priming eagerly")
            self.errors.append(f"prime: {exc}")

    def _capture_lane(self, pool: Any) -> None:
        """Lane graphs: one per (lane bucket, KV length), captured on real slots 0..m-1."""
        for m in self.lane_buckets:
            self.lane_slots[:m].copy_(torch.arange(m, device=self.lane_slots.device))
            args = (
                self.model,
                self.buf,
                self.lane.view(m),
                self.lane_slots[:m],
                self.consts,
                None,
                self.fused,
            )
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for kv_len in self.kv_buckets:
                    lane_phase(*args, kv_len)
            torch.cuda.current_stream().wait_stream(side)
            try:
                for kv_len in self.kv_buckets:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool):
                        lane_phase(*args, kv_len)
                    self.lane_graphs[(m, kv_len)] = g
            except RuntimeError as exc:
                logger.exception("lane graph capture failed for %d calls; running eagerly", m)
                self.errors.append(f"lane[{m}]: {exc}")
                self.lane_graphs = {k: v for k, v in self.lane_graphs.items() if k[0] != m}
        logger.info("captured lane graphs for %s calls", self.lane_buckets)


def kernel_choice(
    kernels_opt: bool | None, pdl_opt: bool | None, model: Dia2Model, cuda: bool
) -> tuple[bool, bool]:
    """(Triton kernels, programmatic dependent launch) for the fused path. ``None`` means "where they can
    run"; ``True`` insists and names what is missing."""
    from .fused import kernels_supported

    kernels = False
    if kernels_opt is not False:
        why = kernels_supported(model)
        if why is not None and kernels_opt:
            raise ValueError(f"EngineOptions.kernels=True, but the depformer kernels cannot run: {why}")
        kernels = why is None and bool(kernels_opt or cuda)
    if pdl_opt is False:
        return kernels, False
    why = "the Triton kernels are off"
    if kernels:
        from .kernels import pdl_supported

        why = pdl_supported(model.device)
    if why is not None and pdl_opt:
        raise ValueError(f"EngineOptions.pdl=True, but the kernels cannot use PDL: {why}")
    return kernels, why is None
