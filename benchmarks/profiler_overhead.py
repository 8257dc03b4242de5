"""Wall time of the same run uninstrumented, in `fast` mode and in `trace` mode (interleaved, median).

    .venv/bin/python benchmarks/profiler_overhead.py [--model stable-diffusion] [--preset small] [--steps 4]
        [--repeat 5]

Prints the median wall time of each variant and its overhead over the uninstrumented run, timed by
genscope.instrument.measure (interleaved rounds until each median's 95% interval is within 5% or the budget
runs out; UNSTABLE otherwise) with the machine's load. The goal is `fast` within 3% of uninstrumented.
A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from genscope.instrument.measure import MIN_REPS, measure, settle_threads
from genscope.instrument.profiler import profile_pipeline
from genscope.workloads import registry
from genscope.workloads.base import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stable-diffusion")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=MIN_REPS, help="minimum interleaved rounds")
    parser.add_argument("--budget-s", type=float, default=120.0, help="time budget of the measurement")
    args = parser.parse_args()
    workload = registry.get(args.model)
    request = workload.request(RunSettings(preset=args.preset, steps=args.steps))
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype)
    threads = settle_threads(request.device)

    def instrumented(mode: str) -> float:  # the profile's own wall time of the run (set-up and parsing excluded)
        return profile_pipeline(pipeline, request, mode=mode, repeat=1, warmup=0).repeat_totals_ms[0]

    def timer(fn) -> float:  # an instrumented variant reports its run's wall time; the plain run is timed here
        start = time.perf_counter()
        out = fn()
        return out if isinstance(out, float) else (time.perf_counter() - start) * 1e3

    variants = {"uninstrumented": lambda: pipeline(request), "fast": lambda: instrumented("fast"),
                "trace": lambda: instrumented("trace")}
    with torch.inference_mode():
        result = measure(variants, warmup=1, min_reps=args.repeat, max_reps=max(args.repeat, 50),
                         budget_s=args.budget_s, timer=timer)
    load = result.load
    print(f"{args.model} @ {args.preset}, {args.steps} steps, {threads['threads']} threads; {int(result.table.reps[0])} "
          f"interleaved rounds ({result.stop_reason}); load average {load.load_avg_1m:.2f}, other processes "
          f"{100 * load.others_cpu_share:.0f}% of {load.cores} cores{' - BUSY: ' + load.busy_reason if load.busy else ''}")
    for name in variants:
        row = result.row(name)
        ratio = result.ratio(name, "uninstrumented")
        print(f"{name:>15}: {row['median_ms']:9.1f} ms  (min {row['min_ms']:.1f}, 95% CI +-{row['ci_pct']:.1f}%)  "
              f"overhead {100 * (ratio['ratio'] - 1):+.1f}% [{100 * (ratio['ratio_low'] - 1):+.1f}, "
              f"{100 * (ratio['ratio_high'] - 1):+.1f}]{'' if ratio['stable'] else '  UNSTABLE'}")


if __name__ == "__main__":
    main()
