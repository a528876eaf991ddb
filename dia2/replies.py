"""A call's reply from start to end (engine thread): its script of words, fed as the text streams in, the
rows that speak it, a barge-in's cut and what of the reply stays in the call's history.

:class:`ReplyControl` owns each call's ``turn`` (:class:`dia2.call_state.ReplyState`) from :meth:`speak` to
:meth:`finish`; the steps that advance it are the stepper's (``dia2/stepper.py``), the frames it leaves
are the history's (``dia2/history.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .call_state import CallState, ReplyState, Sink, SpeakOptions
from .engine_state import EngineState
from .mimi_rows import MIMI_PRIME_FRAMES
from .script import ScriptStream


@dataclass
class ReplyControl:
    state: EngineState

    def speak(
        self,
        call: CallState,
        text: str | None,
        sink: Sink,
        options: SpeakOptions | None = None,
        *,
        more_text: bool = False,
    ) -> None:
        """Start a reply. With ``more_text`` the text is incomplete: :meth:`push_text` adds to it and
        ``push_text(..., final=True)`` closes it; until then an empty word queue waits, never ends."""
        st = self.state
        if call.turn is not None:
            raise RuntimeError("a reply is already in progress on this call")
        opts = options or SpeakOptions()
        st.history.ensure_room(call, st.options.reply_reserve_steps)
        script = ScriptStream(st.encoder, st.ids, st.frame_rate)
        state = call.machine
        # Only the reply's own words from here on (ingest already cleared these; a reply never re-enters
        # entries of a voice prefix or of a caller turn).
        state.entries.clear()
        state.pending_tokens.clear()
        state.lookahead_tokens.clear()
        state.awaiting_text = more_text
        # A reply starts like upstream's generation: fresh padding counters, no end of script yet.
        state.padding_budget = state.forced_padding = st.options.initial_padding
        state.end_step = None
        start = call.frames
        call.turn = ReplyState(
            start_frame=start,
            steps=0,
            options=opts,
            sink=sink,
            script=script,
            mimi_reset_frame=max(start - MIMI_PRIME_FRAMES, 0),
            prime_at_lead_end=st.lane_on,
        )
        self._feed_script(call, text or "", final=not more_text)
        st.history.load_row(call, active=True)

    def push_text(self, call: CallState, delta: str, *, final: bool = False) -> None:
        turn = call.turn
        if turn is None or turn.script is None:
            return  # the reply ended or was cancelled: late text is dropped
        self._feed_script(call, delta, final=final)

    def cancel(self, call: CallState) -> None:
        """Barge-in: no further chunk for this reply; its rows stop advancing from the next step.
        A chunk whose frame the last step produced (audio still decoding) is delivered first."""
        self.state.mimi_rows.flush()
        if call.turn is not None:
            call.turn.cancelled = True
            self.finish(call)

    def keep_played(
        self, call: CallState, start_frame: int, frames: int, first_codes: torch.Tensor | None = None
    ) -> int:
        """Barge-in: of the reply that began at history frame ``start_frame`` the caller heard only the
        first ``frames`` frames; the rest leaves the call's history and cache, so the next reply is
        conditioned on what was heard, not on audio nobody heard. ``first_codes``: the codes of the
        reply's first chunk, checked against the history (a re-warm may have moved other frames there).
        Returns the frames dropped: 0 when there is nothing past ``frames``, that reply is no longer in
        the history as it was (the context policy re-warmed or dropped it), or another reply is in
        progress (history is not rewritten under a running reply)."""
        if call.turn is not None:
            if call.turn.start_frame != start_frame:
                return 0
            self.cancel(call)  # still speaking: cut here first (its complete frames become the segment)
        end = next((b for kind, a, b in call.segments if kind == "reply" and a == start_frame), None)
        keep = start_frame + max(frames, 0)
        if end is None or keep >= end:
            return 0
        if first_codes is not None and not torch.equal(call.codes[:, start_frame].cpu(), first_codes.cpu()):
            return 0
        self.state.history.drop_frames(call, keep, end)
        return end - keep

    def finish(self, call: CallState) -> None:
        """End the reply: history keeps its complete frames, the cache is rewound to them."""
        turn = call.turn
        if turn is None:
            return
        self.state.mimi_rows.flush()  # the last chunks before the end marker
        call.turn = None
        end = call.frames  # frames emitted so far are exactly the complete ones
        del call.text[end + 1 :]
        if end > turn.start_frame:
            call.segments.append(("reply", turn.start_frame, end))
        self.state.history.shrink(call, end)  # the cache is rewound to the complete frames
        call.machine.entries.clear()
        call.machine.pending_tokens.clear()
        call.machine.lookahead_tokens.clear()
        call.machine.awaiting_text = False
        self.state.buf.active[call.slot] = False
        turn.script = None
        turn.sink(None)

    def _feed_script(self, call: CallState, delta: str, *, final: bool) -> None:
        turn = call.turn
        assert turn is not None and turn.script is not None
        call.machine.entries.extend(turn.script.feed(delta, final=final))
        if final:
            call.machine.awaiting_text = False
