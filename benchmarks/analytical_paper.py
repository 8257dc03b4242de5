"""Paper-scale analytical characterization of the suite in ONE process: seconds per task and per workload,
peak RSS, the machine's load.

    .venv/bin/python benchmarks/analytical_paper.py                 # the FLOP count of every workload
    .venv/bin/python benchmarks/analytical_paper.py --plan          # every task of `characterize --studies analytical`
    .venv/bin/python benchmarks/analytical_paper.py --workloads stable-diffusion,llama

Each task is a study run exactly as ``genscope characterize`` runs it (``registry.get(study).run(settings)``;
nothing stored). The target (issue 14): the whole analytical plan for the eight workloads of the paper in
at most 30 s with peak RSS at most 2 GB. Wall times depend on the machine's load, printed before and after
(``os.getloadavg``); a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from collections import defaultdict

PAPER_WORKLOADS = ("llama", "imagen", "stable-diffusion", "muse", "parti", "prod-image", "make-a-video", "phenaki")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(PAPER_WORKLOADS))
    parser.add_argument("--plan", action="store_true", help="every analytical task, not only the FLOP counts")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    print(load(), flush=True)
    start = time.perf_counter()  # CPU time (time.process_time) counts from the process start
    from genscope.studies import plan, registry  # imports (torch, diffusers, transformers) are timed too

    if args.plan:
        tasks = plan.build_plan(workloads, studies="analytical", preset="paper")
    else:
        tasks = [plan.task("flops", workload=w, preset="paper") for w in workloads]
    import_s = time.perf_counter() - start
    print(f"imports and plan: {import_s:.1f} s, peak RSS {peak_rss_mib():.0f} MiB", flush=True)
    per_workload: dict[str, float] = defaultdict(float)
    print(f"{'study':<14} {'workload':<34} {'seconds':>8} {'cpu_s':>7} {'peak RSS MiB':>13}")
    for t in tasks:
        t0, c0 = time.perf_counter(), time.process_time()
        registry.get(t.study).run(registry.make_settings(t.study, t.settings))
        seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        per_workload[t.workload] += seconds
        gc.collect()
        print(f"{t.study:<14} {t.workload[:34]:<34} {seconds:8.1f} {cpu_s:7.1f} {peak_rss_mib():13.0f}", flush=True)
    total = time.perf_counter() - start
    print("\nper workload (seconds): " + ", ".join(f"{w} {s:.1f}" for w, s in per_workload.items()))
    print(f"total {total:.1f} s wall, {time.process_time():.1f} s CPU (target <= 30 s), peak RSS "
          f"{peak_rss_mib():.0f} MiB (target <= 2048)")
    print(load())


if __name__ == "__main__":
    main()
