"""Optimization passes (Chen et al. 2023, "Speed Is All You Need", plus CPU-specific ones).

``apply(model, PassConfig(passes=(...)), filter_fn=None) -> SwapLog`` (a ``list[Swap]``); see
:mod:`genscope.passes.base`. Importing this package imports no optional backend (Triton) and never
initializes CUDA.
"""

from genscope.passes.base import PASS_NAMES, PassConfig, Swap, SwapLog, apply
from genscope.passes.oracle import OracleResult, PassRefused

__all__ = ["PASS_NAMES", "OracleResult", "PassConfig", "PassRefused", "Swap", "SwapLog", "apply"]
