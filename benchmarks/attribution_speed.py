"""How long the one attribution takes on a paper-scale GPU profile, without a GPU.

Builds a 20-step Stable Diffusion trace from the recorded H200 one (shared/fixtures/h200-traces, 1 step at
512x512 with CFG): the events of the denoising step (CPU ops, ranges, runtime calls and kernels launched in it)
are repeated 19 more times, shifted in time, between the text encoder and the decoder. Prints the event count
and the seconds to parse (JSON -> table) and to attribute.

    .venv/bin/python benchmarks/attribution_speed.py [--steps 20] [--trace PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from genscope.instrument.attribution import attribute
from genscope.instrument.traces import events_from_chrome, read_trace_file

DEFAULT = Path(__file__).resolve().parents[2] / "shared/fixtures/h200-traces/stable-diffusion_h200.baseline.json.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trace", default=str(DEFAULT))
    args = parser.parse_args()
    start = time.perf_counter()
    events = events_from_chrome(read_trace_file(args.trace))
    parse_s = time.perf_counter() - start
    step = events[(events["cat"] == "user_annotation") & events["name"].str.startswith("phase::denoise")].iloc[0]
    lo, hi = step.start_us, step.start_us + step.dur_us
    host_in = (events["kind"] != "gpu") & (events["start_us"] >= lo) & (events["start_us"] < hi)
    launched = set(events.loc[host_in, "ext_id"]) | set(events.loc[host_in, "correlation"])
    gpu_in = (events["kind"] == "gpu") & (events["ext_id"].isin(launched) | events["correlation"].isin(launched))
    one_step = events[host_in | gpu_in]
    width = hi - lo
    later = events[events["start_us"] >= hi].assign(start_us=lambda d: d["start_us"] + width * (args.steps - 1))
    copies = [one_step.assign(start_us=one_step["start_us"] + width * i,
                              ext_id=one_step["ext_id"].where(one_step["ext_id"] < 0, one_step["ext_id"] + i * 10**7),
                              correlation=one_step["correlation"].where(one_step["correlation"] < 0,
                                                                        one_step["correlation"] + i * 10**7))
              for i in range(1, args.steps)]
    run = events["name"] == "genscope::run"
    big = pd.concat([events[~(events["start_us"] >= hi)], *copies, later], ignore_index=True)
    big.loc[big["name"] == "genscope::run", "dur_us"] = events.loc[run, "dur_us"].iloc[0] + width * (args.steps - 1)
    big = big.sort_values(["thread", "start_us", "dur_us"], ascending=[True, True, False], ignore_index=True)
    start = time.perf_counter()
    result = attribute(big)
    attribute_s = time.perf_counter() - start
    print(f"{args.steps} steps: {len(big):,} events ({int((big['kind'] == 'gpu').sum()):,} GPU); parse of the 1-step "
          f"file {parse_s:.2f} s; attribution {attribute_s:.2f} s; span {result.span_ms:.0f} ms, busy "
          f"{result.busy_ms:.0f} ms, Other {result.by_class().set_index('op_class').time_ms['Other']:.2f} ms")


if __name__ == "__main__":
    main()
