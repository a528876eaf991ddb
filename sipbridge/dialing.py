"""The supervisor's side of the dialer (`sipbridge dial`, docs/DIALER.md): the campaign runner it makes, the
calls it places on the least busy worker, the free call slots it reports, and the stop once the campaign's
work is done. The runner itself (claims, retries, AMD routing) is sipbridge/dialer/live.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sipbridge import frames as f
from sipbridge.config import CALLS_PER_WORKER
from sipbridge.dialer.campaign import LoadedCampaign
from sipbridge.dialer.live import CampaignRunner, Clock
from sipbridge.dialer.state import CampaignState
from sipbridge.supervisor_context import SupervisorContext


@dataclass
class DialerLink:
    ctx: SupervisorContext

    def make_runner(self, campaign: LoadedCampaign, clock: Clock, exit_when_idle: bool) -> CampaignRunner:
        ctx = self.ctx
        assert ctx.store is not None
        cfg = ctx.config
        runner = CampaignRunner(
            campaign,
            CampaignState(ctx.store, campaign.campaign.name),
            self.send_dial,
            self.free_slots,
            clock=clock,
            default_dial_uri=self.default_dial_uri(),
            exit_when_idle=exit_when_idle,
            send_to_worker=self.send_to_worker,
            metrics=ctx.metrics,
            asr_available=cfg.asr.backend != "none",
            daily_cap=cfg.dialer.max_attempts_per_number_per_day,
        )
        ctx.dialer = runner
        return runner

    def send_dial(self, dial: f.Dial) -> int | None:
        """The least busy connected worker places the call; its slot counts from the INVITE on."""
        pool = self.ctx.pool
        assert pool is not None
        ready = [w for w in pool.workers if w.connected.is_set() and len(w.calls) < CALLS_PER_WORKER]
        if not ready:
            return None
        worker = min(ready, key=lambda w: (len(w.calls), w.index))
        if not worker.send(dial):
            return None
        worker.calls.add(dial.call_id)
        self.ctx.front_load(worker)
        return worker.index

    def send_to_worker(self, index: int, frame: f.Frame) -> bool:
        pool = self.ctx.pool
        assert pool is not None
        return 0 <= index < len(pool.workers) and pool.workers[index].send(frame)

    def free_slots(self) -> int:
        pool = self.ctx.pool
        if pool is None:
            return 0
        return sum(max(0, CALLS_PER_WORKER - len(w.calls)) for w in pool.workers if w.connected.is_set())

    def default_dial_uri(self) -> str:
        trunk = self.ctx.config.sip.trunk
        host = str(trunk.registrar).split(":", 1)[1] if trunk.registrar else "127.0.0.1"
        return "sip:{number}@" + host

    async def run_campaign(self, runner: CampaignRunner, request_stop: Callable[[str], None]) -> None:
        stop_event = self.ctx.stop_event
        await runner.run(stop_event)
        # Let answered calls finish their flow before stopping: the campaign ends when its last call does.
        while runner.on_answer_route and not stop_event.is_set():
            await asyncio.sleep(0.1)
        request_stop(f"campaign {runner.name} finished its work")
