"""What every part of the supervisor shares: the config, the components it starts (store and its writer,
engine, ASR, agent, workers, front, dialer), the open call sessions, the tasks a stop waits for and the
drain/stop state. Everything here is read and written on the supervisor's event loop.

The parts (sipbridge/supervisor.py wires them, starts and stops the components): `CallRouter`
(sipbridge/routing.py: worker frames to sessions and call records), `StatusViews` (sipbridge/status.py:
/healthz, /readyz, the gauges of /metrics) and `DialerLink` (sipbridge/dialing.py: the campaign's calls onto
the workers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sipbridge.agents import Agent
from sipbridge.asr import Transcriber
from sipbridge.config import Config, LoadedConfig
from sipbridge.dialer.live import CampaignRunner
from sipbridge.engine import Engine
from sipbridge.http.service import ConversationService
from sipbridge.loop_lag import LoopLag
from sipbridge.metrics import Metrics
from sipbridge.session import CallSession
from sipbridge.sip.front import SipFront
from sipbridge.sip.pool import WorkerHandle, WorkerPool
from sipbridge.store import Store
from sipbridge.store_writer import StoreWriter
from sipbridge.turn_policy import EndOfTurn


@dataclass
class SupervisorContext:
    loaded: LoadedConfig
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    store: Store | None = None
    # The only writer of call records while running: the loop queues, its thread commits (store_writer.py).
    writer: StoreWriter | None = None
    engine: Engine | None = None
    asr: Transcriber | None = None
    end_of_turn: EndOfTurn | None = None  # turn.end_of_turn: judges a caller's pause (sipbridge/turn_policy)
    agent: Agent | None = None
    pool: WorkerPool | None = None
    front: SipFront | None = None  # Kamailio before the workers (sip.front); None: workers reached directly
    sessions: dict[str, CallSession] = field(default_factory=dict)
    # HTTP conversations (sipbridge/http): sessions of the same engine as the calls, so they share its batch.
    conversations: ConversationService | None = None
    dialer: CampaignRunner | None = None
    metrics: Metrics = field(default_factory=Metrics)  # GET /metrics; gauges added by StatusViews
    loop_lag: LoopLag | None = None  # measures the loop's stalls from ready on (sipbridge/loop_lag.py)
    loop: asyncio.AbstractEventLoop | None = None
    closing: set[asyncio.Task[None]] = field(default_factory=set)  # tasks the stop waits for
    # Graceful drain (Supervisor.begin_drain). A SIP front (docs/DEPLOY.md) registers a hook to stop routing
    # INVITEs here and a readiness check of its own; both are plain callables run on the loop.
    draining: bool = False
    drain_hooks: list[Callable[[str], None]] = field(default_factory=list)
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return self.loaded.config

    def track_closing(self, coro: Coroutine[Any, Any, None], name: str = "closing") -> None:
        """A task the stop waits for (`closing`), e.g. the front's drain RPCs or a session's close."""
        task = asyncio.create_task(coro, name=name)
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def front_load(self, worker: WorkerHandle) -> None:
        """The front routes on the calls it dispatched; dialer calls count only here: tell it."""
        if self.front is not None:
            self.front.worker_load(worker.index, len(worker.calls))
