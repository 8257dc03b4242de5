"""Wall time of the same run uninstrumented, in `fast` mode and in `trace` mode (interleaved, median).

    .venv/bin/python benchmarks/profiler_overhead.py [--model stable-diffusion] [--preset small] [--steps 4]
        [--repeat 5]

Prints the median wall time of each variant and its overhead over the uninstrumented run. The goal is
`fast` within 3% of uninstrumented. A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genscope.instrument.profiler import profile_pipeline
from genscope.workloads import registry
from genscope.workloads.base import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stable-diffusion")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    workload = registry.get(args.model)
    request = workload.request(RunSettings(preset=args.preset, steps=args.steps))
    pipeline = workload.build(workload.config(request.preset), request.device, request.dtype)

    def plain() -> float:
        start = time.perf_counter()
        pipeline(request)
        return (time.perf_counter() - start) * 1e3

    def instrumented(mode: str) -> float:
        return profile_pipeline(pipeline, request, mode=mode, repeat=1, warmup=0).repeat_totals_ms[0]

    variants = {"uninstrumented": plain, "fast": lambda: instrumented("fast"), "trace": lambda: instrumented("trace")}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up each
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            times[name].append(fn())
    base = statistics.median(times["uninstrumented"])
    print(f"{args.model} @ {args.preset}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"median of {args.repeat} interleaved runs")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>15}: {med:9.1f} ms  (min {min(ts):.1f}, max {max(ts):.1f})  overhead {100 * (med / base - 1):+.1f}%")


if __name__ == "__main__":
    main()
