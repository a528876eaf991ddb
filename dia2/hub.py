"""Resolve a model reference (local folder or Hugging Face repo id) to a local directory.

Everything that needs checkpoint files (Dia2 weights, tokenizer, Mimi codec) goes through
:func:`resolve_model_dir`, so that offline use, cache location and error messages behave the same
everywhere. Hugging Face's own environment variables are honoured (``HF_HOME``, ``HF_HUB_CACHE``,
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, ``HF_TOKEN``); they are read at call time
rather than at import time so a process (or a test) can change them after ``huggingface_hub`` was imported.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    validate_repo_id,
)

logger = logging.getLogger(__name__)

__all__ = ["Dia2AssetError", "is_offline", "resolve_model_dir"]

_TRUE_VALUES = {"1", "on", "yes", "true"}

# Class names (anywhere in an exception's MRO) that mean "could not talk to the server at all", across
# the HTTP stacks huggingface_hub has used (requests < 1.0, httpx 1.x, httpx2 2.x). Matching by name keeps
# this module free of imports of whichever HTTP client happens to be installed.
_NETWORK_ERROR_NAMES = {
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "NetworkError",
    "TimeoutException",
    "Timeout",
    "ReadTimeout",
    "PoolTimeout",
    "ProxyError",
    "RemoteProtocolError",
    "TransportError",
}


class Dia2AssetError(Exception):
    """A model/tokenizer/codec reference could not be turned into local files.

    The message always says what was asked for and what to do about it.
    """


def is_offline() -> bool:
    """True when Hugging Face offline mode is on (checked now, not at import time)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE_VALUES:
            return True
    return bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


def _cache_dir() -> Path:
    """The hub cache directory as the environment says now (same precedence as huggingface_hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE).expanduser()


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def _looks_like_path(ref: str) -> bool:
    """A string that can only be meant as a filesystem path (never a valid repo id)."""
    return (
        os.path.isabs(ref)
        or ref.startswith((".", "~"))
        or ref.endswith(("/", os.sep))
        or "\\" in ref
        or ref.count("/") > 1
    )


def _iter_files(folder: Path) -> Iterator[str]:
    """Relative POSIX paths of all files below ``folder`` (symlinks followed, as the HF cache uses them)."""
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            yield (Path(root) / name).relative_to(folder).as_posix()


def _unmatched_patterns(folder: Path, patterns: Sequence[str]) -> list[str]:
    """Patterns that match no file in ``folder``; uses fnmatch like huggingface_hub's allow_patterns."""
    files = list(_iter_files(folder))
    missing = []
    for pattern in patterns:
        # huggingface_hub treats a trailing "/" as "everything in that folder".
        pat = pattern + "*" if pattern.endswith("/") else pattern
        if not any(fnmatch.fnmatch(f, pat) for f in files):
            missing.append(pattern)
    return missing


def _resolve_local(folder: Path, allow_patterns: Sequence[str] | None) -> Path:
    if not folder.exists():
        raise Dia2AssetError(
            f"Local model directory '{folder}' does not exist. Pass an existing folder that holds the "
            "checkpoint files, or a Hugging Face repo id such as 'nari-labs/Dia2-2B'."
        )
    if not folder.is_dir():
        raise Dia2AssetError(
            f"'{folder}' is a file, not a directory. Pass the folder that contains it "
            f"('{folder.parent}') instead."
        )
    if allow_patterns:
        missing = _unmatched_patterns(folder, allow_patterns)
        if missing:
            raise Dia2AssetError(
                f"Local model directory '{folder}' lacks required file(s): {', '.join(missing)}. "
                "Check that it is a complete checkpoint folder."
            )
    return folder


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    return any(cls.__name__ in _NETWORK_ERROR_NAMES for cls in type(exc).__mro__)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _translate_hub_error(
    exc: Exception, repo_id: str, revision: str | None, offline: bool, endpoint: str, cache: Path
) -> Dia2AssetError:
    """Turn a huggingface_hub exception into one actionable message."""
    rev = revision or "main"
    local_hint = f" (no local directory named '{repo_id}' exists either)"
    chain = list(_exception_chain(exc))

    if offline and type(exc).__name__ == "IncompleteSnapshotError":
        return Dia2AssetError(
            f"The cached snapshot of '{repo_id}' (revision '{rev}') in '{cache}' is incomplete and offline "
            f"mode is on (HF_HUB_OFFLINE=1): {exc} Fetch it once with network access or pass a local "
            "directory."
        )
    if offline:
        return Dia2AssetError(
            f"'{repo_id}' (revision '{rev}') is not in the Hugging Face cache at '{cache}' and offline mode "
            f"is on (HF_HUB_OFFLINE=1){local_hint}. Download it once with network access "
            "(unset HF_HUB_OFFLINE), point HF_HOME/HF_HUB_CACHE at a cache that has it, or pass a local "
            "checkpoint directory."
        )
    # Order matters: GatedRepoError is a RepositoryNotFoundError subclass.
    for err in chain:
        if isinstance(err, GatedRepoError):
            return Dia2AssetError(
                f"'{repo_id}' is a gated repository on {endpoint}: accept its terms on the model page and "
                "log in (`hf auth login` or HF_TOKEN) with an account that has access."
            )
    for err in chain:
        if isinstance(err, RepositoryNotFoundError):
            return Dia2AssetError(
                f"Repository '{repo_id}' was not found on {endpoint}{local_hint}. Check the spelling; if it "
                "is private or gated, log in (`hf auth login` or HF_TOKEN) with an account that has access."
            )
        if isinstance(err, RevisionNotFoundError):
            return Dia2AssetError(
                f"Revision '{rev}' does not exist in repository '{repo_id}' on {endpoint}. "
                "Pass an existing branch, tag or commit hash."
            )
    for err in chain:
        if isinstance(err, OfflineModeIsEnabled):
            # huggingface_hub was imported with offline mode on, though the environment no longer says so.
            return Dia2AssetError(
                f"'{repo_id}' (revision '{rev}') is not in the Hugging Face cache at '{cache}' and "
                f"huggingface_hub is in offline mode{local_hint}. Download it with network access or pass a "
                "local checkpoint directory."
            )
    for err in chain:
        if _is_network_error(err):
            return Dia2AssetError(
                f"The Hugging Face Hub at {endpoint} is unreachable ({type(err).__name__}: {err}) and "
                f"'{repo_id}' (revision '{rev}') is not in the cache at '{cache}'{local_hint}. Check the "
                "network/proxy (HF_ENDPOINT), or work offline: set HF_HUB_OFFLINE=1 with a populated cache, "
                "or pass a local checkpoint directory."
            )
    for err in chain:
        status = _http_status(err)
        if status is not None:
            if status in (401, 403):
                return Dia2AssetError(
                    f"Access to '{repo_id}' on {endpoint} was refused (HTTP {status}). Log in "
                    "(`hf auth login` or HF_TOKEN) with an account that has access."
                )
            return Dia2AssetError(
                f"The Hugging Face Hub at {endpoint} answered HTTP {status} for '{repo_id}' and it is not "
                f"in the cache at '{cache}'. Retry later, or set HF_HUB_OFFLINE=1 with a populated cache, "
                "or pass a local checkpoint directory."
            )
    if isinstance(exc, LocalEntryNotFoundError):
        return Dia2AssetError(
            f"'{repo_id}' (revision '{rev}') could not be fetched from {endpoint} and is not in the cache at "
            f"'{cache}': {exc}"
        )
    return Dia2AssetError(f"Could not resolve '{repo_id}' (revision '{rev}') from {endpoint}: {exc}")


