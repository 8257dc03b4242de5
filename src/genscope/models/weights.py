"""Local weights a user already has: diffusers-layout folders, safetensors only.

Nothing is downloaded and nothing is unpickled: a folder holding pickle-format files (``.bin``, ``.pt``,
``.pth``, ``.ckpt``, ``.pkl``, ``.pickle``) is refused as a whole, and loading goes through the libraries'
``from_pretrained`` with ``use_safetensors=True`` and ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from genscope.errors import UserError
from genscope.models.spec import ALLOWED_CLASSES, quiet_libraries

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_weights_dir(path: str | Path, subfolders: list[str]) -> Path:
    """The folder exists, holds no pickle files, and each subfolder has a config and safetensors weights."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"weights folder {str(root)!r} does not exist or is not a folder")
    pickles = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"weights folder {str(root)!r} holds pickle-format files ({', '.join(pickles[:3])}"
                        f"{'...' if len(pickles) > 3 else ''}); refused: genscope loads safetensors only")
    missing = []
    for sub in subfolders:
        folder = root / sub
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            missing.append(sub)
    if missing == ["."]:  # a flat folder (subfolders ("."): e.g. a transformers-layout Llama folder)
        raise UserError(f"weights folder {str(root)!r} is incomplete: it needs config.json and *.safetensors")
    if missing:
        raise UserError(f"weights folder {str(root)!r} is incomplete: {', '.join(missing)} need config.json and "
                        f"*.safetensors (expected subfolders: {', '.join(subfolders)})")
    return root


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Neither library draws its loading progress bar on stderr (their own switches, restored after)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def load_pretrained(class_name: str, folder: Path, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Load one component from a local folder with its library's loader (safetensors only, offline)."""
    import importlib

    _, module_name, _ = ALLOWED_CLASSES[class_name]
    cls = getattr(importlib.import_module(module_name), class_name)
    # output_loading_info: both libraries report the keys they could not match (and would otherwise
    # initialize the missing tensors themselves - zeros or random - with only a log line)
    kwargs = {"use_safetensors": True, "local_files_only": True, "output_loading_info": True}
    kwargs["torch_dtype" if module_name == "diffusers" else "dtype"] = dtype
    try:
        with quiet_libraries(), no_progress_bars():
            model, info = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {class_name} weights from {str(folder)!r}: {first}") from None
    check_every_key_matched(class_name, folder, info)
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def check_every_key_matched(class_name: str, folder: Path, info: dict) -> None:
    """Refuse weights that do not match the model key for key: a tensor the model has and the files lack
    (it would be left initialized by the library, not loaded), one the files have and the model lacks, or one
    whose shape differs."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in (info.get(kind) or ()))
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} ({shown})")
    if problems:
        raise UserError(f"{class_name} weights in {str(folder)!r} do not match the model: {'; '.join(problems)}; "
                        "refused (every tensor must be present with its shape)")
