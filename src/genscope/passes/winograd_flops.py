"""FLOPs a model's Winograd layers actually execute, per layer and input shape (FLOPs = 2 x MACs).

torch's flop counter sees a Winograd convolution as its GEMMs (``aten::mm`` / ``bmm``) and counts them, but
not which convolution they replace; this table puts the two side by side from the decisions the layers made
(:attr:`genscope.passes.winograd.WinogradConv2d.variant_for`) and the MAC formulas of
:func:`genscope.passes.kernels.winograd_math.transform_macs` (input transform, a^2 products, output
transform; the padded edge tiles included, as executed). Rows for shapes that run direct convolution carry
the direct MACs in both columns.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

from genscope.passes.kernels.winograd_math import transform_macs

COLUMNS = ["path", "shape", "dtype", "variant", "direct_macs", "executed_macs", "direct_flops", "executed_flops",
           "saving"]


def executed_flops(model: nn.Module) -> pd.DataFrame:
    """One row per (Winograd layer, input shape seen): direct vs executed MACs and FLOPs."""
    from genscope.passes.winograd import DIRECT, WinogradConv2d

    rows = []
    for path, module in model.named_modules():
        if not isinstance(module, WinogradConv2d):
            continue
        for (shape, dtype, _), v in module.variant_for.items():
            n, c, h, w = shape
            ph, pw = module.padding
            out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
            k = module.out_channels
            direct = n * out_h * out_w * 9 * c * k
            if v == DIRECT:
                executed = direct
            else:
                tiles = n * (-(-out_h // v.m)) * (-(-out_w // v.m))
                macs = transform_macs(v.m, c, k, tiles)
                executed = macs["input_transform"] + macs["product"] + macs["output_transform"]
            rows.append({"path": path, "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."),
                         "variant": v.name, "direct_macs": direct, "executed_macs": executed,
                         "direct_flops": 2 * direct, "executed_flops": 2 * executed,
                         "saving": direct / executed if executed else float("nan")})
    return pd.DataFrame(rows, columns=COLUMNS)


def flops_saved(model: nn.Module) -> int:
    """Direct-convolution FLOPs minus executed FLOPs over every Winograd layer and shape (negative where the
    transforms cost more than the products save: few channels)."""
    table = executed_flops(model)
    return int((table["direct_flops"] - table["executed_flops"]).sum()) if len(table) else 0
