"""Per-call cost of the profiler's fast-mode timers: a chain of small Linear layers, plain vs timed.

    .venv/bin/python benchmarks/fast_timer_overhead.py [--layers 2000] [--repeat 15]

Prints the median time per Linear call without and with the fast timers (interleaved repetitions, one
thread) and their difference - what `genscope profile --mode fast` adds to every timed leaf module call.
A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from genscope.instrument.fast_timers import FastTimers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(args.layers)])
    x = torch.randn(1, 4)
    timers = FastTimers(torch.device("cpu"))

    def plain() -> None:
        with torch.inference_mode():
            model(x)

    def timed() -> None:
        with torch.inference_mode():
            model(x)

    per_call_us: dict[str, list[float]] = {"plain": [], "timed": [], "install": []}
    for _ in range(args.repeat):
        for name, fn in (("plain", plain), ("timed", timed)):
            with contextlib.ExitStack() as stack:
                if name == "timed":  # wrapping the modules is timed apart: once per profiled run
                    start = time.perf_counter()
                    stack.enter_context(timers.install([("model", model)]))
                    per_call_us["install"].append((time.perf_counter() - start) * 1e6 / args.layers)
                start = time.perf_counter()
                fn()
                per_call_us[name].append((time.perf_counter() - start) * 1e6 / args.layers)
    plain_us, timed_us, install_us = (statistics.median(per_call_us[k]) for k in ("plain", "timed", "install"))
    print(f"{args.layers} x Linear(4, 4), median of {args.repeat} interleaved runs, 1 thread")
    print(f"  plain: {plain_us:6.2f} us per call")
    print(f"  timed: {timed_us:6.2f} us per call  (+{timed_us - plain_us:.2f} us)")
    print(f"  installing the timers: {install_us:6.2f} us per module, once per profiled run")


if __name__ == "__main__":
    main()
