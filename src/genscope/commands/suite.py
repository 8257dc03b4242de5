"""CLI commands of the suite itself: ``models``, ``describe``, ``run``, ``characterize``."""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from genscope.cli import command
from genscope.errors import UserError


def _print_table(rows: list[dict], columns: list[str]) -> None:
    from tabulate import tabulate

    print(tabulate([[r.get(c, "") for c in columns] for r in rows], headers=columns, tablefmt="simple",
                   intfmt=","))


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from genscope.workloads import registry

    rows = []  # the paper's suite first, then the diffusion transformers after it
    for suite, names in (("paper", registry.available()), ("after-paper", list(registry.AFTER_PAPER))):
        for name in names:
            w = registry.get(name)
            rows.append({"name": name, "suite": suite, "paper_model": w.paper_model, "family": w.family,
                         "modality": w.modality, "phases": list(w.phases), "presets": w.presets.names()})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table([{**r, "phases": ", ".join(r["phases"]), "presets": ", ".join(r["presets"])} for r in rows],
                     ["name", "suite", "paper_model", "family", "phases", "presets"])
    return 0


def describe_model(name: str, preset: str) -> dict:
    from genscope.workloads import registry

    workload = registry.get(name)
    components = workload.describe(preset)
    return {
        "model": name,
        "preset": preset,
        "components": [{"name": c.name, "class": c.class_name, "params": c.params, **({"note": c.note} if c.note
                                                                                          else {})}
                       for c in components],
        "params_total": sum(c.params for c in components),
    }


@command("describe")
def cmd_describe(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    info = describe_model(args.model, args.preset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']} @ {info['preset']} (built on the meta device in {time.perf_counter() - start:.1f} s)")
    _print_table(info["components"] + [{"name": "total", "params": info["params_total"]}],
                 ["name", "class", "params", "note"])
    return 0


def environment() -> dict:
    import diffusers
    import torch
    import transformers

    import genscope

    return {"genscope": genscope.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def _settings_from_args(args: argparse.Namespace):
    from genscope.workloads import registry
    from genscope.workloads.base import RunSettings

    settings = RunSettings(preset=args.preset, steps=args.steps, image_size=args.image_size, frames=args.frames,
                           guidance_scale=args.guidance_scale, decode_tokens=args.decode_tokens,
                           attention=args.attention, dtype=args.dtype, device=args.device, seed=args.seed,
                           prompt=args.prompt, batch_size=args.batch_size, weights=args.weights)
    registry.get(args.model).check_options_apply(settings)  # an option the model does not use: refused
    return settings


def prepare_out_dir(out: str | None, stem: str, overwrite: bool) -> Path:
    if out is None:
        out = f"genscope-out/{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"output path {str(path)!r} exists and is not a folder")
    if (path / "summary.json").exists() and not overwrite:
        raise UserError(f"output folder {str(path)!r} already holds a run (summary.json); "
                        "choose another --out or pass --overwrite")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {str(path)!r}: {exc.strerror}") from None
    return path


def run_and_write(model: str, settings, out_dir: Path) -> dict:
    from genscope.models.runtime import dtype_name
    from genscope.workloads import registry
    from genscope.workloads.base import write_generation
    from genscope.workloads.phases import record_phases

    workload = registry.get(model)
    request = workload.request(settings)
    build_start = time.perf_counter()
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype, request.weights)
    build_ms = (time.perf_counter() - build_start) * 1e3
    with record_phases(request.device) as times:
        start = time.perf_counter()
        generation = pipeline(request)
        total_ms = (time.perf_counter() - start) * 1e3
    files = write_generation(generation, out_dir, workload.name)
    summary = {
        "model": workload.name,
        "preset": request.preset,
        "settings": request.as_dict(),
        "phase_time_ms": {k: round(v, 3) for k, v in times.totals_ms().items()},
        "phase_calls": times.counts(),
        "total_time_ms": round(total_ms, 3),
        "build_time_ms": round(build_ms, 3),
        "components": [{"name": c.name, "class": c.class_name, "params": c.params} for c in pipeline.components],
        "attention_sites": len(pipeline.sites),
        "outputs": [f.name for f in files],
        "info": {k: v for k, v in generation.info.items() if isinstance(v, (int, float, str, list, dict))},
        "device": str(request.device),
        "dtype": dtype_name(request.dtype),
        "environment": environment(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from genscope.workloads import registry

    settings = _settings_from_args(args)
    registry.get(args.model).request(settings)  # bad input fails before any folder is created
    out_dir = prepare_out_dir(args.out, f"{args.model}-{args.preset}", args.overwrite)
    summary = run_and_write(args.model, settings, out_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['model']} @ {summary['preset']}: {summary['total_time_ms'] / 1e3:.2f} s on "
          f"{summary['device']} ({summary['dtype']}, attention={args.attention})")
    _print_table([{"phase": k, "calls": summary["phase_calls"][k], "time_ms": v}
                  for k, v in summary["phase_time_ms"].items()], ["phase", "calls", "time_ms"])
    print(f"wrote {', '.join(str(out_dir / f) for f in summary['outputs'])} and {out_dir / 'summary.json'}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list the workloads: the paper's suite and the diffusion transformers after it")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("describe", help="components and parameter counts (meta device)")
    p.add_argument("model")
    p.add_argument("--preset", default="paper")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run a workload's full inference pipeline and write its output")
    p.add_argument("model")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--decode-tokens", type=int, help="autoregressive workloads: tokens to generate")
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--attention", default="flash", help="baseline | flash | partial_softmax")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--weights", help="local diffusers/transformers-layout folder (safetensors only)")
    p.add_argument("--out", help="output folder (default genscope-out/MODEL-PRESET-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--json", action="store_true")
