"""FSDP training at paper scale, analytically (the paper's Figure 6 beyond the machine at hand).

For each model (built on the meta device: no weights, seconds) and each GPU count N:

* **FLOPs per step**: counted, not assumed - genscope's :class:`~genscope.instrument.flops.FlopCounter` (torch's
  ``FlopCounterMode``) around the training loss's forward *and* its backward on meta tensors, at batch 1, then
  x the per-GPU batch (every op here is linear in the batch). Forward + backward comes out at 2.99-3.00x the
  forward (SD 1.5, SDXL, Muse): the usual "backward = 2 x forward", here counted. Per-unit compute is the unit's share of the
  forward FLOPs (torch's module tracker mis-attributes backward FLOPs to modules, so the backward is spread
  like the forward - stated in ``assumptions``).
* **bytes per collective**: FSDP2 shards every parameter on dim 0 in N chunks of ``ceil(d0 / N)`` rows (the
  last padded) and all-gathers each unit's padded shards as one flat buffer; so per unit
  ``shard_numel = sum_p ceil(d0_p / N) * numel_p / d0_p`` and the gathered buffer is ``N * shard_numel``
  elements (:func:`fsdp_units`, exact - ``genscope train`` measures the same numbers). Per step: every block
  is all-gathered twice (forward, and again in backward after ``reshard_after_forward``), the root once (FSDP2
  keeps the root unsharded between forward and backward), and every unit's gradients are reduce-scattered
  once. Parameters travel in ``param_dtype``, gradients are reduced in float32 (FSDP2 ``MixedPrecisionPolicy``
  with ``reduce_dtype=float32``).
* **collective time** (ring, as NCCL runs all-gather and reduce-scatter): ``t = base + steps_intra * lat_intra +
  steps_inter * lat_inter + S * (N - 1) / N / busbw`` with S the gathered (or reduced) buffer's bytes and
  busbw the intra-node (NVLink) or, once the ring leaves the node, the inter-node (InfiniBand) bus bandwidth
  (NCCL's own cost model, ``tuning.cc``; constants in ``hardware/specs.py``).
* **exposed communication** (:func:`simulate_step`): one compute stream and one communication channel, in
  issue order. Forward: the root's all-gather, then each block's all-gather prefetched one block ahead.
  Backward, in reverse: each block's all-gather prefetched one block ahead, its reduce-scatter issued when its
  gradients are done; the root's reduce-scatter last. Compute waits only for the all-gather of its unit; time
  it waits is exposed communication; the rest of communication overlaps compute.

Why hand-written: no library models FSDP's collectives from a model definition; the cost model is NCCL's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError
from genscope.hardware.specs import get_interconnect, get_spec
from genscope.models.base import dtype_bytes
from genscope.models.runtime import parse_dtype
from genscope.workloads.training import TRAINABLE, build_trainable, loss_function, make_batch, unit_parameters

ROOT = "(root)"
MAX_GPUS = 65536
# Sources of the defaults (see ``assumptions``):
PAPER_GPUS = (2, 8, 16)  # the paper's Figure 6
DEFAULT_GPUS = (2, 8, 16, 32, 64, 128, 256, 512, 1024)
# SD v1 model card (CompVis/stable-diffusion-v1-4, "Training"): batch 32 x 8 x 2 x 4 = 2048 on 32 nodes of 8
# A100s: 2 samples per GPU per micro-step (x4 gradient accumulation). The paper does not state its batch.
DEFAULT_BATCH_PER_GPU = 2
# Model FLOPs utilization of large-model training on A100s: 46.2% (PaLM 540B, Chowdhery et al. 2022, Table 3)
# and 52% (Megatron-LM GPT-3 175B, Narayanan et al. 2021, Sec. 5.1, 163 of 312 TFLOP/s).
DEFAULT_COMPUTE_EFFICIENCY = 0.5


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = ("stable-diffusion", "prod-image", "muse")
    preset: str = "paper"
    gpus: tuple[int, ...] = DEFAULT_GPUS
    interconnect: str = "dgx-a100-hdr"
    dtype: str = "bfloat16"  # parameters are gathered in it; gradients are reduced in float32
    batch_per_gpu: int = DEFAULT_BATCH_PER_GPU
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY

    def __post_init__(self):
        for m in self.models:
            if m not in TRAINABLE:
                raise UserError(f"{m} has no training loss in genscope; accepted: {', '.join(TRAINABLE)}")
        if not self.gpus or any(isinstance(n, bool) or not 1 <= int(n) <= MAX_GPUS for n in self.gpus):
            raise UserError(f"GPU counts must be integers from 1 to {MAX_GPUS}, got {self.gpus}")
        if self.batch_per_gpu < 1:
            raise UserError(f"batch per GPU must be at least 1, got {self.batch_per_gpu}")
        if not 0 < self.compute_efficiency <= 1:
            raise UserError(f"compute efficiency must be in (0, 1], got {self.compute_efficiency}")
        get_interconnect(self.interconnect)
        parse_dtype(self.dtype)


# ----------------------------------------------------------------------------------------------------
# Bytes: FSDP2's sharding, exactly
# ----------------------------------------------------------------------------------------------------
def padded_shard_numel(shape: tuple[int, ...], world_size: int) -> int:
    """Elements of one rank's padded shard of a parameter: ceil(d0 / N) rows of numel / d0 elements."""
    if len(shape) == 0:
        return 1
    rows, per_row = shape[0], math.prod(shape[1:])
    return math.ceil(rows / world_size) * per_row


