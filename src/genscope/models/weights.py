"""Local weights a user already has: diffusers-layout folders, safetensors only.

Nothing is downloaded and nothing is unpickled: a folder holding pickle-format files (``.bin``, ``.pt``,
``.pth``, ``.ckpt``, ``.pkl``, ``.pickle``) is refused as a whole, and loading goes through the libraries'
``from_pretrained`` with ``use_safetensors=True`` and ``local_files_only=True``.
"""

from __future__ import annotations

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


def load_pretrained(class_name: str, folder: Path, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Load one component from a local folder with its library's loader (safetensors only, offline)."""
    import importlib

    _, module_name, _ = ALLOWED_CLASSES[class_name]
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = {"use_safetensors": True, "local_files_only": True}
    kwargs["torch_dtype" if module_name == "diffusers" else "dtype"] = dtype
    try:
        with quiet_libraries():
            model = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {class_name} weights from {str(folder)!r}: {first}") from None
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model
