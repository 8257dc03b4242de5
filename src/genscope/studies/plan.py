"""The characterization plan: which studies ``genscope characterize`` runs, with which settings, as data.

A plan is a list of :class:`PlanTask` - a study name (a key of :data:`genscope.studies.registry.STUDIES`), the
workload its run is stored under, and the study's settings as a plain dict - built by :func:`build_plan`. An
executor (:mod:`genscope.commands.executors`) runs the tasks; only the driver process stores them.

Plans (``studies``):

* ``breakdown``: the operator breakdown of every workload (baseline vs flash attention);
* ``analytical``: paper-scale FLOPs, sequence lengths, the attention-memory model, Table I and the roofline on
  the meta device - seconds per workload, no weights;
* ``all``: both, plus the measured studies (image scaling, prefill vs decode, the temporal split and frames
  sweep, the optimization ablation, a short FSDP training run on 2 ranks and its paper-scale model) and the
  diffusion transformers after the paper (their FLOPs at paper scale, a DiT's sequence length, factorized vs
  full 3-D attention, their breakdown at ``small``).

A task of a study in :data:`LAUNCHED` (``training``) starts processes before its study runs - the ranks, through
torch's launcher - so the executor hands it to the command side (:mod:`genscope.commands.executors`); the study
itself stays pure (it reads the ranks' traces).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from genscope.errors import choice_error

PLANS = ("all", "breakdown", "analytical")

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
# One token is one period of an autoregressive workload, and a shape-only trace still runs every decode step:
# their seqlen trace runs at the plan's preset, at most ``small`` (a paper-scale decode loop - Parti's 1024
# tokens of a 20B model - takes many minutes even on the meta device; the pattern of Figure 8, a key length
# growing by one per token, is the same at any scale).
AUTOREGRESSIVE = ("llama", "parti")
AUTOREGRESSIVE_SEQLEN_PRESETS = ("tiny", "small")
SEQLEN_SIZES = (64, 128, 256, 512, 1024)  # Figure 9's image sizes
MEMORY_MODEL_WORKLOADS = ("stable-diffusion", "imagen")
ROOFLINE_DTYPE = "float16"  # the paper's precision (A100 fp16 tensor cores, Figure 5)
# The diffusion transformers since the paper (issue 18) and their reduced settings at ``small``: two denoising
# steps (per-step costs are unchanged), the presets' own sizes.
AFTER_PAPER_OVERRIDES: dict[str, dict] = {"flux": {"steps": 2}, "sd3": {"steps": 2}, "wan": {"steps": 2},
                                          "cogvideox": {"steps": 2}, "hunyuan-video": {"steps": 2}}
# The measured FSDP run of ``all`` (2 gloo ranks, small, a few steps) and the studies that launch processes.
TRAINING_RUN = {"model": "stable-diffusion", "nproc": 2, "steps": 2, "warmup": 1, "threads": 1}
LAUNCHED = ("training",)


@dataclass(frozen=True)
class PlanTask:
    """One study run: stored as ``study`` / ``workload`` / ``preset`` / ``settings`` / ``device`` / ``dtype``."""

    study: str
    workload: str
    settings: dict[str, Any] = field(hash=False)
    preset: str
    device: str
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.study}: {self.workload}"


def task(study: str, workload: str | None = None, **settings: Any) -> PlanTask:
    """A task whose settings are validated now (``Settings(**settings)``), with the record's fields from them."""
    from dataclasses import fields

    from genscope.studies import registry

    if workload is not None and "workload" in {f.name for f in fields(registry.get(study).Settings)}:
        settings.setdefault("workload", workload)
    s = registry.make_settings(study, settings)
    preset, device, dtype = registry.record_fields(study, s)
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}
    return PlanTask(study, workload or getattr(s, "record_workload", None) or getattr(s, "workload", "suite"),
                    values, preset, device, dtype)


def analytical_tasks(workloads: list[str], preset: str) -> list[PlanTask]:
    # counted once, in the paper's float16 (the roofline's bytes depend on the dtype; the FLOPs do not, so
    # Table I and the FLOPs section reuse these counts)
    tasks = [task("flops", workload=w, preset="paper", dtype=ROOFLINE_DTYPE) for w in workloads]
    decode_preset = preset if preset in AUTOREGRESSIVE_SEQLEN_PRESETS else "small"
    tasks += [task("seqlen", workload=w, preset=decode_preset if w in AUTOREGRESSIVE else "paper") for w in workloads]
    if "stable-diffusion" in workloads:
        tasks.append(task("seqlen", workload="stable-diffusion", preset="paper", image_sizes=SEQLEN_SIZES))
    tasks += [task("memory-model", workload=w, preset="paper") for w in MEMORY_MODEL_WORKLOADS if w in workloads]
    tasks.append(task("taxonomy", "suite", workloads=workloads))
    tasks.append(task("roofline", "suite", workloads=workloads, dtype=ROOFLINE_DTYPE))
    return tasks


