"""What every part of a SIP worker shares: its settings, its link to the supervisor, the two inner queues, the
call table and the run state the commands change.

The parts (sipbridge/sip/worker.py wires them): `SipEndpoint` (the pjsua2 library and its transports),
`CallControl` (account and call callbacks, SIP-side call ops, the watchdog: main thread), `MediaPorts` (the
call's media ports and RTP source filter: main thread), `MediaThread` (the inbox: VAD turns, recording, call
ends) with its `WorkerAmd` (answering-machine detection), and `WorkerIpc` (supervisor frames in, commands
run).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

from sipbridge import frames as f
from sipbridge.sip.call import CallSlot
from sipbridge.sip.ipc import SyncChannel
from sipbridge.sip.messages import Command, InboxItem
from sipbridge.sip.settings import WorkerSettings


@dataclass
class WorkerContext:
    settings: WorkerSettings
    channel: SyncChannel
    inbox: queue.SimpleQueue[InboxItem] = field(default_factory=queue.SimpleQueue)
    commands: queue.SimpleQueue[Command] = field(default_factory=queue.SimpleQueue)
    calls: dict[str, CallSlot] = field(default_factory=dict)  # main thread writes; readers look up
    stopping: bool = False
    draining: bool = False  # Drain from the supervisor: new INVITEs get 503, active calls go on
    shutdown_reason: str = "worker shutting down"
    frame_bytes: int = field(init=False)  # one 20 ms frame of 16-bit PCM at the call's clock rate

    def __post_init__(self) -> None:
        self.frame_bytes = self.settings.clock_rate * 20 // 1000 * 2

    def emit(self, frame: f.Frame) -> None:
        self.channel.send(frame)
