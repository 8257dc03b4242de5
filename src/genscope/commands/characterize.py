"""``genscope characterize``: the main job - a plan of studies for every workload, stored, then the report.

The plan (:func:`genscope.studies.plan.build_plan`: ``--studies all | breakdown | analytical``) is data; an
executor runs it (:mod:`genscope.commands.executors`: in this process by default, ``--executor ray`` on a Ray
cluster). Each task's tables are stored in one transaction under a resume key (study + workload + preset +
settings + device + dtype); a task whose key is already stored is skipped, so an interrupted run (Ctrl-C)
keeps what finished and a rerun continues from there. ``--fresh`` runs everything again (new records; nothing
is deleted).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from genscope.cli import command
from genscope.commands.common import DB_HELP, open_store, workload_names
from genscope.errors import UserError
from genscope.progress import reporting

LOG_EVERY_S = 10.0


@command("characterize")
def cmd_characterize(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from genscope.commands.executors import make_executor, run_plan
    from genscope.report.html import build_report
    from genscope.studies.plan import build_plan
    from genscope.workloads import registry

    # default: the paper's suite and the diffusion transformers after it; unknown names fail here, before anything
    names = workload_names(args.models) if args.models else registry.available() + list(registry.AFTER_PAPER)
    for name in names:
        registry.get(name).config(args.preset)
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    if args.address and args.executor != "ray":
        raise UserError("--address applies to --executor ray")
    tasks = build_plan(names, studies=args.studies, preset=args.preset, repeat=args.repeat, mode=args.mode,
                       device=args.device, dtype=args.dtype)
    store = open_store(args)
    executor = make_executor(args.executor, args.address)
    start = time.perf_counter()
    print(f"genscope characterize: {len(tasks)} tasks over {len(names)} workloads at preset {args.preset!r} "
          f"on {args.device} ({args.executor}); results in {store.path}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as progress:
        bar = progress.add_task("characterize", total=len(tasks))
        inner = progress.add_task("", total=1, visible=False)  # steps inside the running task
        # a log (not a terminal) gets plain timestamped lines instead of the live bars: each task's start and
        # end, and inner steps at most every LOG_EVERY_S seconds
        plain = not progress.console.is_terminal
        clock = {"task": 0.0, "step": 0.0}

        def log(text: str) -> None:
            progress.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, markup=False)

        def on_step(done: int, total: int, what: str) -> None:
            progress.update(inner, completed=done, total=total, description=f"  {what} step", visible=True)
            if plain and time.perf_counter() - clock["step"] > LOG_EVERY_S:
                clock["step"] = time.perf_counter()
                log(f"  {what} step {done}/{total}")

        def on_event(event: str, task, detail: str) -> None:
            if event == "start":
                progress.update(bar, description=task.label)
                progress.update(inner, visible=False)
                clock["task"] = clock["step"] = time.perf_counter()
                if plain:
                    log(f"task {int(progress.tasks[bar].completed) + 1}/{len(tasks)}: {task.label}")
            else:
                progress.advance(bar)
                if plain and event == "done":
                    log(f"  done in {time.perf_counter() - clock['task']:.1f} s")
                if event == "skipped":
                    progress.console.print(f"  stored already, skipped: {task.study} {task.workload}")
                elif event == "failed":
                    progress.console.print(f"  FAILED: {task.study} {task.workload}: {detail}")

        try:
            with reporting(on_step):
                counts = run_plan(tasks, store, executor=executor, fresh=args.fresh, on_event=on_event)
        except KeyboardInterrupt:
            progress.stop()
            print("genscope: interrupted - finished tasks are stored; run the same command again to continue")
            return 130
    out = build_report(store, Path(args.out))
    print(f"{counts['done']} tasks run, {counts['skipped']} already stored, {counts['failed']} failed, in "
          f"{time.perf_counter() - start:.0f} s; report: {out}")
    _print_summary(store, names, args.preset)
    from genscope.findings import evaluate, format_findings

    print("\nFindings of the papers, checked on this machine (also first on the report page):")
    print(format_findings(evaluate(store)))
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
    p.add_argument("--models", nargs="+", help="workloads (default: the paper's suite and the diffusion "
                   "transformers after it)")
    p.add_argument("--repeat", type=int, default=2, help="timed repetitions per backend (after 1 warm-up)")
    p.add_argument("--mode", default="trace", help="trace | fast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--out", default="genscope-out", help="folder for index.html")
    p.add_argument("--fresh", action="store_true", help="run every task again even if stored")
    p.add_argument("--studies", default="all", choices=("all", "breakdown", "analytical"),
                   help="all studies (default), only the operator breakdown, or only the paper-scale analytical "
                        "studies (FLOPs, sequence lengths, memory model, Table I, roofline; meta device)")
    p.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"),
                   help="where the tasks run: this process (default) or a Ray cluster (pip install 'genscope[ray]')")
    p.add_argument("--address", help="Ray cluster address (--executor ray; default: start a local Ray instance)")
