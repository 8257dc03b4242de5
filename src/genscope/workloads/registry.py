"""The suite: the paper's eight workloads by name.

Each entry is ``name -> "module:Class"``; modules are imported on first use so that ``genscope models``
and ``--help`` stay fast. A workload module that fails to import is an error with its traceback (never a
silently missing workload).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from genscope.errors import choice_error

if TYPE_CHECKING:  # importing the workloads' base imports torch: the report needs only the names
    from genscope.workloads.base import Workload

# In the paper's order (Table II / Figure 7).
SUITE: dict[str, str] = {
    "llama": "genscope.workloads.llama:Llama",
    "imagen": "genscope.workloads.imagen:Imagen",
    "stable-diffusion": "genscope.workloads.stable_diffusion:StableDiffusion",
    "muse": "genscope.workloads.muse:Muse",
    "parti": "genscope.workloads.parti:Parti",
    "prod-image": "genscope.workloads.prod_image:ProdImage",
    "make-a-video": "genscope.workloads.make_a_video:MakeAVideo",
    "phenaki": "genscope.workloads.phenaki:Phenaki",
}
# After the paper: diffusion transformers (by name; not part of the default suite that studies iterate).
AFTER_PAPER: dict[str, str] = {
    "flux": "genscope.workloads.flux:Flux",
    "sd3": "genscope.workloads.sd3:SD3",
    "wan": "genscope.workloads.wan:Wan",
    "cogvideox": "genscope.workloads.cogvideox:CogVideoX",
    "hunyuan-video": "genscope.workloads.hunyuan_video:HunyuanVideo",
}

_CACHE: dict[str, Workload] = {}


def _load(name: str) -> Workload:
    if name not in _CACHE:
        module_name, class_name = {**SUITE, **AFTER_PAPER}[name].split(":")
        _CACHE[name] = getattr(importlib.import_module(module_name), class_name)()
    return _CACHE[name]


def available() -> list[str]:
    return list(SUITE)


def get(name: str) -> Workload:
    if name not in SUITE and name not in AFTER_PAPER:
        raise choice_error("model", name, available() + list(AFTER_PAPER))
    return _load(name)
