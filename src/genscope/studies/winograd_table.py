"""Table 2 of Chen et al. 2023 ("Speed Is All You Need"): Winograd F(m x m, 3x3) tile sizes vs direct 3x3
convolution on one SD UNet layer shape - part of study ``optimization`` (:mod:`genscope.studies.optimization`).

Per tile size: the analytical multiplication saving 9 m^2 / (m+2)^2, tensor multiplier (m+2)^2 / m^2 and weight
multiplier (m+2)^2 / 9 (the paper's Table 2 values), the measured weight multiplier (U's bytes / the weight's),
the measured tensor multiplier (peak new bytes of one Winograd convolution / the input's bytes, next to direct
convolution's), the time relative to direct convolution, and the relative error per dtype and product
precision with the oracle's verdict.
"""

from __future__ import annotations

import statistics

import pandas as pd
import torch

from genscope.errors import UserError
from genscope.instrument.memory import track_peak_memory
from genscope.models.runtime import check_dtype_on_device, parse_device, parse_dtype
from genscope.studies.optimization import check_image_size, preset_config

# Chen et al. 2023, Table 2: tile size -> (flops saving, tensor multiplier, weight multiplier)
PAPER_TABLE2 = {2: (2.25, 4.0, 1.77), 4: (4.0, 2.25, 4.0), 6: (5.06, 1.8, 7.12), 8: (5.76, 1.56, 11.12)}


# ----------------------------------------------------------------------------------------------------
def representative_layer(config, image_size: int) -> tuple[int, int]:
    """(channels, latent size) of the UNet's first-level 3x3 convolutions at ``image_size``."""
    latent = check_image_size(config, image_size)
    return int(config.denoiser["block_out_channels"][0]), latent


def winograd_table(workload: str = "stable-diffusion", preset: str = "small", image_size: int | None = None,
                   device: str = "cpu", repeats: int = 3, dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
                   tiles: tuple[int, ...] = (2, 4, 6, 8)) -> dict[str, pd.DataFrame]:
    """Table 2: ``winograd`` (one row per tile: analytical and measured multipliers, time vs direct) and
    ``winograd_error`` (tile x dtype x product precision x transforms: error, direct's error, oracle)."""
    import torch.nn.functional as F

    from genscope.passes.decisions import measure_interleaved
    from genscope.passes.kernels import cpu as kcpu
    from genscope.passes.kernels import winograd_math as wm
    from genscope.passes.winograd import Variant, winograd_oracle

    config = preset_config(workload, preset)
    image_size = image_size or config.image_size
    channels, latent = representative_layer(config, image_size)
    dev = parse_device(device)
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(2, channels, latent, latent, generator=gen).to(dev)
    w = (torch.randn(channels, channels, 3, 3, generator=gen) / (9 * channels) ** 0.5).to(dev)
    b = torch.zeros(channels, device=dev)
    implemented = [m for m in tiles if m in wm.TILES]
    us = {m: kcpu.winograd_weight(w, m) for m in implemented}
    fns = {"direct": lambda: F.conv2d(x, w, b, padding=1)}
    fns.update({f"F{m}": (lambda m=m: kcpu.winograd_conv2d(x, us[m], b, m)) for m in implemented})
    times = measure_interleaved(fns, repeats=repeats, warmup=1, device=dev)
    med = {k: statistics.median(v) for k, v in times.items()}
    input_bytes = x.numel() * x.element_size()

    def peak_of(fn) -> int:
        with torch.inference_mode(), track_peak_memory(dev) as stats:
            fn()
        return stats.peak_bytes

    direct_peak = peak_of(fns["direct"])
    rows = []
    for m in tiles:
        paper = PAPER_TABLE2.get(m, (float("nan"),) * 3)
        row = {"tile": f"{m}x{m}", "m": m, "flops_saving": wm.flops_saving(m), "paper_flops_saving": paper[0],
               "tensor_multiplier": wm.tensor_multiplier(m), "paper_tensor_multiplier": paper[1],
               "weight_multiplier": wm.weight_multiplier(m), "paper_weight_multiplier": paper[2],
               "implemented": m in implemented}
        if m in implemented:
            peak = peak_of(fns[f"F{m}"])
            row.update({
                "measured_weight_multiplier": us[m].numel() * us[m].element_size() / (w.numel() * w.element_size()),
                "measured_peak_tensor_multiplier": peak / input_bytes,
                "direct_peak_tensor_multiplier": direct_peak / input_bytes,
                "time_ms": med[f"F{m}"], "direct_time_ms": med["direct"],
                "speedup_vs_direct": med["direct"] / med[f"F{m}"],
            })
        rows.append(row)
    table = pd.DataFrame(rows)
    table["layer"] = f"[2, {channels}, {latent}, {latent}] -> {channels} channels, 3x3"

    errors = []
    for dname in dtypes:
        dt = parse_dtype(dname)
        try:
            check_dtype_on_device(dt, dev)
        except UserError:
            continue
        for m in implemented:
            products = ("model",) + (("float32",) if dt != torch.float32 else ())
            points = ("accurate", "lavin") if m == 4 else ("accurate",)
            for product in products:
                for variant in points:
                    r = winograd_oracle(m, dt, dev, product=product, variant=variant)
                    errors.append({"tile": f"{m}x{m}", "dtype": dname, "product": product,
                                   "points": "Lavin & Gray" if variant == "lavin" or m == 2 else
                                   ("0, ±3/2, ±2/3" if m == 4 else "wincnn default"),
                                   "variant": Variant(m, product).name, "rel_error": r.error,
                                   "direct_rel_error": r.baseline_error, "error_ratio": r.error / r.baseline_error,
                                   "oracle_ok": r.ok})
    return {"winograd": table, "winograd_error": pd.DataFrame(errors)}
