"""The studies by name: ``STUDIES[name]`` is a module with ``Settings`` and ``run(settings) -> dict[str, DataFrame]``.

Each study module exposes

* ``Settings``: a frozen dataclass of everything the study needs (plain values: str, int, float, bool,
  tuples), validated in ``__post_init__`` (bad values raise :class:`genscope.errors.UserError`);
* ``run(settings: Settings) -> dict[str, pandas.DataFrame]``: pure - no printing, plotting, argument
  parsing or subprocesses.

Every module is imported here, eagerly: a study that fails to import is an error with its traceback, never a
silently missing study. To add a study, add one line to :data:`STUDIES`; its key is the ``study`` name its
runs are stored under.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pandas as pd

from genscope.errors import choice_error
from genscope.studies import (
    breakdown,
    dit_temporal,
    flops,
    image_scaling,
    memory_model,
    optimization,
    prefill_decode,
    roofline,
    seqlen,
    taxonomy,
    temporal,
    trace_analysis,
    training,
    training_model,
)

STUDIES: dict[str, ModuleType] = {
    "breakdown": breakdown,
    "flops": flops,
    "seqlen": seqlen,
    "memory-model": memory_model,
    "taxonomy": taxonomy,
    "roofline": roofline,
    "image-scaling": image_scaling,
    "prefill-decode": prefill_decode,
    "temporal": temporal,
    "dit-temporal": dit_temporal,
    "optimization": optimization,
    "analyze": trace_analysis,
    "training": training,
    "training-model": training_model,
}


def get(name: str) -> ModuleType:
    if name not in STUDIES:
        raise choice_error("study", name, sorted(STUDIES))
    return STUDIES[name]


def make_settings(name: str, settings: Mapping[str, Any]):
    """``STUDIES[name].Settings(**settings)``; lists become tuples (settings are frozen); unknown keys and bad
    values are a UserError."""
    from dataclasses import fields

    from genscope.errors import UserError

    cls = get(name).Settings
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"unknown setting(s) for study {name!r}: {', '.join(unknown)}; accepted: "
                        f"{', '.join(sorted(known))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


def record_fields(name: str, settings) -> tuple[str, str, str]:
    """(preset, device, dtype) a run of study ``name`` with ``settings`` is stored under: the settings' own
    fields (``record_preset`` where a study stores under another preset name), else ``-`` / ``meta`` / the
    study's ``COUNT_DTYPE`` or float32."""
    preset = getattr(settings, "record_preset", None) or getattr(settings, "preset", "-")
    dtype = getattr(settings, "dtype", None) or getattr(get(name), "COUNT_DTYPE", "float32")
    return str(preset), str(getattr(settings, "device", "meta")), str(dtype)


def needs_stored_inputs(name: str) -> bool:
    """Whether study ``name`` reuses earlier runs (``stored_inputs(settings, store)``: e.g. FLOP counts)."""
    return hasattr(get(name), "stored_inputs")


def stored_inputs(name: str, settings: Mapping[str, Any], store) -> dict[str, Any]:
    """The keyword inputs study ``name`` takes from earlier runs in ``store`` (read on the driver: the study
    itself never opens the store); {} for studies that take none."""
    module = get(name)
    if store is None or not hasattr(module, "stored_inputs"):
        return {}
    return module.stored_inputs(make_settings(name, settings), store)


def run_study(name: str, settings: Mapping[str, Any], inputs: Mapping[str, Any] | None = None
              ) -> dict[str, pd.DataFrame]:
    """Run study ``name`` with ``settings`` (a dict of its ``Settings`` fields) and ``inputs`` (what
    :func:`stored_inputs` found); its tables."""
    return get(name).run(make_settings(name, settings), **dict(inputs or {}))