def fsdp_units(model: nn.Module, world_size: int) -> pd.DataFrame:
    """Per FSDP unit, in forward order with the root last: params and the per-rank shard (padded) elements."""
    rows = []
    for order, (unit, params) in enumerate(unit_parameters(model)):
        rows.append({"unit": unit, "order": order, "params": sum(p.numel() for p in params),
                     "shard_numel": sum(padded_shard_numel(tuple(p.shape), world_size) for p in params)})
    return pd.DataFrame(rows)


def collectives_per_step(units: pd.DataFrame, world_size: int, param_bytes: int, reduce_bytes: int
                         ) -> pd.DataFrame:
    """Per unit and collective: calls per step and the bytes of each call's input and output (one rank: FSDP2
    communicates nothing)."""
    rows = []
    for u in units.itertuples():
        gathers = 1 if u.unit == ROOT else 2  # blocks: forward + backward; the root stays gathered
        gathers, reduces = (gathers, 1) if world_size > 1 else (0, 0)
        full = world_size * u.shard_numel
        rows.append({"unit": u.unit, "collective": "all_gather", "calls": gathers,
                     "input_bytes": u.shard_numel * param_bytes, "output_bytes": full * param_bytes})
        rows.append({"unit": u.unit, "collective": "reduce_scatter", "calls": reduces,
                     "input_bytes": full * reduce_bytes, "output_bytes": u.shard_numel * reduce_bytes})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# FLOPs: forward + backward of the training loss on the meta device
# ----------------------------------------------------------------------------------------------------
def training_flops(workload: str, preset: str) -> tuple[nn.Module, dict[str, float]]:
    """(the meta model, FLOPs at batch 1: ``forward``, ``backward``, and ``forward:<unit>`` per FSDP unit)."""
    from genscope.instrument.flops import FlopCounter

    model, config = build_trainable(workload, preset, "meta")
    batch = make_batch(workload, config, 1, torch.Generator("cpu").manual_seed(0), "meta")
    loss_fn = loss_function(workload, config)
    with FlopCounter({"model": model}, memoize=False) as counter:
        loss = loss_fn(model, batch)
        rows = counter.table()  # forward ops, filed under their module paths (model.down_blocks.0....)
        loss.backward()
        total = counter.get_total_flops()
    forward = int(rows["flops"].sum())
    out = {"forward": float(forward), "backward": float(total - forward)}
    units = [u for u, _ in unit_parameters(model) if u != ROOT]
    for unit in units:
        inside = (rows["module"] == f"model.{unit}") | rows["module"].str.startswith(f"model.{unit}.")
        out[f"forward:{unit}"] = float(rows.loc[inside, "flops"].sum())
    out[f"forward:{ROOT}"] = float(forward) - sum(out[f"forward:{u}"] for u in units)
    return model, out


