"""Prompts to token ids, offline.

With random weights the token values do not matter, only the sequence length does; genscope uses a
deterministic word-hash tokenizer so that nothing has to be fetched. With ``--weights DIR`` the tokenizer
files shipped in the folder (``tokenizer/``, ``tokenizer_2/``: vocab/merges or sentencepiece model - data,
not code) are used instead, so real weights give real pictures.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from genscope.errors import UserError

MAX_PROMPT_CHARS = 10_000


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str):
        raise UserError("prompt must be text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    if any(ord(ch) < 32 and ch not in "\t\n" for ch in prompt):
        raise UserError("prompt contains control characters")
    from genscope.validate import check_text

    return check_text("prompt", prompt)  # undecodable bytes (surrogate escapes) are refused


@dataclass(frozen=True)
class HashTokenizer:
    """Word-hash tokenizer: [bos] + one id per word/punctuation + [eos], padded to ``max_len``."""

    vocab_size: int
    max_len: int
    add_bos: bool = True
    pad_with_eos: bool = True

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 1

    @property
    def pad_id(self) -> int:
        return self.eos_id if self.pad_with_eos else 0

    def words(self, prompt: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", check_prompt(prompt).lower())

    def ids(self, prompt: str, pad: bool = True) -> list[int]:
        body = [3 + zlib.crc32(w.encode()) % (self.vocab_size - 5) for w in self.words(prompt)]
        ids = ([self.bos_id] if self.add_bos else []) + body + [self.eos_id]
        if len(ids) > self.max_len:
            raise UserError(f"prompt is {len(ids)} tokens (with start/end tokens) but the text encoder takes at "
                            f"most {self.max_len}; shorten the prompt")
        if pad:
            ids = ids + [self.pad_id] * (self.max_len - len(ids))
        return ids

    def __call__(self, prompts: list[str], device: torch.device | str = "cpu", pad: bool = True) -> torch.Tensor:
        rows = [self.ids(p, pad=pad) for p in prompts]
        width = max(len(r) for r in rows)
        rows = [r + [self.pad_id] * (width - len(r)) for r in rows]
        return torch.tensor(rows, dtype=torch.long, device=device)


class LocalTokenizer:
    """A transformers tokenizer loaded from files in a local weights folder (no hub)."""

    def __init__(self, folder: Path, max_len: int):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load tokenizer from {str(folder)!r}: {str(exc).splitlines()[0]}") from None
        self.max_len = max_len

    def __call__(self, prompts: list[str], device: torch.device | str = "cpu", pad: bool = True) -> torch.Tensor:
        for p in prompts:
            check_prompt(p)
        enc = self.tok(prompts, padding="max_length" if pad else True, max_length=self.max_len,
                       truncation=False, return_tensors="pt")
        if enc.input_ids.shape[1] > self.max_len:
            raise UserError(f"prompt is {enc.input_ids.shape[1]} tokens but the text encoder takes at most "
                            f"{self.max_len}; shorten the prompt")
        return enc.input_ids.to(device)


def make_tokenizer(vocab_size: int, max_len: int, weights_dir: Path | None = None, subfolder: str = "tokenizer",
                   **kwargs) -> HashTokenizer | LocalTokenizer:
    if weights_dir is not None and (weights_dir / subfolder).is_dir():
        return LocalTokenizer(weights_dir / subfolder, max_len)
    return HashTokenizer(vocab_size=vocab_size, max_len=max_len, **kwargs)
