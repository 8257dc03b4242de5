"""Study ``memory-model`` (the paper's Section V-A): the similarity-matrix memory model of a diffusion UNet,
checked call by call against traced attention calls, its d^2n (v2) vs d^n (v1) level lengths and its O(L^4)
growth. The model itself is :mod:`genscope.studies.attention_memory`; this module is its study entry point.

Tables: ``check`` (per image size and UNet: model vs trace, ``exact``), ``calls`` (each predicted call next to
its traced twin), ``levels`` (traced per-level sequence length vs the paper's two formulas), ``scaling``
(bytes per UNet forward vs latent side), ``fit`` (the fitted exponent), ``paper`` (the paper's v2 and v1
formulas at the same sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from genscope.errors import UserError
from genscope.studies.attention_memory import (
    MODELED_WORKLOADS,
    UNetAttentionLayout,
    check_against_trace,
    denoiser_geometry,
    level_lengths_vs_paper,
    memory_scaling,
    paper_formula_bytes,
)

STUDY = "memory-model"


def _positive(values: tuple[int, ...], what: str) -> tuple[int, ...]:
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise UserError(f"{what} must be positive integers, got {bad}")
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class Settings:
    """``image_sizes`` empty: the preset's; ``latent_sides`` empty: 6 sides from the UNet's smallest multiple."""

    workload: str
    preset: str = "paper"
    image_sizes: tuple[int, ...] = ()
    latent_sides: tuple[int, ...] = ()
    steps: int | None = None
    device: str = "meta"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        from genscope.workloads import registry

        if self.workload not in MODELED_WORKLOADS:
            raise UserError(f"the attention-memory model covers {', '.join(MODELED_WORKLOADS)}; got "
                            f"{self.workload!r}")
        registry.get(self.workload)
        object.__setattr__(self, "image_sizes", _positive(self.image_sizes, "image sizes"))
        object.__setattr__(self, "latent_sides", _positive(self.latent_sides, "latent sides"))


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    s = settings
    summary, calls, traces = check_against_trace(s.workload, list(s.image_sizes) or [None], preset=s.preset,
                                                 device=s.device, dtype=s.dtype, steps=s.steps)
    # d^n vs d^2n: the traced per-level sequence lengths of every UNet at the largest size
    trace = max(traces, key=lambda t: t.request.image_size)
    geometries = denoiser_geometry(s.workload, trace.config, trace.request)
    levels = pd.concat([level_lengths_vs_paper(trace.calls, g) for g in geometries], ignore_index=True)
    first = geometries[0]
    layout = UNetAttentionLayout.from_spec(first.spec)
    multiple = layout.d ** (layout.levels - 1)
    sides = list(s.latent_sides) or [multiple * 2**k for k in range(6)]
    scaling, fit = memory_scaling(first.spec, sides, first.text_len, first.batch, s.dtype)
    depth = layout.levels - 1  # the paper's unetdepth: attention levels 0..depth-1, the mid block at depth
    paper = pd.DataFrame([{"latent_side": side, "paper_v2_bytes": paper_formula_bytes(side, side, first.text_len, depth),
                           "paper_v1_bytes": paper_formula_bytes(side, side, first.text_len, depth, variant="v1")}
                          for side in sides])
    fit_df = pd.DataFrame([{"component": first.component, **fit}])
    return {"check": summary, "calls": calls, "levels": levels, "scaling": scaling, "fit": fit_df, "paper": paper}
