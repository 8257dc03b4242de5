"""The suite: the paper's eight workloads by name.

Each entry is ``name -> "module:Class"``; modules are imported on first use so that ``genscope models``
and ``--help`` stay fast. A workload whose module is not in this checkout yet is simply not listed.
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

_CACHE: dict[str, Workload] = {}


def _load(name: str) -> Workload | None:
    if name not in _CACHE:
        module_name, class_name = SUITE[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        _CACHE[name] = getattr(module, class_name)()
    return _CACHE[name]


def available() -> list[str]:
    return [name for name in SUITE if _load(name) is not None]


def get(name: str) -> Workload:
    workload = _load(name) if name in SUITE else None
    if workload is None:
        raise choice_error("model", name, available())
    return workload
