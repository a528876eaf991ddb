"""Text tokenizer of a Dia2 checkpoint (GPT-2 style byte-level BPE with ``[S1]``/``[S2]`` tokens).

Upstream loads the same files through transformers' slow ``GPT2Tokenizer``; the ``tokenizers``
library reads ``tokenizer.json`` directly and gives the same ids for the words Dia2 encodes (one word
at a time, optionally behind a speaker tag), which the parity tests check against upstream's entries.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["Dia2Tokenizer", "Dia2TokenizerError"]

logger = logging.getLogger(__name__)


class Dia2TokenizerError(ValueError):
    """The tokenizer files are missing or unusable."""


def _token_content(value: object) -> str | None:
    # special_tokens_map / tokenizer_config store tokens either as a string or as an AddedToken dict.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@dataclass(frozen=True)
class Dia2Tokenizer:
    tokenizer: Tokenizer
    bos_token_id: int | None  # what the tokenizer declares (0 for Dia2); see `runtime_bos_id`
    source: str

    @classmethod
    def from_dir(cls, folder: str | os.PathLike[str]) -> Dia2Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise Dia2TokenizerError(f"no tokenizer.json in {folder}")
        tok = Tokenizer.from_file(str(path))
        bos: str | None = None
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            meta = folder / name
            if bos is None and meta.is_file():
                try:
                    bos = _token_content(json.loads(meta.read_text(encoding="utf-8")).get("bos_token"))
                except (json.JSONDecodeError, AttributeError):
                    logger.warning("ignoring unreadable %s", meta)
        bos_id = tok.token_to_id(bos) if bos is not None else None
        return cls(tokenizer=tok, bos_token_id=bos_id, source=str(folder))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without any special tokens added (upstream: ``add_special_tokens=False``)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def runtime_bos_id(self) -> int:
        """Upstream computes ``bos_token_id or 1``: Dia2's tokenizer declares 0, so the runtime uses 1."""
        return self.bos_token_id or 1
