"""Make the machine busy on purpose (a script, not a test): one process keeping every core busy.

Used to check the validity rules (``genscope.instrument.measure``): run ``make run`` (or any timed study)
while this runs, and every timed comparison must come out busy and UNSTABLE, with no timed finding drawn.

    python benchmarks/spin.py [--workers N]   # default: one spinning worker per core; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    workers = [mp.Process(target=spin, daemon=True) for _ in range(args.workers)]
    for w in workers:
        w.start()
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