def measured_tasks(workloads: list[str], preset: str) -> list[PlanTask]:
    tasks = []
    if "stable-diffusion" in workloads:
        tasks.append(task("image-scaling", "stable-diffusion", preset=preset, image_sizes=(64, 128, 256), steps=1,
                          repeat=1, phases=("denoise",)))
    tasks.append(task("prefill-decode", ",".join(workloads), workloads=workloads, preset=preset, repeat=2,
                      max_shapes=4))
    if "make-a-video" in workloads:
        tasks.append(task("temporal", part="split", workload="make-a-video", preset=preset, repeat=1, steps=1))
        tasks.append(task("temporal", part="sweep", frames=(2, 4, 8, 16, 32, 64), image_sizes=(32, 64), repeat=1))
    if "stable-diffusion" in workloads:
        tasks.append(task("optimization", "stable-diffusion", preset=preset, ablation=True, winograd_table=True,
                          repeat=2))
    return tasks


def after_paper_analytical(names: list[str], preset: str, measure: bool) -> list[PlanTask]:
    """Issue 18: FLOPs of the DiTs at paper scale (meta), Wan's constant sequence length, and factorized vs full
    3-D attention (timed at ``small`` too when ``measure``)."""
    tasks = [task("flops", workload=w, preset="paper") for w in names]
    if "wan" in names:
        tasks.append(task("seqlen", workload="wan", preset="paper"))
        tasks.append(task("dit-temporal", "wan", preset="paper", image_sizes=(240, 480, 720), measure=measure,
                          time_preset=preset if preset in ("tiny", "small") else "small"))
    return tasks


def after_paper_breakdowns(names: list[str], preset: str, repeat: int, mode: str, device: str, dtype: str
                           ) -> list[PlanTask]:
    """The DiTs' operator breakdown at the plan's preset (``small``: two denoising steps)."""
    return [task("breakdown", workload=w, preset=preset, repeat=repeat, mode=mode, device=device, dtype=dtype,
                 **(AFTER_PAPER_OVERRIDES[w] if preset == "small" else {})) for w in names]


def training_tasks(preset: str) -> list[PlanTask]:
    """The paper's Figure 6: a short measured FSDP run here (2 gloo ranks) and the paper-scale model."""
    run = TRAINING_RUN | {"preset": preset if preset in ("tiny", "small") else "small"}
    measured = PlanTask("training", run["model"], dict(run), run["preset"], "cpu", "float32")
    return [measured, task("training-model", "suite")]


def breakdown_tasks(workloads: list[str], preset: str, repeat: int, mode: str, device: str, dtype: str
                    ) -> list[PlanTask]:
    return [task("breakdown", workload=w, preset=preset, repeat=repeat, mode=mode, device=device, dtype=dtype,
                 **(CHARACTERIZE_OVERRIDES.get(w, {}) if preset == "small" else {})) for w in workloads]


def build_plan(workloads: list[str], *, studies: str = "all", preset: str = "small", repeat: int = 2,
               mode: str = "trace", device: str = "cpu", dtype: str = "float32") -> list[PlanTask]:
    """The plan ``studies`` (one of :data:`PLANS`) over ``workloads``; every task's settings validated."""
    if studies not in PLANS:
        raise choice_error("plan", studies, PLANS)
    after_paper = [w for w in workloads if w in AFTER_PAPER_OVERRIDES]
    workloads = [w for w in workloads if w not in AFTER_PAPER_OVERRIDES]
    tasks: list[PlanTask] = []
    if studies in ("all", "breakdown"):
        tasks += breakdown_tasks(workloads, preset, repeat, mode, device, dtype)
    if studies in ("all", "analytical"):
        tasks += analytical_tasks(workloads, preset)
    if studies == "all":
        tasks += measured_tasks(workloads, preset)
        if device == "cpu" and "stable-diffusion" in workloads:
            tasks += training_tasks(preset)
    if studies in ("all", "breakdown") and preset != "paper":
        # at paper scale the DiTs are characterized analytically: a 14B video DiT's baseline attention over
        # 32,760 tokens would materialize 172 GB per call (see the dit-temporal study)
        tasks += after_paper_breakdowns(after_paper, preset, repeat, mode, device, dtype)
    if studies in ("all", "analytical"):
        tasks += after_paper_analytical(after_paper, preset, measure=studies == "all")
    return tasks
