"""``genscope characterize``: the main job - every available study for every workload, stored, then the report.

A plan is a list of tasks (study, workload, settings, function). Each task's tables are stored in one
transaction under a resume key (study + workload + preset + settings + device + dtype); a task whose key is
already stored is skipped, so an interrupted run (Ctrl-C) keeps what finished and a rerun continues from
there. ``--fresh`` runs everything again (new records; nothing is deleted).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from genscope.cli import command
from genscope.errors import UserError

# Settings used per workload by the default characterization (small preset): step and token counts are
# reduced so the whole suite fits in minutes on 2 CPU cores. Per-step costs are unchanged; per-phase
# tables let a reader scale the denoise/decode phases to the full counts.
CHARACTERIZE_OVERRIDES: dict[str, dict] = {
    "stable-diffusion": {"steps": 8},
    "prod-image": {"steps": 4},
    "imagen": {"steps": 2},
    "make-a-video": {"steps": 4},
    "muse": {"steps": 8},
    "phenaki": {"steps": 6},
    "parti": {"image_size": 64},  # 8x8 = 64 image tokens decoded one at a time (128 px: 256)
    "llama": {"decode_tokens": 32},
}


@dataclass
class Task:
    study: str
    workload: str
    settings: dict
    run: Callable[[], dict[str, pd.DataFrame]]
    preset: str = "small"
    device: str = "cpu"
    dtype: str = "float32"
    key: str = field(default="")
    self_storing: bool = False  # the task's command stored its own record; we store a step marker
    error: str = ""

def breakdown_task(workload: str, preset: str, repeat: int, mode: str, device: str, dtype: str) -> Task:
    from genscope.studies.breakdown import run_breakdown
    from genscope.workloads.base import RunSettings

    overrides = CHARACTERIZE_OVERRIDES.get(workload, {}) if preset == "small" else {}
    settings = RunSettings(preset=preset, device=device, dtype=dtype, **overrides)
    return Task("breakdown", workload, {**overrides, "repeat": repeat, "mode": mode},
                lambda: run_breakdown(workload, settings, mode=mode, repeat=repeat, warmup=1),
                preset=preset, device=device, dtype=dtype)


# The other studies, run through their own commands (which store their records): (study, workload, argv).
# Paper-scale analytical studies run on the meta device (seconds); measured ones at the small preset.
def command_steps(workloads: list[str], preset: str) -> list[tuple[str, str, list[str]]]:
    steps: list[tuple[str, str, list[str]]] = []
    for w in workloads:
        steps.append(("flops", w, ["flops", w, "--preset", "paper"]))
    for w in workloads:
        # autoregressive workloads: one token is one period; the small preset keeps the decode loop short
        steps.append(("seqlen", w, ["seqlen", w, "--preset", preset if w in ("llama", "parti") else "paper"]))
    if "stable-diffusion" in workloads:
        steps.append(("seqlen-sizes", "stable-diffusion",
                      ["seqlen", "stable-diffusion", "--preset", "paper", "--image-size", "64", "128", "256", "512",
                       "1024"]))
    for w in ("stable-diffusion", "imagen"):
        if w in workloads:
            steps.append(("memory-model", w, ["memory-model", w, "--preset", "paper"]))
    steps.append(("taxonomy", "suite", ["taxonomy", "--models", *workloads]))
    steps.append(("roofline", "suite", ["roofline", "--models", *workloads]))
    if "stable-diffusion" in workloads:
        steps.append(("scaling", "stable-diffusion", ["scaling", "--preset", preset, "--image-size", "64", "128",
                                                      "256", "--steps", "1", "--repeat", "1", "--phase", "denoise"]))
    steps.append(("prefill-decode", "suite", ["prefill-decode", "--models", *workloads, "--preset", preset,
                                              "--repeat", "2", "--max-shapes", "4"]))
    if "make-a-video" in workloads:
        steps.append(("temporal", "make-a-video", ["temporal", "--model", "make-a-video", "--preset", preset,
                                                   "--frames", "2,4,8,16,32,64", "--image-size", "32,64",
                                                   "--repeat", "1", "--steps", "1"]))
    if "stable-diffusion" in workloads:
        steps.append(("optimization", "stable-diffusion",
                      ["optimize", "stable-diffusion", "--preset", preset, "--ablation", "--winograd-table",
                       "--repeat", "2"]))
    return steps


def command_task(study: str, workload: str, argv: list[str], db: str, preset: str, device: str, dtype: str) -> Task:
    """A study run through its CLI command in this process; the command stores its own record."""
    import contextlib
    import io

    from genscope.cli import COMMANDS, build_parser

    def run():
        args = build_parser().parse_args([*argv, "--db", db])
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = COMMANDS[args.command](args)
        if rc != 0:
            raise UserError(f"characterize step {' '.join(argv)!r} exited {rc}")
        return {"step": pd.DataFrame([{"command": "genscope " + " ".join(argv), "time_s": time.perf_counter() - start,
                                       "output_lines": out.getvalue().count("\n")}])}

    return Task(study, workload, {"argv": argv}, run, preset=preset, device=device, dtype=dtype, self_storing=True)


def extra_tasks(workloads: list[str], preset: str, device: str, dtype: str, db: str) -> list[Task]:
    """Tasks of the other studies whose commands exist in this checkout."""
    from genscope.cli import COMMANDS, build_parser

    build_parser()  # imports every command module present
    return [command_task(study, workload, argv, db, preset, device, dtype)
            for study, workload, argv in command_steps(workloads, preset) if argv[0] in COMMANDS]


def plan(workloads: list[str], preset: str, repeat: int, mode: str, device: str, dtype: str, db: str,
         studies: str = "all") -> list[Task]:
    tasks = [breakdown_task(w, preset, repeat, mode, device, dtype) for w in workloads]
    if studies == "all":
        tasks += extra_tasks(workloads, preset, device, dtype, db)
    return tasks


def run_plan(tasks: list[Task], store, *, fresh: bool = False, on_event: Callable[[str, Task], None] | None = None
             ) -> dict[str, int]:
    from genscope.results.store import RunRecord, run_key

    counts = {"done": 0, "skipped": 0, "failed": 0}
    for task in tasks:
        task.key = run_key(task.study, task.workload, task.preset, task.settings, task.device, task.dtype)
        if not fresh and store.has_key(task.key):
            counts["skipped"] += 1
            if on_event:
                on_event("skipped", task)
            continue
        if on_event:
            on_event("start", task)
        try:
            tables = task.run()
        except Exception as exc:  # one broken study must not cost the others (Ctrl-C still stops everything)
            counts["failed"] += 1
            task.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if on_event:
                on_event("failed", task)
            continue
        study = f"characterize-step:{task.study}" if task.self_storing else task.study
        store.save_run(RunRecord(study=study, workload=task.workload, preset=task.preset,
                                 settings=task.settings, device=task.device, dtype=task.dtype, tables=tables,
                                 key=task.key))
        counts["done"] += 1
        if on_event:
            on_event("done", task)
        del tables
        # each task builds its own models: free them, reference cycles included, before the next one builds
        # (the console script raises the collector's thresholds - see genscope.cli.CLI_GC_THRESHOLD)
        gc.collect()
    return counts


@command("characterize")
def cmd_characterize(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from genscope.report.html import build_report
    from genscope.results.store import ResultsStore
    from genscope.workloads import registry

    names = args.models or registry.available()
    for name in names:
        registry.get(name)  # unknown names fail here, before anything runs
        registry.get(name).config(args.preset)
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    store = ResultsStore(args.db)
    tasks = plan(names, args.preset, args.repeat, args.mode, args.device, args.dtype, str(store.path), args.studies)
    start = time.perf_counter()
    print(f"genscope characterize: {len(tasks)} tasks over {len(names)} workloads at preset {args.preset!r} "
          f"on {args.device}; results in {store.path}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as progress:
        bar = progress.add_task("characterize", total=len(tasks))

        def on_event(event: str, task: Task) -> None:
            if event == "start":
                progress.update(bar, description=f"{task.study}: {task.workload}")
            else:
                progress.advance(bar)
                if event == "skipped":
                    progress.console.print(f"  stored already, skipped: {task.study} {task.workload}")
                elif event == "failed":
                    progress.console.print(f"  FAILED: {task.study} {task.workload}: {task.error}")

        try:
            counts = run_plan(tasks, store, fresh=args.fresh, on_event=on_event)
        except KeyboardInterrupt:
            progress.stop()
            print("genscope: interrupted - finished tasks are stored; run the same command again to continue")
            return 130
    out = build_report(store, Path(args.out))
    print(f"{counts['done']} tasks run, {counts['skipped']} already stored, {counts['failed']} failed, in "
          f"{time.perf_counter() - start:.0f} s; report: {out}")
    _print_summary(store, names, args.preset)
    return 1 if counts["failed"] else 0


def _print_summary(store, names: list[str], preset: str) -> None:
    from tabulate import tabulate

    rows = []
    for name in names:
        rec = store.latest("breakdown", workload=name, preset=preset)
        if rec is None:
            continue
        s = rec.tables["speedup"].iloc[0]
        rows.append([name, s.baseline_ms, s.flash_ms, s.e2e_speedup, s.attention_speedup,
                     100 * s.attention_share_baseline, s.dominant_class_flash])
    if rows:
        print(tabulate(rows, headers=["workload", "baseline_ms", "flash_ms", "e2e_speedup", "attention_speedup",
                                      "attention_%_baseline", "dominant_with_flash"], floatfmt=".2f"))


def add_parsers(sub) -> None:
    p = sub.add_parser("characterize", help="the main job: every study for every workload, stored, then the report")
    p.add_argument("--preset", default="small")
    p.add_argument("--models", nargs="+", help="workloads (default: the whole suite)")
    p.add_argument("--repeat", type=int, default=2, help="timed repetitions per backend (after 1 warm-up)")
    p.add_argument("--mode", default="trace", help="trace | fast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--db", help="results database (default ~/.genscope/results.db or $GENSCOPE_DB)")
    p.add_argument("--out", default="genscope-out", help="folder for index.html")
    p.add_argument("--fresh", action="store_true", help="run every task again even if stored")
    p.add_argument("--studies", default="all", choices=("all", "breakdown"),
                   help="all studies (default) or only the operator breakdown")
