"""The parts of one call, each owning its own state; sipbridge/session.py composes them.

- `context.CallContext`: who the call is, where its frames go, the store and metrics, and its life (tasks,
  failure, hang-up); every part holds it.
- `recording.TurnRecorder`: each turn's WAV next to the call's recording; recordings stop on the first error.
- `speaker.Speaker`: the bot's utterances: queued, generated through the engine session, streamed to the
  worker, held while AMD listens, cut by barge-in, finished at PlaybackDone.
- `agent.AgentDriver`: the agent's call state: asking it (with a fallback line), applying its actions.
- `turns.TurnTaker`: the caller's turns: early ASR at pauses, end-of-turn judgement, backchannels, the
  silence timer, and the order turns are answered in.
- `outbound.OutboundLeg`: a dialed call's AMD verdict, disclosure, voicemail message and opt-out.
"""
