"""FLOPs, MACs, softmax FLOPs and bytes moved of a whole workload run, per phase, module and operator class.

Built on ``torch.utils.flop_counter``; this module is the entry point and the tables over a count:

* :mod:`genscope.instrument.flop_formulas`: what one op costs - the formulas torch lacks (fused attention,
  registered with ``register_flop_formula``), softmax FLOPs, the bytes-moved model;
* :mod:`genscope.instrument.flop_counter`: :class:`FlopCounter`, torch's ``FlopCounterMode`` filing each op
  under its phase, module path, class and step;
* :mod:`genscope.instrument.flop_steps`: loops counted from a few steps on the meta device (identical steps
  replicated, growing autoregressive steps extrapolated from a fitted and verified line);
* here: the aggregations (:func:`by_module`, :func:`by_class`, :func:`by_op`) and :func:`count_callable`.

FLOPs = 2 x MACs for every op torch counts (matmuls and convolutions); ``macs`` is ``flops // 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import torch

from genscope.instrument.flop_counter import (  # noqa: F401  (re-exported: the public names)
    GROWING_STEPS,
    IDENTICAL_STEPS,
    NO_MODULE,
    NO_PHASE,
    FlopCounter,
)
from genscope.instrument.flop_formulas import (  # noqa: F401  (re-exported)
    ATTENTION_NOTE,
    BYTES_NOTE,
    SOFTMAX_FLOPS_PER_ELEMENT,
    attention_flops,
    attention_softmax_elements,
    op_bytes,
    op_name,
    op_softmax_flops,
    register_attention_formulas,
)
from genscope.instrument.flop_steps import SeriesBroken  # noqa: F401  (re-exported)

SUM_COLUMNS = ["flops", "macs", "softmax_flops", "bytes"]


def module_at_depth(path: str, depth: int) -> str:
    """``denoiser.down_blocks.0.attentions.0`` at depth 3 -> ``denoiser.down_blocks.0``."""
    return ".".join(path.split(".")[:depth])


def by_module(rows: pd.DataFrame, depth: int = 4) -> pd.DataFrame:
    """FLOPs per module subtree at ``depth`` path components (a partition: sums to the total)."""
    df = rows.assign(module=rows["module"].map(lambda p: module_at_depth(p, depth)))
    out = df.groupby("module", as_index=False, sort=False)[SUM_COLUMNS].sum()
    return out.sort_values("flops", ascending=False, kind="stable").reset_index(drop=True)


def by_class(rows: pd.DataFrame, per_phase: bool = False) -> pd.DataFrame:
    keys = ["phase", "op_class"] if per_phase else ["op_class"]
    out = rows.groupby(keys, as_index=False, sort=False)[SUM_COLUMNS].sum()
    return out.sort_values(keys[:-1] + ["flops"], ascending=[True] * (len(keys) - 1) + [False],
                           kind="stable").reset_index(drop=True)


def by_op(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.groupby(["op", "op_class"], as_index=False, sort=False)[SUM_COLUMNS + ["calls"]].sum()
    return out.sort_values("flops", ascending=False, kind="stable").reset_index(drop=True)


def count_callable(fn: Callable[[], Any], components: Any = (), memoize: bool = True) -> FlopCounter:
    """Count ``fn()`` (run under ``inference_mode``); returns the finished counter."""
    with torch.inference_mode(), FlopCounter(components, memoize=memoize) as counter:
        fn()
    return counter


def iter_phases(steps: pd.DataFrame) -> Iterator[str]:
    return iter(dict.fromkeys(steps["phase"]))
