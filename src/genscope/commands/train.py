"""``genscope train`` (FSDP training, measured per rank) and ``genscope train-predict`` (paper scale, analytical).

``train`` starts its ranks with torch's own launcher (``torch.distributed.launcher.api.elastic_launch``, what
``torchrun`` runs): a c10d rendezvous (``--standalone``-style on one machine; ``--nnodes N --rdzv-endpoint
HOST:PORT`` across machines), ``max_restarts=0``. Each rank (:func:`rank_worker`) builds the trainable core,
shards it with FSDP2, runs warm-up steps, then profiles ``--steps`` steps and writes ``rank<r>.json`` (Chrome
trace) and ``rank<r>.meta.json`` into the trace folder. The study (``genscope.studies.training``) reads the
folder; the run is stored only when every rank finished. A rank that fails ends the job: the launcher stops
the other ranks, the error is printed, nothing is stored, and a temporary trace folder is removed.

``--backend fake`` runs ONE process with torch's fake process group of world size ``--nproc`` (collectives
return at once): the compute-only baseline of an N-rank run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from genscope.cli import command
from genscope.commands.common import add_store_args, check_positive, emit, int_list, open_store, store_tables
from genscope.errors import UserError, choice_error

BACKENDS = ("auto", "gloo", "nccl", "fake")
PRECISIONS = ("auto", "float32", "bfloat16")
MAX_STEPS, MAX_WARMUP, MAX_BATCH = 100, 10, 64
RANKS_PER_CPU_CORE = 4  # gloo ranks on CPU: at most this many per core (oversubscription beyond is pointless)
MAX_FAKE_WORLD = 65536


class RankFailed(Exception):
    """A rank of the job died; the message names the rank and its error."""


# ----------------------------------------------------------------------------------------------------
# One rank (runs in the processes the launcher starts; must be importable: spawn)
# ----------------------------------------------------------------------------------------------------
def rank_worker(job: dict) -> dict:
    import torch
    import torch.distributed as dist

    from genscope.instrument.distributed import profile_steps
    from genscope.models.runtime import parse_dtype
    from genscope.workloads.training import make_trainer

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.set_num_threads(job["threads"])
    if job["backend"] == "fake":
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=job["world_size"])
    else:
        dist.init_process_group(job["backend"])
    try:
        device = torch.device("cuda", local_rank) if job["backend"] == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if job.get("fail_rank") == rank:  # fault injection for the tests: this rank dies before training
            raise RuntimeError(f"injected failure on rank {rank}")
        trainer = make_trainer(job["model"], job["preset"], batch_size=job["batch_size"], device=device,
                               param_dtype=parse_dtype(job["precision"]), seed=job["seed"] + rank)
        for _ in range(job["warmup"] - 1):  # the last warm-up step runs under the profiler (its warm-up)
            trainer.step()
        start = time.perf_counter()
        losses = profile_steps(trainer.step, job["steps"], Path(job["trace_dir"]) / f"rank{rank}.json",
                               device_type=device.type)
        meta = {"rank": rank, "losses": [float(x) for x in losses], "wall_s": time.perf_counter() - start,
                "threads": job["threads"], "device": str(device.type), "backend": job["backend"],
                "precision": job["precision"],
                "world_size": dist.get_world_size(), "pid": os.getpid()}
        (Path(job["trace_dir"]) / f"rank{rank}.meta.json").write_text(json.dumps(meta))
        return meta
    finally:
        dist.destroy_process_group()


def launch(job: dict, nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str = "") -> dict[int, dict]:
    """Run :func:`rank_worker` on ``nproc_per_node`` ranks here (x ``nnodes`` machines) via torch's launcher."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc_per_node,
                          rdzv_backend="c10d", rdzv_endpoint=rdzv_endpoint or "localhost:0",
                          # one rendezvous id for every node (torchrun's --rdzv-id); a fresh one on one machine
                          run_id="genscope-train" if nnodes > 1 else uuid.uuid4().hex, max_restarts=0,
                          monitor_interval=0.1,
                          start_method="spawn")
    try:
        return elastic_launch(config, rank_worker)(job)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise RankFailed(f"rank {rank} failed (exit code {failure.exitcode}): {_failure_text(failure)}") from None