# ----------------------------------------------------------------------------------------------------
# Time: NCCL's ring model and a two-stream step
# ----------------------------------------------------------------------------------------------------
def ring_time_s(buffer_bytes: float, world_size: int, interconnect) -> float:
    """Ring all-gather / reduce-scatter of a ``buffer_bytes`` gathered (or reduced) buffer over N GPUs."""
    if world_size <= 1:
        return 0.0
    nodes = math.ceil(world_size / interconnect.gpus_per_node)
    inter_steps = nodes - 1
    intra_steps = world_size - 1 - inter_steps
    busbw = interconnect.intra_node_bus_bytes_per_s if nodes == 1 else interconnect.inter_node_bus_bytes_per_s
    latency = (interconnect.base_latency_s + intra_steps * interconnect.intra_step_latency_s
               + inter_steps * interconnect.inter_step_latency_s)
    return latency + buffer_bytes * (world_size - 1) / world_size / busbw


def simulate_step(units: list[str], fwd_s: dict[str, float], bwd_s: dict[str, float], gather_s: dict[str, float],
                  reduce_s: dict[str, float]) -> dict[str, float]:
    """One FSDP step on one compute stream and one communication channel (see the module docstring).

    ``units``: the blocks in forward order (the root is :data:`ROOT`, keyed in every dict).
    """
    comm_free = 0.0

    def communicate(issue: float, seconds: float) -> float:
        nonlocal comm_free
        start = max(issue, comm_free)
        comm_free = start + seconds
        return comm_free

    # forward: root gather, root compute (embeddings, conv_in/out, heads), blocks with one-ahead prefetch
    ready = {ROOT: communicate(0.0, gather_s[ROOT])}
    t = ready[ROOT] + fwd_s[ROOT]
    if units:
        ready[units[0]] = communicate(0.0, gather_s[units[0]])
    for i, u in enumerate(units):
        start = max(t, ready[u])
        if i + 1 < len(units):
            ready[units[i + 1]] = communicate(start, gather_s[units[i + 1]])
        t = start + fwd_s[u]
    # backward, reverse order: gather prefetched one unit ahead, reduce-scatter after each unit's gradients
    back = list(reversed(units))
    ready_b = {}
    if back:
        ready_b[back[0]] = communicate(t, gather_s[back[0]])
    for i, u in enumerate(back):
        start = max(t, ready_b[u])
        if i + 1 < len(back):
            ready_b[back[i + 1]] = communicate(start, gather_s[back[i + 1]])
        t = start + bwd_s[u]
        communicate(t, reduce_s[u])
    t += bwd_s[ROOT]
    end = max(t, communicate(t, reduce_s[ROOT]))
    compute = sum(fwd_s.values()) + sum(bwd_s.values())
    comm = sum(gather_s[u] * (1 if u == ROOT else 2) for u in gather_s) + sum(reduce_s.values())
    exposed = end - compute
    return {"step_ms": end * 1e3, "compute_ms": compute * 1e3, "communication_ms": comm * 1e3,
            "exposed_comm_ms": exposed * 1e3, "overlapped_ms": (comm - exposed) * 1e3}