def resolve_model_dir(
    ref: str | os.PathLike[str],
    *,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Return a local directory holding the files of ``ref``.

    ``ref`` is either an existing local directory (returned as given, after checking it holds a file for
    every entry of ``allow_patterns``) or a Hugging Face repo id (``"org/name"``), which is fetched into
    (or found in) the Hugging Face cache with ``huggingface_hub.snapshot_download``. ``allow_patterns``
    are fnmatch globs relative to the repo root, e.g. ``["config.json", "*.safetensors"]``; only those files
    are downloaded, and each must match at least one file. ``revision`` (branch, tag or commit) applies to
    repo ids only.

    Raises :class:`Dia2AssetError` with an actionable message on every failure.
    """
    patterns = list(allow_patterns) if allow_patterns else None

    if isinstance(ref, os.PathLike):
        return _resolve_local(Path(ref).expanduser(), patterns)
    if not isinstance(ref, str) or not ref.strip():
        raise Dia2AssetError(f"Invalid model reference {ref!r}: expected a local directory or a repo id.")
    path = Path(ref).expanduser()
    if path.exists() or _looks_like_path(ref):
        return _resolve_local(path, patterns)

    try:
        validate_repo_id(ref)
    except HFValidationError as exc:
        raise Dia2AssetError(
            f"Invalid model reference '{ref}': it is neither an existing local directory nor a valid Hugging "
            f"Face repo id ('name' or 'org/name'; {exc})."
        ) from exc

    offline = is_offline()
    cache = _cache_dir()
    endpoint = _endpoint()
    if offline:
        logger.info(
            "Looking up %s (revision %s) in the Hugging Face cache %s (offline mode)",
            ref,
            revision or "main",
            cache,
        )
    else:
        logger.info(
            "Fetching %s (revision %s, files %s) from %s into the Hugging Face cache %s",
            ref,
            revision or "main",
            ", ".join(patterns) if patterns else "all",
            endpoint,
            cache,
        )

    # huggingface_hub draws tqdm bars on stderr; keep them for people at a terminal and drop them when
    # stderr is a log file or a pipe, where each refresh becomes a garbage line.
    hide_bars = not sys.stderr.isatty() and not are_progress_bars_disabled()
    if hide_bars:
        disable_progress_bars()
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id=ref,
            revision=revision,
            allow_patterns=patterns,
            cache_dir=str(cache),
            local_files_only=offline,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except Exception as exc:  # every huggingface_hub failure is reported in our terms
        raise _translate_hub_error(exc, ref, revision, offline, endpoint, cache) from exc
    finally:
        if hide_bars:
            enable_progress_bars()

    folder = Path(snapshot)
    if patterns:
        # An offline lookup returns whatever snapshot folder is cached, even a partial one.
        missing = _unmatched_patterns(folder, patterns)
        if missing:
            raise Dia2AssetError(
                f"The cached snapshot of '{ref}' at '{folder}' lacks file(s): {', '.join(missing)}"
                + (
                    ". Offline mode is on: fetch them once with network access (unset HF_HUB_OFFLINE)."
                    if offline
                    else ". The repository does not contain them: check the repo id and revision."
                )
            )
    logger.info("Using %s from %s", ref, folder)
    return folder
