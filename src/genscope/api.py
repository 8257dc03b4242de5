"""Python API for users' own models: ``genscope.profile(...)``.

    import genscope
    tables = genscope.profile(pipe, call_kwargs={"prompt": "a cat", "num_inference_steps": 4})
    tables["class_total"]   # op_class, time_ms, share_pct per attention backend
    tables["speedup"]       # end-to-end and attention-module speedup of flash over baseline, Amdahl check

``target`` may be a diffusers pipeline (e.g. loaded from local weights with ``from_pretrained(...,
use_safetensors=True, local_files_only=True)``), any ``nn.Module`` (called with ``inputs``), or a plain
callable. Attention modules of diffusers/transformers models found in the target are routed through
genscope's attention entry point, so the backend can be switched and attention time is attributed; for a
plain callable, attention is attributed only if its models were installed with
:func:`genscope.models.layers.attention.install_attention`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from genscope.errors import UserError, choice_error
from genscope.instrument.profiler import Profile, profile_callable
from genscope.models.layers.attention import BACKENDS, install_attention, use_backend
from genscope.models.runtime import parse_device
from genscope.studies.breakdown import breakdown_tables, merge
from genscope.validate import check_count
from genscope.workloads.phases import phase

# diffusers pipeline component name -> genscope phase
PIPELINE_PHASES = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder", "text_encoder_3": "text_encoder",
                   "unet": "denoise", "transformer": "denoise", "prior": "denoise", "vae": "decoder",
                   "vqvae": "decoder", "movq": "decoder"}


def _is_diffusers_pipeline(obj: Any) -> bool:
    return hasattr(obj, "components") and isinstance(obj.components, dict) and callable(obj)


@contextlib.contextmanager
def _pipeline_phases(pipe) -> Iterator[list[tuple[str, nn.Module]]]:
    """Open genscope phases around a diffusers pipeline's components (denoiser calls count as steps)."""
    components = [(name, m) for name, m in pipe.components.items() if isinstance(m, nn.Module)]
    handles, restore, open_phases = [], [], []
    step = {"denoise": 0}

    def enter(name):
        step_i = None
        if name == "denoise":
            step_i = step["denoise"]
            step["denoise"] += 1
        cm = phase(name, step=step_i)
        cm.__enter__()
        open_phases.append(cm)

    def leave():
        if open_phases:
            open_phases.pop().__exit__(None, None, None)

    for name, module in components:
        phase_name = PIPELINE_PHASES.get(name)
        if phase_name is None:
            continue
        if phase_name == "decoder" and hasattr(module, "decode"):  # VAEs run .decode(), not forward
            original = module.decode

            def decode(*a, _orig=original, **k):
                enter("decoder")
                try:
                    return _orig(*a, **k)
                finally:
                    leave()
            module.decode = decode
            restore.append(module)
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, _n=phase_name: enter(_n)))
            handles.append(module.register_forward_hook(lambda m, a, o: leave(), always_call=True))
    try:
        yield components
    finally:
        for h in handles:
            h.remove()
        for module in restore:
            del module.decode  # back to the class's method
        while open_phases:
            leave()


def profile(target: Any, *, inputs: tuple = (), call_kwargs: Mapping[str, Any] | None = None, attention: str = "both",
            mode: str = "trace", repeat: int = 2, warmup: int = 1, device: str | torch.device | None = None,
            name: str = "model", trace_path: str | None = None) -> dict[str, pd.DataFrame]:
    """Operator-class breakdown of a user's model; the tables of :mod:`genscope.studies.breakdown`.

    attention: "both" (baseline and flash, interleaved: adds ``speedup``), "baseline", "flash", or "as-is"
    (the target's own attention, untouched).
    Bad arguments (``repeat`` < 1, ``warmup`` < 0, ``inputs`` not a tuple, ``call_kwargs`` not a mapping
    with string keys, an unknown or absent device) raise :class:`~genscope.errors.UserError` before anything
    runs.
    """
    check_count("repeat", repeat, minimum=1)
    check_count("warmup", warmup, minimum=0)
    if not isinstance(inputs, tuple):
        raise UserError(f"inputs must be a tuple of positional arguments, got {type(inputs).__name__} "
                        "(one argument x: inputs=(x,))")
    if call_kwargs is not None and not isinstance(call_kwargs, Mapping):
        raise UserError(f"call_kwargs must be a mapping of keyword arguments, got {type(call_kwargs).__name__}")
    call_kwargs = dict(call_kwargs or {})
    bad_keys = [k for k in call_kwargs if not isinstance(k, str)]
    if bad_keys:
        raise UserError(f"call_kwargs keys must be argument names (strings), got {bad_keys[:3]!r}")
    if device is not None:
        device = parse_device(device)  # unknown, or CUDA without a GPU: UserError
    accepted = (*BACKENDS, "both", "as-is")
    if attention not in accepted:
        raise choice_error("attention", attention, accepted)
    stack = contextlib.ExitStack()
    if _is_diffusers_pipeline(target):
        components = stack.enter_context(_pipeline_phases(target))
        if attention != "as-is":
            for cname, module in components:
                install_attention(module, prefix=cname)
        device = device or getattr(target, "device", "cpu")
        fn: Callable[[], object] = lambda: target(**call_kwargs)  # noqa: E731
    elif isinstance(target, nn.Module):
        components = [(name, target)]
        if attention != "as-is":
            install_attention(target, prefix=name)
        if device is None:
            param = next(target.parameters(), None)
            device = param.device if param is not None else "cpu"

        def fn():
            with phase("forward"):
                return target(*inputs, **call_kwargs)
    elif callable(target):
        components = []
        device = device or "cpu"

        def fn():
            return target(*inputs, **call_kwargs)
    else:
        raise UserError(f"cannot profile a {type(target).__name__}: pass a diffusers pipeline, an nn.Module "
                        "or a callable")
    backends = ("baseline", "flash") if attention == "both" else (attention,)
    with stack:
        profiles: dict[str, list[Profile]] = {b: [] for b in backends}

        def runner(backend):
            def run():
                if backend == "as-is":
                    return fn()
                with use_backend(backend):
                    return fn()
            return run

        with torch.inference_mode():
            for b in backends:
                for _ in range(warmup):
                    runner(b)()
        for _ in range(repeat):
            for b in backends:
                profiles[b].append(profile_callable(runner(b), components=components, device=device, mode=mode,
                                                    repeat=1, warmup=0, trace_path=trace_path))
    merged = {b: merge(ps) for b, ps in profiles.items()}
    if attention == "both":
        return breakdown_tables(name, merged)
    prof = merged[backends[0]]
    by = prof.by_class()
    by.insert(0, "attention", backends[0])
    return {"class_total": by, "class_time": prof.class_time, "phase_time": prof.phase_time,
            "other_ops": prof.other_ops}
