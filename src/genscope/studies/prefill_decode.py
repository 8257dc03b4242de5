"""Prefill vs decode: flash-attention speedup as a function of the query length (the paper's Section IV-B and
Table III).

The paper's argument: prefill (and a diffusion model, which "generates all pixels of the image at once")
runs attention with a long query (an N x N similarity matrix: tiling pays off), decode with a query of length 1
(an N x 1 matrix: few memory accesses to save), so flash attention speeds up diffusion models more than
autoregressive transformer TTI models. Two measurements:

* :func:`query_length_sweep`: a standalone benchmark of the attention entry point at a fixed key length and
  query lengths from 1 (decode) to the key length (prefill), baseline vs flash;
* :func:`workload_shapes` + :func:`time_shapes`: the distinct attention shapes each workload actually runs
  (from a shape-only trace), each timed with both backends, so that the diffusion calls and the
  autoregressive decode calls can be placed on the same curve; per workload, the call-weighted attention
  speedup.

Timing: inputs are made once per shape; one warm-up call per backend, then ``repeat`` rounds, each timing
baseline then flash (interleaved, so drift on a shared machine hits both alike); a sample runs the call enough
times in a row to last at least ``min_sample_ms``; the median sample is kept. Causal prefill calls are timed
with ``is_causal``; other masks (padding) are not reproduced.

Pure: returns DataFrames, never plots.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genscope.errors import UserError
from genscope.models.layers.attention import attention
from genscope.models.runtime import dtype_name, parse_device, parse_dtype, synchronize

STUDY = "prefill-decode"
SHAPE_COLUMNS = ("batch", "heads", "query_len", "key_len", "head_dim", "causal")
DECODE = "decode (Lq = 1)"
PREFILL = "prefill-like (Lq > 1)"
BASELINE_COPIES = 3  # similarity matrices alive at once in baseline attention


def regime(query_len: int) -> str:
    """By the query length alone (Table III's distinction: matrix-vector vs matrix-matrix), whatever the phase:
    a UNet level of 1 x 1 tokens is matrix-vector too."""
    return DECODE if query_len == 1 else PREFILL


def default_query_lens(key_len: int) -> list[int]:
    """1, 2, 4, ... up to the key length (the key length itself included)."""
    lens, q = [], 1
    while q < key_len:
        lens.append(q)
        q *= 2
    return [*lens, key_len]


@dataclass
class _Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: bool


def _make_inputs(shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> _Inputs:
    g = torch.Generator("cpu").manual_seed(seed)
    b, h, lq, lk, d = (int(shape[c]) for c in ("batch", "heads", "query_len", "key_len", "head_dim"))

    def rand(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype)

    return _Inputs(rand(b, h, lq, d), rand(b, h, lk, d), rand(b, h, lk, d), bool(shape.get("causal", False)))


def _run(inputs: _Inputs, backend: str, times: int) -> None:
    for _ in range(times):
        attention(inputs.q, inputs.k, inputs.v, is_causal=inputs.causal, backend=backend)


def time_backends(inputs: _Inputs, device: torch.device, repeat: int = 5, min_sample_ms: float = 5.0,
                  backends: tuple[str, ...] = ("baseline", "flash")) -> dict[str, float]:
    """Median time of one call (ms) per backend, interleaved repetitions."""
    calls = {}
    with torch.inference_mode():
        for backend in backends:  # warm-up and calibration: calls per sample so that a sample lasts min_sample_ms
            once = []
            for _ in range(3):  # the fastest of 3: a call descheduled on a busy machine does not set the count
                synchronize(device)
                start = time.perf_counter()
                _run(inputs, backend, 1)
                synchronize(device)
                once.append((time.perf_counter() - start) * 1e3)
            calls[backend] = max(1, min(1000, int(min_sample_ms / max(min(once), 1e-3))))
        samples: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(repeat):
            for backend in backends:
                synchronize(device)
                start = time.perf_counter()
                _run(inputs, backend, calls[backend])
                synchronize(device)
                samples[backend].append((time.perf_counter() - start) * 1e3 / calls[backend])
    return {b: statistics.median(s) for b, s in samples.items()}


def _check(repeat: int, device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    from genscope.models.runtime import check_dtype_on_device

    dev = parse_device(device)
    if dev.type == "meta":
        raise UserError("prefill-decode times attention: --device meta has no timings; use cpu or cuda")
    dt = parse_dtype(dtype)
    check_dtype_on_device(dt, dev)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UserError(f"repeat must be an integer of at least 1, got {repeat!r}")
    return dev, dt


def memory_budget(device: torch.device, fraction: float = 0.25) -> float:
    from genscope.validate import available_bytes, check_fraction

    return check_fraction("memory fraction", fraction) * available_bytes(device)


def time_shapes(shapes: pd.DataFrame, *, repeat: int = 5, device: str = "cpu", dtype: str = "float32",
                memory_fraction: float = 0.25, progress=None) -> pd.DataFrame:
    """Time each row's shape (columns :data:`SHAPE_COLUMNS`) with both backends.

    Adds baseline_ms, flash_ms, speedup (baseline / flash), timed (False where the baseline's similarity
    matrices would not fit ``memory_fraction`` of the available memory).
    """
    dev, dt = _check(repeat, device, dtype)
    budget = memory_budget(dev, memory_fraction)
    size = torch.empty((), dtype=dt).element_size()
    out = shapes.copy().reset_index(drop=True)
    base, flash, timed = [], [], []
    for i, row in out.iterrows():
        need = BASELINE_COPIES * size * int(row.batch) * int(row.heads) * int(row.query_len) * int(row.key_len)
        if need > budget:
            base.append(np.nan)
            flash.append(np.nan)
            timed.append(False)
            continue
        if progress is not None:
            progress(f"shape {i + 1}/{len(out)}: [{row.batch}, {row.heads}, {row.query_len}, {row.head_dim}] x "
                     f"{row.key_len} keys")
        result = time_backends(_make_inputs(row, dt, dev), dev, repeat)
        base.append(result["baseline"])
        flash.append(result["flash"])
        timed.append(True)
    out["baseline_ms"] = base
    out["flash_ms"] = flash
    out["speedup"] = out["baseline_ms"] / out["flash_ms"]
    out["timed"] = timed
    out["dtype"] = dtype_name(dt)
    return out


def query_length_sweep(key_len: int = 2048, query_lens: list[int] | None = None, heads: int = 8,
                       head_dim: int = 64, batch: int = 1, repeat: int = 5, device: str = "cpu",
                       dtype: str = "float32", progress=None) -> pd.DataFrame:
    """Flash vs baseline at a fixed key length, query length 1 (decode) to ``key_len`` (prefill)."""
    for what, value, hi in (("key length", key_len, 1 << 20), ("heads", heads, 1024), ("head dim", head_dim, 1024),
                            ("batch", batch, 1024)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise UserError(f"{what} {value!r} is out of range: accepted integers 1 to {hi}")
    query_lens = query_lens or default_query_lens(key_len)
    bad = [q for q in query_lens if not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= key_len]
    if bad:
        raise UserError(f"query lengths {bad} are out of range: accepted 1 to the key length {key_len}")
    shapes = pd.DataFrame([{"batch": batch, "heads": heads, "query_len": q, "key_len": key_len, "head_dim": head_dim,
                            "causal": False} for q in sorted(set(query_lens))])
    out = time_shapes(shapes, repeat=repeat, device=device, dtype=dtype, progress=progress)
    out.insert(0, "regime", [regime(q) for q in out["query_len"]])
    return out


# ----------------------------------------------------------------------------------------------------
# The shapes the workloads run
# ----------------------------------------------------------------------------------------------------
def workload_shapes(models: list[str] | None = None, preset: str = "small", device: str = "meta",
                    dtype: str = "float32", decode_tokens: int | None = None,
                    image_size: int | None = None, progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Distinct attention shapes per workload from one traced run each.

    Returns (shapes: workload, family, regime, kind, batch, heads, query_len, key_len, head_dim, causal, calls,
    phases, traced_on; skipped: workload, reason). A workload that cannot run on the meta device is traced on
    the CPU instead at non-paper presets (noted in ``skipped``); otherwise, with ``models=None`` it is listed in
    ``skipped``, and a named model that fails raises.
    """
    from genscope.instrument.seqlen import trace_workload
    from genscope.workloads import registry

    explicit = models is not None
    names = models if explicit else registry.available()
    frames, skipped = [], []
    for name in names:
        workload = registry.get(name)
        traced_on = device
        if progress is not None:
            progress(f"tracing {name} @ {preset} on {device}")
        try:
            trace = trace_workload(name, preset=preset, device=device, dtype=dtype, decode_tokens=decode_tokens,
                                   image_size=image_size, replicate=True)
        except UserError:
            raise
        except Exception as exc:  # a workload that cannot run shape-only: reported, never hidden
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            if device == "meta" and preset != "paper":  # small/tiny presets run on the CPU in seconds
                skipped.append({"workload": name, "reason": f"traced on cpu instead of meta ({reason})"})
                traced_on = "cpu"
                trace = trace_workload(name, preset=preset, device="cpu", dtype=dtype, decode_tokens=decode_tokens,
                                       image_size=image_size, replicate=True)
            elif explicit:
                raise
            else:
                skipped.append({"workload": name, "reason": reason})
                continue
        calls = trace.calls.copy()
        # causal calls with Lq == Lk are prefill with a causal mask; decode calls (Lq = 1) need no mask
        calls["causal"] = (calls["kind"] == "causal") & (calls["query_len"] == calls["key_len"]) & (
            calls["query_len"] > 1)
        grouped = (calls.groupby(["kind", *SHAPE_COLUMNS], sort=False)
                   .agg(calls=("call", "size"), phases=("phase", lambda s: ",".join(dict.fromkeys(s))))
                   .reset_index())
        grouped.insert(0, "workload", name)
        grouped.insert(1, "family", workload.family)
        grouped.insert(2, "regime", [regime(q) for q in grouped["query_len"]])
        grouped["traced_on"] = traced_on
        frames.append(grouped)
    shapes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return shapes, pd.DataFrame(skipped, columns=["workload", "reason"])


def select_shapes(shapes: pd.DataFrame, max_per_workload: int = 16) -> pd.DataFrame:
    """The shapes to time: every distinct shape, or, for a workload with more (autoregressive decode: one key
    length per step), the most-called ones plus key lengths spread evenly over each remaining family of shapes."""
    keep = []
    for _, group in shapes.groupby("workload", sort=False):
        if len(group) <= max_per_workload:
            keep.append(group)
            continue
        group = group.sort_values("calls", ascending=False)
        picked = set(group.index[: max_per_workload // 2])
        rest = group.drop(index=list(picked)).sort_values("key_len")
        slots = max_per_workload - len(picked)
        if slots > 0 and len(rest):
            idx = np.unique(np.linspace(0, len(rest) - 1, slots).round().astype(int))
            picked |= set(rest.index[idx])
        keep.append(group.loc[sorted(picked)])
    return pd.concat(keep) if keep else shapes


def fill_untimed(shapes: pd.DataFrame, timed: pd.DataFrame) -> pd.DataFrame:
    """Every shape with times: timed ones as measured; the others take the time of the timed shape of the same
    workload, kind, batch, heads, query length and head dim with the nearest key length (``estimated``)."""
    keys = ["workload", "kind", *SHAPE_COLUMNS]
    merged = shapes.merge(timed[[*keys, "baseline_ms", "flash_ms", "timed"]], on=keys, how="left")
    merged["estimated"] = merged["baseline_ms"].isna() & merged["timed"].isna()
    group_keys = ["workload", "kind", "batch", "heads", "query_len", "head_dim", "causal"]
    for i in merged.index[merged["estimated"]]:
        row = merged.loc[i]
        same = timed
        for k in group_keys:
            same = same[same[k] == row[k]]
        same = same[same["timed"]]
        if same.empty:
            continue
        j = (same["key_len"] - row["key_len"]).abs().idxmin()
        merged.loc[i, ["baseline_ms", "flash_ms"]] = same.loc[j, ["baseline_ms", "flash_ms"]].to_numpy()
    merged["timed"] = merged["timed"].fillna(False).astype(bool)
    merged["speedup"] = merged["baseline_ms"] / merged["flash_ms"]
    return merged


def workload_summary(shapes: pd.DataFrame) -> pd.DataFrame:
    """Per workload: calls, share of decode calls (Lq = 1), call-weighted attention time per backend and the
    attention speedup of flash; shapes without a time (too large for this device) are left out and counted."""
    rows = []
    for name, g in shapes.groupby("workload", sort=False):
        ok = g[g["baseline_ms"].notna() & g["flash_ms"].notna()]
        base = float((ok["baseline_ms"] * ok["calls"]).sum())
        flash = float((ok["flash_ms"] * ok["calls"]).sum())
        rows.append({"workload": name, "family": g["family"].iloc[0], "calls": int(g["calls"].sum()),
                     "distinct_shapes": len(g), "shapes_timed": int(g["timed"].sum()),
                     "calls_untimed": int(g.loc[g["baseline_ms"].isna(), "calls"].sum()),
                     "decode_call_share": float(g.loc[g["query_len"] == 1, "calls"].sum() / g["calls"].sum()),
                     "median_query_len": float(np.median(np.repeat(g["query_len"], g["calls"]))),
                     "attention_baseline_ms": base, "attention_flash_ms": flash,
                     "attention_speedup": base / flash if flash > 0 else np.nan})
    return pd.DataFrame(rows)


@dataclass
class PrefillDecodeResult:
    sweep: pd.DataFrame
    shapes: pd.DataFrame
    workloads: pd.DataFrame
    skipped: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"sweep": self.sweep, "shapes": self.shapes, "workloads": self.workloads, "skipped": self.skipped}


def prefill_decode(models: list[str] | None = None, preset: str = "small", key_len: int = 2048,
                   query_lens: list[int] | None = None, heads: int = 8, head_dim: int = 64, repeat: int = 5,
                   device: str = "cpu", dtype: str = "float32", trace_device: str = "meta",
                   max_shapes: int = 16, sweep: bool = True, progress=None) -> PrefillDecodeResult:
    """The query-length sweep and the workloads' own shapes, timed on ``device``."""
    _check(repeat, device, dtype)
    sweep_df = (query_length_sweep(key_len, query_lens, heads, head_dim, repeat=repeat, device=device, dtype=dtype,
                                   progress=progress) if sweep else pd.DataFrame())
    if models == []:
        return PrefillDecodeResult(sweep_df, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    shapes, skipped = workload_shapes(models, preset=preset, device=trace_device, dtype=dtype, progress=progress)
    if shapes.empty:
        return PrefillDecodeResult(sweep_df, shapes, pd.DataFrame(), skipped)
    chosen = select_shapes(shapes, max_shapes)
    timed = time_shapes(chosen, repeat=repeat, device=device, dtype=dtype, progress=progress)
    full = fill_untimed(shapes, timed)
    return PrefillDecodeResult(sweep_df, full, workload_summary(full), skipped)


# ---------------------------------------------------------------------------------------------------------
# the study's entry point (genscope.studies.registry)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """``workloads`` empty: every workload (``sweep_only``: none); ``query_lens`` empty: 1, 2, 4, ... key_len."""

    workloads: tuple[str, ...] = ()
    preset: str = "small"
    key_len: int = 2048
    query_lens: tuple[int, ...] = ()
    heads: int = 8
    head_dim: int = 64
    repeat: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    trace_device: str = "meta"
    max_shapes: int = 16
    sweep: bool = True
    sweep_only: bool = False

    def __post_init__(self) -> None:
        from genscope.workloads import registry

        for name in self.workloads:
            registry.get(name)
        for what in ("key_len", "heads", "head_dim", "max_shapes"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{what.replace('_', '-')} must be a positive integer, got {value!r}")
        bad = [v for v in self.query_lens if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise UserError(f"query lengths must be positive integers, got {bad}")
        object.__setattr__(self, "query_lens", tuple(dict.fromkeys(self.query_lens)))
        _check(self.repeat, self.device, self.dtype)


def run(settings: Settings, *, progress=None) -> dict[str, pd.DataFrame]:
    """Tables ``sweep``, ``shapes``, ``workloads``, ``skipped`` (see :func:`prefill_decode`) and ``load`` (the
    machine's load while timing, ``stable`` = not busy)."""
    from genscope.instrument.measure import with_load_verdict

    s = settings
    models = [] if s.sweep_only else (list(s.workloads) or None)
    return with_load_verdict(s.device, lambda: prefill_decode(
        models, preset=s.preset, key_len=s.key_len, query_lens=list(s.query_lens) or None, heads=s.heads,
        head_dim=s.head_dim, repeat=s.repeat, device=s.device, dtype=s.dtype, trace_device=s.trace_device,
        max_shapes=s.max_shapes, sweep=s.sweep, progress=progress).tables())
