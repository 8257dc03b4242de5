"""The workload contract: settings in, a built pipeline, a seeded run with named phases, outputs out.

A :class:`Workload` (one per model of the suite) knows its presets, validates a :class:`RunSettings`
against a config into a :class:`Request` (one clear :class:`~genscope.errors.UserError` per bad value),
and builds a :class:`Pipeline` on a device in a dtype, with every attention module routed through the
entry point. ``Pipeline.generate(request)`` runs the inference loop inside named phases and returns a
:class:`Generation` (images, frames or tokens).
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from genscope.errors import UserError, choice_error
from genscope.models.base import Component, ModelConfig, PresetTable
from genscope.models.layers.attention import BACKENDS, AttentionSite, use_backend
from genscope.models.runtime import check_dtype_on_device, dtype_name, parse_device, parse_dtype

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
MAX_STEPS = 1000
MAX_FRAMES = 512
MAX_GUIDANCE = 100.0


@dataclass(frozen=True)
class RunSettings:
    """What a user asks for. ``None`` means "the preset's default"."""

    preset: str = "small"
    steps: int | None = None
    image_size: int | None = None
    frames: int | None = None
    guidance_scale: float | None = None
    decode_tokens: int | None = None  # autoregressive workloads: tokens to generate
    attention: str = "flash"
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = ""
    batch_size: int = 1
    weights: str | None = None


@dataclass(frozen=True)
class Request:
    """A validated run: every value resolved (preset defaults filled in) and within range."""

    workload: str
    preset: str
    steps: int
    image_size: int
    frames: int
    guidance_scale: float
    decode_tokens: int
    attention: str
    dtype: torch.dtype
    device: torch.device
    seed: int
    prompt: str
    negative_prompt: str
    batch_size: int
    weights: Path | None

    @property
    def use_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dtype"] = dtype_name(self.dtype)
        d["device"] = str(self.device)
        d["weights"] = str(self.weights) if self.weights else None
        return d


@dataclass
class Generation:
    """What a run produced. Exactly one of images / videos / tokens is set."""

    images: list[Any] = field(default_factory=list)  # PIL images
    videos: list[list[Any]] = field(default_factory=list)  # per sample, a list of PIL frames
    tokens: torch.Tensor | None = None  # [B, T] generated token ids (text or image tokens)
    # the numbers before conversion to files: images [B, 3, H, W] / videos [B, 3, F, H, W] in [-1, 1], or the
    # final logits of a token workload; what backend-equality tests compare
    raw: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Pipeline(abc.ABC):
    """A built workload: components on a device, and its inference loop."""

    def __init__(self, config: ModelConfig, components: list[Component], device: torch.device,
                 dtype: torch.dtype, sites: list[AttentionSite]):
        self.config = config
        self.components = components
        self.device = device
        self.dtype = dtype
        self.sites = sites

    def component(self, name: str) -> torch.nn.Module:
        for c in self.components:
            if c.name == name:
                return c.module
        raise KeyError(name)

    @abc.abstractmethod
    def generate(self, request: Request) -> Generation:
        """Run the full inference loop inside ``phase(...)`` ranges; seeded by ``request.seed``."""

    def __call__(self, request: Request) -> Generation:
        with torch.inference_mode(), use_backend(request.attention):
            return self.generate(request)


SHAPES_PIPELINES_KEPT = 16  # meta pipelines kept by Workload.shapes_pipeline (a few MB of Python objects each)
_SHAPES_PIPELINES: dict[tuple, Pipeline] = {}


class Workload(abc.ABC):
    """One model of the suite."""

    name: ClassVar[str]
    paper_model: ClassVar[str]  # the paper's model this stands for
    family: ClassVar[str]  # "diffusion (latent)", "diffusion (pixel)", "transformer (parallel decode)", ...
    modality: ClassVar[str]  # "image", "video" or "text"
    phases: ClassVar[tuple[str, ...]]
    presets: ClassVar[PresetTable]
    weights_subfolders: ClassVar[tuple[str, ...]] = ()  # for --weights DIR
    weights_note: ClassVar[str] = ""
    # a user option applies when the preset's config has its field (steps for a diffusion loop, decode_tokens for
    # an autoregressive one); extra_options: options a workload derives and validates itself (Parti's tokens)
    # (--frames is refused for non-video workloads by request() itself)
    OPTION_FIELDS: ClassVar[dict[str, str]] = {"--steps": "steps", "--guidance-scale": "guidance_scale",
                                               "--decode-tokens": "decode_tokens", "--image-size": "image_size"}
    extra_options: ClassVar[tuple[str, ...]] = ()

    def check_options_apply(self, settings: RunSettings) -> None:
        """A user option this workload does not use is an error, not silently ignored (UserError)."""
        from genscope.validate import refuse_inapplicable

        config = self.config(settings.preset)
        given = {opt: getattr(settings, field) for opt, field in self.OPTION_FIELDS.items()}
        applicable = [opt for opt, field in self.OPTION_FIELDS.items() if hasattr(config, field)]
        refuse_inapplicable(f"{self.name} ({self.family})", given, [*applicable, *self.extra_options])

    # ----- configuration -------------------------------------------------------------------------
    def config(self, preset: str) -> ModelConfig:
        return self.presets[preset]

    def request(self, settings: RunSettings) -> Request:
        """Validate ``settings`` against the preset; fill in defaults. Raises UserError."""
        config = self.config(settings.preset)
        if settings.attention not in BACKENDS:
            raise choice_error("attention backend", settings.attention, BACKENDS)
        dtype = parse_dtype(settings.dtype)
        device = parse_device(settings.device)
        if device.type == "meta":
            raise UserError("a run needs real tensors: --device meta is only for describe/flops; use cpu or cuda")
        check_dtype_on_device(dtype, device)
        steps = settings.steps if settings.steps is not None else getattr(config, "steps", 1)
        check_range("steps", steps, 1, MAX_STEPS)
        guidance = settings.guidance_scale if settings.guidance_scale is not None else getattr(
            config, "guidance_scale", 1.0)
        if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or not 0.0 <= guidance <= MAX_GUIDANCE:
            raise UserError(f"guidance scale {guidance} is out of range: accepted 0 to {MAX_GUIDANCE} "
                            "(1 or less turns classifier-free guidance off)")
        if settings.frames is not None and self.modality != "video":
            raise UserError(f"--frames applies to video workloads only ({self.name} makes {self.modality} output)")
        if settings.frames is not None:
            check_range("frames", settings.frames, 1, MAX_FRAMES)
        check_range("seed", settings.seed, 0, 2**63 - 1)
        check_range("batch size", settings.batch_size, 1, 64)
        weights = None
        if settings.weights is not None:
            from genscope.models.weights import check_weights_dir

            if not self.weights_subfolders:
                raise UserError(f"{self.name} has no open weights format; --weights is not supported for it")
            weights = check_weights_dir(settings.weights, list(self.weights_subfolders))
        request = Request(
            workload=self.name, preset=settings.preset, steps=int(steps),
            image_size=settings.image_size if settings.image_size is not None else getattr(config, "image_size", 0),
            frames=settings.frames if settings.frames is not None else getattr(config, "frames", 1),
            guidance_scale=float(guidance),
            decode_tokens=settings.decode_tokens if settings.decode_tokens is not None else getattr(
                config, "decode_tokens", 0),
            attention=settings.attention, dtype=dtype, device=device, seed=int(settings.seed),
            prompt=settings.prompt, negative_prompt=settings.negative_prompt,
            batch_size=int(settings.batch_size), weights=weights,
        )
        self.validate(config, request)
        return request

    def validate(self, config: ModelConfig, request: Request) -> None:
        """Workload-specific checks (image sizes the architecture takes, frames, token counts)."""
        from genscope.workloads.text import check_prompt

        check_prompt(request.prompt)
        check_prompt(request.negative_prompt)

    # ----- building ------------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, config: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              weights: Path | None = None) -> Pipeline:
        """Build every component (random weights, or ``weights``) and install the attention entry point."""

    def describe(self, preset: str) -> list[Component]:
        """Components and parameter counts, built on the meta device (no memory, no weights)."""
        return self.shapes_pipeline(self.config(preset)).components

    def shapes_pipeline(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> Pipeline:
        """The pipeline built on the meta device, for studies that only read it (count, trace, describe).

        Built once per (workload, config, dtype) in a process and shared: a meta pipeline holds no values, and
        the paper-scale analysis builds each workload for its FLOP count, sequence-length traces, memory model
        and Table I (a third of its time went to rebuilding). Do not change what it returns (apply a pass,
        move it): build your own with :meth:`build`.
        """
        key = (self.name, config, dtype)
        pipeline = _SHAPES_PIPELINES.pop(key, None)
        if pipeline is None:
            pipeline = self.build(config, device="meta", dtype=dtype)
        _SHAPES_PIPELINES[key] = pipeline  # the most recently used last
        while len(_SHAPES_PIPELINES) > SHAPES_PIPELINES_KEPT:
            _SHAPES_PIPELINES.pop(next(iter(_SHAPES_PIPELINES)))
        return pipeline

    def run(self, settings: RunSettings) -> tuple[Pipeline, Request, Generation]:
        request = self.request(settings)
        pipeline = self.build(self.config(request.preset), request.device, request.dtype, request.weights)
        return pipeline, request, pipeline(request)


def check_range(what: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"{what} {value!r} is out of range: accepted integers {lo} to {hi}")


def with_preset(settings: RunSettings, preset: str) -> RunSettings:
    return replace(settings, preset=preset)


# ----------------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------------
def to_pil(images: torch.Tensor) -> list[Any]:
    """images: [B, 3, H, W] in [-1, 1] -> PIL images (none for meta tensors: shapes only, no pixels)."""
    if images.device.type == "meta":
        return []
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def write_generation(generation: Generation, out_dir: Path, stem: str) -> list[Path]:
    """PNG per image, animated GIF per video, JSON for tokens. Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for i, image in enumerate(generation.images):
        path = out_dir / f"{stem}-{i}.png"
        image.save(path)
        files.append(path)
    for i, frames in enumerate(generation.videos):
        path = out_dir / f"{stem}-{i}.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)
        files.append(path)
    if generation.tokens is not None:
        path = out_dir / f"{stem}-tokens.json"
        path.write_text(json.dumps({"tokens": generation.tokens.tolist()}))
        files.append(path)
    return files
