"""What the supervisor tells the outside about itself: /healthz's sources, /readyz's checks and the gauges of
/metrics. All of it reads the components when asked (their state stays theirs, never copied here); the HTTP
handlers call these from uvicorn's thread pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipbridge.dialer.health import add_caller_id_gauges
from sipbridge.dialer.live import Clock
from sipbridge.dialer.state import ts
from sipbridge.sip.front import SipFront
from sipbridge.supervisor_context import SupervisorContext


@dataclass
class StatusViews:
    ctx: SupervisorContext

    def health_sources(self) -> Mapping[str, Any]:
        ctx = self.ctx

        def process() -> dict[str, Any]:
            return {
                "uptime_s": round(time.monotonic() - ctx.started_at, 3),
                "config": ctx.loaded.source,
                # Leak checks: a finished call leaves no thread and no task behind.
                "threads": sorted(t.name for t in threading.enumerate()),
                "tasks": len(asyncio.all_tasks(ctx.loop)) if ctx.loop else 0,
            }

        def store() -> dict[str, Any]:
            if ctx.store is None:
                return {"ok": False}
            return {
                "ok": True,
                "path": str(ctx.store.path),
                "schema_version": ctx.store.schema_version,
                "active_calls": ctx.store.count_active_calls(),
                **(ctx.writer.health() if ctx.writer else {}),
            }

        return {
            "process": process,
            "store": store,
            "sip": lambda: ctx.pool.health() if ctx.pool else {"ok": False},
            "engine": lambda: ctx.engine.health() if ctx.engine else {"ok": False},
            "asr": lambda: ctx.asr.health() if ctx.asr else {"ok": False},
            "front": lambda: ctx.front.health() if ctx.front else {"ok": True, "enabled": False},
            "end_of_turn": lambda: ctx.end_of_turn.health() if ctx.end_of_turn else {"ok": False},
            "calls": lambda: {"active": len(ctx.sessions)},
            "conversations": lambda: ctx.conversations.health() if ctx.conversations else {"ok": True},
        }

    def readiness(self) -> dict[str, bool]:
        """GET /readyz: may this process take new calls? Every check must hold (a front or load balancer
        routes calls only to ready hosts; /healthz stays 200 while the process lives)."""
        ctx = self.ctx
        asr = ctx.asr.health() if ctx.asr else {}
        checks = {
            "not_draining": not ctx.draining and not ctx.stop_event.is_set(),
            "workers": ctx.pool is not None
            and bool(ctx.pool.workers)
            and all(w.ready.is_set() and w.connected.is_set() for w in ctx.pool.workers),
            "engine": bool(ctx.engine and ctx.engine.health().get("ok")),
            "asr": bool(asr.get("ok")) and (asr.get("backend") == "none" or bool(asr.get("warm"))),
            "store": bool(ctx.store and ctx.store.writable()),
        }
        for name, check in ctx.ready_checks.items():
            checks[name] = bool(check())
        return checks

    def add_gauges(self, clock: Clock) -> None:
        """Metrics read from the components when scraped (their state is theirs, not copied)."""
        ctx = self.ctx
        m = ctx.metrics
        m.gauge("sipbridge_calls_active", "Calls in progress.", lambda: len(ctx.sessions))
        # Campaign time, like the attempts' started_at (`dial --now` runs on its own clock).
        add_caller_id_gauges(m, lambda: ctx.store, ctx.config.dialer, lambda: ts(clock.now()))
        m.gauge(
            "sipbridge_dial_in_flight",
            "Outbound calls placed and not yet recorded (ringing or talking).",
            lambda: len(ctx.dialer.on_answer_route) if ctx.dialer else 0,
        )
        m.gauge(
            "sipbridge_workers_ready",
            "SIP media workers connected and ready.",
            lambda: sum(w.ready.is_set() for w in ctx.pool.workers) if ctx.pool else 0,
        )
        m.gauge(
            "sipbridge_worker_restarts_total",
            "SIP media workers restarted after dying.",
            lambda: sum(w.restarts for w in ctx.pool.workers) if ctx.pool else 0,
            kind="counter",
        )
        m.gauge(
            "sipbridge_trunk_registered",
            "1 while the trunk registration is in force (also 1 when registration is off).",
            lambda: self._trunk_registered(),
        )
        m.gauge(
            "sipbridge_asr_transcriptions_total",
            "ASR runs asked for (caller turns, early runs, AMD greetings, voice prefixes).",
            lambda: ctx.asr.turns if ctx.asr else 0,
            kind="counter",
        )
        writer = ctx.writer
        assert writer is not None
        m.gauge(
            "sipbridge_store_write_errors_total",
            "Store writes that failed (each logged with its call; /healthz store.last_error).",
            lambda: writer.errors,
            kind="counter",
        )
        m.gauge(
            "sipbridge_store_writes_queued",
            "Store writes queued for the writer thread.",
            lambda: writer.queued,
        )
        m.gauge(
            "sipbridge_event_loop_lag_max_seconds",
            "The largest event-loop lag seen since ready (sipbridge_event_loop_lag_seconds).",
            lambda: ctx.loop_lag.max_s if ctx.loop_lag else 0.0,
        )
        m.gauge(
            "sipbridge_asr_redecoded_total",
            "ASR runs that fell back to a higher temperature (asr.temperature_fallback).",
            lambda: ctx.asr.redecoded if ctx.asr else 0,
            kind="counter",
        )

    def add_front_gauges(self, front: SipFront) -> None:
        """The front's own counters (Kamailio's, summed over its restarts) and its view of the workers."""
        m = self.ctx.metrics
        m.gauge("sipbridge_front_up", "1 while the SIP front (Kamailio) runs.", lambda: front.running)
        m.gauge(
            "sipbridge_front_restarts_total",
            "SIP front restarts after dying.",
            lambda: front.restarts,
            kind="counter",
        )
        m.gauge(
            "sipbridge_front_destinations_active",
            "Workers (or hosts) the front sends new calls to: answering its OPTIONS probes.",
            lambda: sum(d.state == "active" for d in front.view),
        )
        for key, text in (
            ("busy", "INVITEs the front answered 503 (every call slot taken, or no worker up)."),
            ("rejected", "Requests the front refused: source outside sip.allowed_sources."),
            ("limited", "Requests the front dropped: over sip.front.rate_limit_per_s from one source."),
            ("failover", "INVITEs the front moved to another worker after one refused or did not answer."),
        ):
            m.gauge(f"sipbridge_front_{key}_total", text, front.counter(key), kind="counter")

    def _trunk_registered(self) -> float:
        pool = self.ctx.pool
        if pool is None:
            return 0
        registration = pool.health().get("registration")
        return 1 if registration is None or registration.get("registered") else 0