def _failure_text(failure) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    lines = [line for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"signal {failure.signal_name()}" if failure.signal else "no error message"


# ----------------------------------------------------------------------------------------------------
# Validation and choices
# ----------------------------------------------------------------------------------------------------
def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    if backend == "nccl" or backend == "auto":
        import torch

        cuda = torch.cuda.is_available()
        if backend == "nccl" and not cuda:
            raise UserError("backend nccl needs CUDA GPUs and none is available here; use --backend gloo")
        return "nccl" if cuda else "gloo"
    return backend


def check_nproc(nproc: int, backend: str) -> None:
    check_positive("--nproc", nproc)
    if backend == "nccl":
        import torch

        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise UserError(f"--nproc {nproc} exceeds the {gpus} GPU(s) here (NCCL needs one GPU per rank)")
    elif backend == "gloo":
        cores = os.cpu_count() or 1
        if nproc > RANKS_PER_CPU_CORE * cores:
            raise UserError(f"--nproc {nproc} exceeds what this machine holds: at most {RANKS_PER_CPU_CORE} gloo "
                            f"ranks per CPU core, {RANKS_PER_CPU_CORE * cores} on its {cores} cores")
    elif nproc > MAX_FAKE_WORLD:
        raise UserError(f"--nproc {nproc} is out of range for the fake backend: at most {MAX_FAKE_WORLD}")


def resolve_precision(precision: str, backend: str) -> str:
    """``auto``: bfloat16 on GPUs that support it; on CPU, measured - bfloat16 only where it is faster here."""
    if precision not in PRECISIONS:
        raise choice_error("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    import torch

    if backend == "nccl":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return measured_cpu_precision()


def measured_cpu_precision() -> str:
    """float32 vs bfloat16 on this CPU: a 3x3 convolution and a matmul of the small denoiser's widths, timed
    interleaved (cached per device in the pass-decision file)."""
    import torch

    from genscope.passes.decisions import DecisionCache, decision_key, fastest, measure_interleaved

    cache = DecisionCache()
    key = decision_key("train-precision", "cpu", torch.float32, {"probe": "conv64x32x32+mm1024x256"})
    hit = cache.get(key)
    if hit and hit.get("choice") in ("float32", "bfloat16"):
        return hit["choice"]
    fns = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x = torch.randn(1, 64, 32, 32, dtype=dtype)
        w = torch.randn(64, 64, 3, 3, dtype=dtype)
        a, b = torch.randn(1024, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
        fns[name] = (lambda x=x, w=w, a=a, b=b: (torch.nn.functional.conv2d(x, w, padding=1), a @ b))
    choice, medians = fastest(measure_interleaved(fns, repeats=5), default="float32", margin=0.1)
    cache.put(key, {"choice": choice, "median_ms": medians})
    return choice


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------
def job_from_args(args: argparse.Namespace) -> tuple[dict, int]:
    """The rank job of ``args`` (validated; bad values raise UserError) and the ranks to start on this node."""
    from genscope.workloads import registry
    from genscope.workloads.training import check_trainable

    check_trainable(args.model)
    registry.get(args.model).config(args.preset)  # unknown preset -> one line
    backend = resolve_backend(args.backend)
    check_nproc(args.nproc, backend)
    for what, value, hi in (("--steps", args.steps, MAX_STEPS), ("--batch-size", args.batch_size, MAX_BATCH),
                            ("--nnodes", args.nnodes, 4096)):
        check_positive(what, value)
        if value > hi:
            raise UserError(f"{what} {value} is out of range: at most {hi}")
    if not 1 <= args.warmup <= MAX_WARMUP:
        raise UserError(f"--warmup {args.warmup} is out of range: 1 to {MAX_WARMUP} (the profiler warms up on one)")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise UserError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if backend == "fake" and args.nnodes > 1:
        raise UserError("the fake backend runs one process; it takes no --nnodes")
    if args.threads:
        check_positive("--threads", args.threads)
    procs_here = 1 if backend == "fake" else args.nproc
    job = {"model": args.model, "preset": args.preset, "steps": args.steps, "warmup": args.warmup,
           "batch_size": args.batch_size, "backend": backend, "precision": resolve_precision(args.precision, backend),
           "threads": args.threads or max(1, (os.cpu_count() or 1) // procs_here), "trace_dir": args.trace_dir,
           "seed": args.seed, "world_size": args.nproc if backend == "fake" else args.nproc * args.nnodes}
    return job, procs_here


def analyze(args: argparse.Namespace, job: dict, trace_dir: Path, ranks: tuple[int, ...] = ()) -> dict:
    from genscope.studies import training

    settings = training.Settings(trace_dir=str(trace_dir), model=job["model"], preset=job["preset"],
                                 world_size=job["world_size"], precision=job["precision"],
                                 batch_size=job["batch_size"], ranks=ranks)
    return training.run(settings)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    if args.from_traces:
        return from_traces(args)
    job, procs_here = job_from_args(args)
    temporary = args.trace_dir is None
    trace_dir = Path(tempfile.mkdtemp(prefix="genscope-train-")) if temporary else Path(args.trace_dir)
    if not temporary:
        trace_dir.mkdir(parents=True, exist_ok=True)
        if any(trace_dir.glob("rank*.json")):
            raise UserError(f"trace folder {str(trace_dir)!r} already holds rank traces; give an empty folder")
    job["trace_dir"] = str(trace_dir)
    start = time.perf_counter()
    try:
        done = launch(job, procs_here, args.nnodes, args.rdzv_endpoint)
        launch_s = time.perf_counter() - start
        # across nodes each node analyses the ranks it ran (the folder may be shared, the others still writing)
        tables = analyze(args, job, trace_dir, tuple(sorted(done)) if args.nnodes > 1 else ())
    except RankFailed as exc:
        print(f"genscope: error: training failed, nothing stored: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if temporary:
            shutil.rmtree(trace_dir, ignore_errors=True)
    tables["summary"]["launch_s"] = launch_s
    note = f"ranks launched and run in {launch_s:.1f} s" + (f"; traces in {trace_dir}" if not temporary else "")
    return store_and_print(args, job, tables, note)


def run_measured(settings: dict) -> dict:
    """The characterize plan's training task: ranks launched into a temporary folder, the study over their
    traces, the folder removed. ``settings``: model, preset, nproc, steps, warmup, threads (gloo on CPU)."""
    args = argparse.Namespace(model=settings["model"], preset=settings["preset"], nproc=int(settings["nproc"]),
                              steps=int(settings["steps"]), warmup=int(settings.get("warmup", 1)), batch_size=1,
                              backend="gloo", precision="auto", threads=int(settings.get("threads", 1)), nnodes=1,
                              rdzv_endpoint="", trace_dir=None, seed=0)
    job, procs_here = job_from_args(args)
    trace_dir = Path(tempfile.mkdtemp(prefix="genscope-train-"))
    job["trace_dir"] = str(trace_dir)
    try:
        start = time.perf_counter()
        launch(job, procs_here)
        tables = analyze(args, job, trace_dir)
        tables["summary"]["launch_s"] = time.perf_counter() - start
        return tables
    except RankFailed as exc:
        raise UserError(f"training failed, nothing stored: {exc}") from None
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def from_traces(args: argparse.Namespace) -> int:
    """``--from-traces DIR``: the study over rank traces written by ``torchrun ... -m genscope.commands.train``."""
    trace_dir = Path(args.from_traces)
    metas = sorted(trace_dir.glob("rank*.meta.json")) if trace_dir.is_dir() else []
    if not metas:
        raise UserError(f"no rank traces in {str(trace_dir)!r} (rank<r>.json + rank<r>.meta.json)")
    meta = json.loads(metas[0].read_text())
    job, _ = job_from_args(args)
    job.update(world_size=int(meta.get("world_size", len(metas))), backend=str(meta.get("backend", job["backend"])),
               precision=str(meta.get("precision", job["precision"])), threads=meta.get("threads"),
               steps=len(meta.get("losses", [])) or job["steps"])
    return store_and_print(args, job, analyze(args, job, trace_dir), f"read from {trace_dir}")


def store_and_print(args: argparse.Namespace, job: dict, tables: dict, note: str) -> int:
    settings = {k: job[k] for k in ("steps", "warmup", "backend", "batch_size", "threads", "world_size")}
    settings.update(nproc=args.nproc, nnodes=args.nnodes)
    run_id = store_tables(open_store(args), study="training", workload=job["model"], preset=job["preset"],
                          settings=settings, device="cuda" if job["backend"] == "nccl" else "cpu",
                          dtype=job["precision"], tables=tables)
    title = (f"FSDP training of {job['model']} @ {job['preset']}: {job['world_size']} rank(s), backend "
             f"{job['backend']}, {job['precision']}, {job['steps']} profiled step(s) after {job['warmup']} "
             f"warm-up; {note}")
    emit(args, {k: tables[k] for k in ("summary", "collectives", "validation")}, title=title, run_id=run_id)
    return 0


@command("train-predict")
def cmd_train_predict(args: argparse.Namespace) -> int:
    from genscope.studies import training_model
    from genscope.studies.registry import record_fields

    settings = training_model.Settings(
        models=tuple(args.models), preset=args.preset, gpus=tuple(int_list(args.gpus, "--gpus")),
        interconnect=args.interconnect, dtype=args.dtype, batch_per_gpu=args.batch_per_gpu,
        compute_efficiency=args.compute_efficiency)
    tables = training_model.run(settings)
    preset, device, dtype = record_fields("training-model", settings)
    run_id = store_tables(open_store(args), study="training-model", workload="suite", preset=preset,
                          settings={k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
                          device=device, dtype=dtype, tables=tables)
    columns = ["model", "gpus", "nodes", "compute_ms", "communication_ms", "overlapped_ms", "exposed_comm_ms",
               "step_ms", "comm_share", "all_gather_bytes", "reduce_scatter_bytes"]
    emit(args, {"prediction": tables["prediction"][columns], "assumptions": tables["assumptions"]},
         title="FSDP training per step at paper scale (analytical; meta device)", run_id=run_id)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="FSDP training steps on N ranks (torch's launcher), profiled per rank: "
                                     "compute vs communication (Figure 6)")
    p.add_argument("model")
    p.add_argument("--preset", default="small")
    p.add_argument("--nproc", type=int, default=2, help="ranks on this machine (fake backend: simulated world size)")
    p.add_argument("--steps", type=int, default=3, help="profiled training steps")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded steps first (the last one warms the profiler up)")
    p.add_argument("--backend", default="auto", help="auto (nccl with GPUs, else gloo) | gloo | nccl | fake")
    p.add_argument("--precision", default="auto", help="auto (measured on CPU, bfloat16 on GPUs that have it) | "
                                                       "float32 | bfloat16")
    p.add_argument("--batch-size", type=int, default=1, help="samples per rank per step")
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (default: cores / ranks)")
    p.add_argument("--nnodes", type=int, default=1, help="machines (each runs the same command)")
    p.add_argument("--rdzv-endpoint", default="", help="HOST:PORT of the c10d rendezvous (multi-node)")
    p.add_argument("--trace-dir", help="keep the per-rank traces here (default: a temporary folder, removed)")
    p.add_argument("--from-traces", metavar="DIR", help="launch nothing: analyse and store the rank traces in DIR "
                                                        "(written by torchrun ... -m genscope.commands.train)")
    p.add_argument("--seed", type=int, default=0)
    add_store_args(p)

    q = sub.add_parser("train-predict", help="FSDP training at paper scale on 2..1,024 GPUs (analytical, meta)")
    q.add_argument("--models", nargs="+", default=["stable-diffusion", "prod-image", "muse"])
    q.add_argument("--preset", default="paper")
    q.add_argument("--gpus", default="2,8,16,32,64,128,256,512,1024")
    q.add_argument("--interconnect", default="dgx-a100-hdr")
    q.add_argument("--dtype", default="bfloat16", help="parameter dtype (gradients reduce in float32)")
    q.add_argument("--batch-per-gpu", type=int, default=2)
    q.add_argument("--compute-efficiency", type=float, default=0.5)
    add_store_args(q)


def torchrun_main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m genscope.commands.train MODEL [train options] --trace-dir DIR``: one rank, as torchrun
    starts it (RANK, WORLD_SIZE, MASTER_ADDR ... in the environment); then ``genscope train MODEL
    --from-traces DIR`` analyses and stores the folder."""
    from genscope.cli import OneLineParser

    parser = OneLineParser(prog="genscope.commands.train")
    add_parsers(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    try:
        args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
        if not args.trace_dir:
            raise UserError("under torchrun give --trace-dir DIR (a folder every node can write)")
        job, _ = job_from_args(args)
        job["world_size"] = int(os.environ.get("WORLD_SIZE", job["world_size"]))
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
    except UserError as exc:
        print(f"genscope: error: {exc}", file=sys.stderr)
        return 2
    rank_worker(job)
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_main())
