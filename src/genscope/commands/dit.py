"""CLI: ``genscope dit-temporal`` - factorized spatial+temporal vs full 3-D attention on a Wan 2.1 block.

Thin: parse, build :class:`genscope.studies.dit_temporal.Settings`, run, store (study ``dit-temporal``), print.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from genscope.cli import command
from genscope.commands.common import add_store_args, emit, int_list, open_store, store_tables

STUDY = "dit-temporal"


@command(STUDY)
def cmd_dit_temporal(args: argparse.Namespace) -> int:
    from genscope.studies import dit_temporal, registry

    kwargs = {"preset": args.preset, "image_size": args.image_size, "dtype": args.dtype, "measure": args.measure,
              "time_preset": args.time_preset, "repeat": args.repeat, "device": args.device}
    if args.frames:
        kwargs["frames"] = tuple(int_list(args.frames, "--frames"))
    if args.image_sizes:
        kwargs["image_sizes"] = tuple(int_list(args.image_sizes, "--image-sizes"))
    if args.time_frames:
        kwargs["time_frames"] = tuple(int_list(args.time_frames, "--time-frames"))
    settings = dit_temporal.Settings(**kwargs)
    tables = dit_temporal.run(settings)
    preset, device, dtype = registry.record_fields(STUDY, settings)
    run_id = store_tables(open_store(args), study=STUDY, workload="wan", preset=preset, settings=asdict(settings),
                          device=device, dtype=dtype, tables=tables)
    emit(args, tables, title=f"wan @ {args.preset}: full 3-D vs factorized spatial+temporal attention "
         "(FLOPs per denoising step of the whole transformer)", run_id=run_id, floatfmt=",.4g")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(STUDY, help="factorized spatial+temporal (Make-A-Video) vs full 3-D attention (Wan): "
                       "FLOPs, similarity-matrix memory, crossover frame count, time")
    p.add_argument("--preset", default="paper", help="wan preset for the block geometry (paper | 1.3b | small | tiny)")
    p.add_argument("--frames", help="video frames, 4k+1, comma-separated (default 1,9,17,33,49,65,81,121,161)")
    p.add_argument("--image-size", type=int, help="height in pixels (default: the preset's; 480 at paper)")
    p.add_argument("--image-sizes", help="heights for the scaling table, comma-separated (e.g. 240,480,720)")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the similarity-matrix bytes")
    p.add_argument("--measure", action="store_true", help="also time one block (flash) at --time-preset")
    p.add_argument("--time-preset", default="small")
    p.add_argument("--time-frames", help="frames timed with --measure (default 5,9,17)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per point (after one warm-up)")
    p.add_argument("--device", default="cpu", help="device for --measure (cpu | cuda)")
    add_store_args(p)
