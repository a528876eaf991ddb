"""A worker that loses the thread every CallEnded goes through must not go on taking calls it can never end
(soak defect A, docs/RELIABILITY.md): two workers reached directly, a call up on each, then worker 1's media
thread dies. Worker 1 must end itself; its call is recorded failed, worker 0's call goes on and ends
normally, and worker 1's successor takes calls again.

The thread's death is injected: a `sitecustomize` on the workers' path makes `Inbound.on_frame` raise a
`BaseException` (what an `except Exception` in the media loop does not catch) for the call id written into
a trigger file. In the soak the media thread died of an inbox item it could not unpack.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .bridge import Bridge
from .peers import free_udp_port
from .rawsip import Dialog, RawSip, status

SITECUSTOMIZE = """
import os

_TRIGGER = os.environ.get("SIPBRIDGE_TEST_KILL_MEDIA_THREAD")
if _TRIGGER:
    from sipbridge.media import inbound as _inbound

    class _ThreadDeath(BaseException):
        pass

    _on_frame = _inbound.Inbound.on_frame

    def on_frame(self, pcm):
        try:
            with open(_TRIGGER) as f:
                target = f.read().strip()
        except OSError:
            target = ""
        if target and target == self.call_id:
            raise _ThreadDeath("injected: the media thread dies")
        return _on_frame(self, pcm)

    _inbound.Inbound.on_frame = on_frame
"""


def answered_id(bridge: Bridge, caller: RawSip, start: int = 0) -> str:
    """The worker's call id for the call `caller` placed (its `answered` line after the first `start` lines,
    already logged or to come)."""
    pattern = rf"call (\w+) answered: .* from 127\.0\.0\.1:{caller.port}\b"
    for line in bridge.proc.seen[start:]:
        found = re.search(pattern, line)
        if found:
            return found.group(1)
    return bridge.proc.wait_for(pattern).group(1)


def logged_since(bridge: Bridge, start: int, pattern: str, timeout: float = 60) -> None:
    """A line matching `pattern` logged after the first `start` lines (seen already, or to come)."""
    if not any(re.search(pattern, line) for line in bridge.proc.seen[start:]):
        bridge.proc.wait_for(pattern, timeout)


def hang_up(caller: RawSip, dialog: Dialog) -> None:
    dialog.cseq += 10
    caller.send(caller.request("BYE", dialog))
    assert status(caller.final()) == 200


def test_a_worker_whose_media_thread_dies_ends_and_its_calls_are_recorded(tmp_path: Path) -> None:
    trigger = tmp_path / "kill-media-thread"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
        "SIPBRIDGE_TEST_KILL_MEDIA_THREAD": str(trigger),
    }
    config = {"sip": {"max_calls": 8, "front": {"mode": "off"}}, "agent": {"kind": "echo"}}
    bridge = Bridge.start(tmp_path / "bridge", config, env=env)
    callers = [RawSip(port) for port in bridge.sip_ports]
    try:
        assert len(callers) == 2
        dialogs = []
        for caller in callers:
            dialog, answer = caller.call(media_port=free_udp_port())
            assert status(answer) == 200, answer
            dialogs.append(dialog)
        ids = [answered_id(bridge, caller) for caller in callers]
        bridge.logged(rf"call {ids[0]} media up")
        bridge.logged(rf"call {ids[1]} media up")

        trigger.write_text(ids[1])
        bridge.logged(r"worker 1: its media thread died; ending the worker")
        bridge.logged(r"SIP worker 1 \(pid \d+\) died with code 70; 1 call\(s\) lost")
        died_at = len(bridge.proc.seen)
        bridge.logged(rf"call {ids[1]} recorded: failed \(worker 1 died")

        # Worker 0 never noticed: its call ends when its caller hangs up, recorded as such.
        hang_up(callers[0], dialogs[0])
        bridge.logged(rf"call {ids[0]} recorded: completed \(remote")

        # Worker 1's successor binds the same port and takes calls (the trigger names the old call only).
        logged_since(bridge, died_at, r"worker 1 ready pid=")
        dialog, answer = callers[1].call(media_port=free_udp_port())
        assert status(answer) == 200, answer
        new_id = answered_id(bridge, callers[1], died_at)
        bridge.logged(rf"call {new_id} media up")
        hang_up(callers[1], dialog)
        bridge.logged(rf"call {new_id} recorded: completed \(remote")

        rows = {row["id"]: row for row in bridge.calls()}
        assert rows[ids[0]]["outcome"] == "completed"
        assert rows[ids[1]]["outcome"] == "failed"
        assert "worker 1 died" in rows[ids[1]]["reason"]
        assert rows[new_id]["outcome"] == "completed"
        assert not [r for r in rows.values() if r["state"] == "active"]
    finally:
        for caller in callers:
            caller.close()
        bridge.stop()