def predict_step(units: pd.DataFrame, flops: dict[str, float], world_size: int, interconnect,
                 flops_per_s: float, batch: int, param_bytes: int, reduce_bytes: int) -> dict[str, float]:
    """Predicted per-step times and bytes of one model at one N (``flops_per_s``: attained compute rate)."""
    coll = collectives_per_step(units, world_size, param_bytes, reduce_bytes)
    gathers = coll[coll["collective"] == "all_gather"].set_index("unit")
    reduces = coll[coll["collective"] == "reduce_scatter"].set_index("unit")
    backward_ratio = flops["backward"] / flops["forward"] if flops["forward"] else 0.0
    names = [u for u in units["unit"] if u != ROOT]
    fwd_s = {u: batch * flops[f"forward:{u}"] / flops_per_s for u in [*names, ROOT]}
    bwd_s = {u: s * backward_ratio for u, s in fwd_s.items()}
    gather_s = {u: ring_time_s(gathers.loc[u, "output_bytes"], world_size, interconnect) for u in [*names, ROOT]}
    reduce_s = {u: ring_time_s(reduces.loc[u, "input_bytes"], world_size, interconnect) for u in [*names, ROOT]}
    out = simulate_step(names, fwd_s, bwd_s, gather_s, reduce_s)
    out["all_gather_bytes"] = float((gathers["calls"] * gathers["output_bytes"]).sum())
    out["reduce_scatter_bytes"] = float((reduces["calls"] * reduces["input_bytes"]).sum())
    out["flops_per_gpu"] = batch * (flops["forward"] + flops["backward"])
    return out


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    """``prediction`` (model x GPUs), ``units`` (FSDP units at the first N) and ``assumptions``."""
    ic = get_interconnect(settings.interconnect)
    gpu = get_spec(ic.gpu)
    dtype = parse_dtype(settings.dtype)
    param_bytes, reduce_bytes = dtype_bytes(dtype), dtype_bytes(torch.float32)
    rate = gpu.peak(settings.dtype) * settings.compute_efficiency
    rows, unit_rows = [], []
    for workload in settings.models:
        model, flops = training_flops(workload, settings.preset)
        for n in settings.gpus:
            units = fsdp_units(model, int(n))
            if n == settings.gpus[0]:
                unit_rows += [{"model": workload, "world_size": int(n), **r} for r in units.to_dict("records")]
            pred = predict_step(units, flops, int(n), ic, rate, settings.batch_per_gpu, param_bytes, reduce_bytes)
            rows.append({"model": workload, "preset": settings.preset, "gpus": int(n),
                         "nodes": math.ceil(n / ic.gpus_per_node), "params": int(units["params"].sum()),
                         "batch_per_gpu": settings.batch_per_gpu, **pred,
                         "comm_share": pred["communication_ms"] / (pred["compute_ms"] + pred["communication_ms"]),
                         "exposed_share": pred["exposed_comm_ms"] / pred["step_ms"]})
        del model
    assumptions = pd.DataFrame([
        {"item": "GPU", "value": f"{gpu.description}, {settings.dtype} peak "
                                 f"{gpu.peak(settings.dtype) / 1e12:.1f} TFLOP/s",
         "source": gpu.sources.get(settings.dtype, "")},
        {"item": "compute efficiency", "value": f"{settings.compute_efficiency:.2f} of peak",
         "source": "PaLM (Chowdhery et al. 2022, Table 3): 46.2% MFU; Megatron-LM (Narayanan et al. 2021): 52%"},
        {"item": "batch per GPU", "value": str(settings.batch_per_gpu),
         "source": "SD v1 model card: 32 x 8 x 2 x 4 = 2048 (2 per GPU per micro-step); the paper gives none"},
        {"item": "backward FLOPs", "value": "counted on the meta device (FlopCounterMode over loss.backward())",
         "source": "per-unit backward time = the unit's forward share x (backward / forward) of the model"},
        {"item": "intra-node bus bandwidth", "value": f"{ic.intra_node_bus_bytes_per_s / 1e9:.0f} GB/s",
         "source": ic.sources["nvlink"] + "; " + ic.sources["bus_cap"]},
        {"item": "inter-node bus bandwidth", "value": f"{ic.inter_node_bus_bytes_per_s / 1e9:.0f} GB/s per ring "
                                                      f"({ic.gpus_per_node} NICs x 25 GB/s)",
         "source": ic.sources["infiniband"] + "; " + ic.sources["hdr_port"]},
        {"item": "ring latency", "value": f"{ic.base_latency_s * 1e6:.1f} us + {ic.intra_step_latency_s * 1e6:.1f} "
                                          f"us/NVLink step + {ic.inter_step_latency_s * 1e6:.1f} us/network step",
         "source": ic.sources["latency"]},
        {"item": "GPUs per node", "value": str(ic.gpus_per_node), "source": ic.sources["gpus_per_node"]},
        {"item": "precision", "value": f"parameters gathered in {settings.dtype}, gradients reduced in "
                                       "float32", "source": "FSDP2 MixedPrecisionPolicy(param_dtype, reduce_dtype)"},
    ])
    return {"prediction": pd.DataFrame(rows), "units": pd.DataFrame(unit_rows), "assumptions": assumptions}
