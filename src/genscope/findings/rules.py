"""The findings of the two papers, as data: one :class:`FindingRule` per claim, in :data:`FINDINGS`.

Each rule names the claim, the paper's number and where it is printed (figure / table / section of
``papers/genai-beyond-llms-v2.txt`` - "Golden et al." - or ``papers/speed-is-all-you-need.txt`` - "Chen et
al."), the stored study and table it reads, the measurement (a name in
:data:`genscope.findings.measures.MEASURES` plus its parameters) and the :class:`Thresholds` that turn the
measured number into a verdict. Changing what counts as "reproduced" is an edit of this file only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT_REPRODUCED = "not reproduced on this device"
UNSTABLE = "unstable"
NOT_MEASURED = "not measured"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, UNSTABLE, NOT_MEASURED)

INF = math.inf


def _bound(x: float) -> str:
    return "inf" if x == INF else "-inf" if x == -INF else f"{x:g}"


@dataclass(frozen=True)
class Thresholds:
    """Closed intervals on the measured value: inside ``reproduced`` -> reproduced, else inside ``partly`` ->
    partly, else not reproduced (on this device)."""

    reproduced: tuple[float, float]
    partly: tuple[float, float] = (INF, -INF)  # empty: no "partly" outcome

    def verdict(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return NOT_MEASURED
        lo, hi = self.reproduced
        if lo <= value <= hi:
            return REPRODUCED
        lo, hi = self.partly
        if lo <= value <= hi:
            return PARTLY
        return NOT_REPRODUCED

    def text(self) -> str:
        parts = [f"reproduced if {_bound(self.reproduced[0])} <= value <= {_bound(self.reproduced[1])}"]
        if self.partly[0] <= self.partly[1]:
            parts.append(f"partly if {_bound(self.partly[0])} <= value <= {_bound(self.partly[1])}")
        return "; ".join(parts) + "; otherwise not reproduced"


def within(paper: float, rel: float, partly: tuple[float, float] = (INF, -INF)) -> Thresholds:
    """Reproduced within +-``rel`` (relative) of the paper's value."""
    return Thresholds((paper * (1 - rel), paper * (1 + rel)), partly)


@dataclass(frozen=True)
class FindingRule:
    key: str  # stable identifier (tests, captions)
    claim: str
    source: str  # paper, figure/table/section
    paper_value: str  # the paper's number as printed
    study: str  # stored study read
    table: str  # stored table read
    measure: str  # name in genscope.findings.measures.MEASURES
    thresholds: Thresholds
    value_meaning: str  # what the measured value is
    params: dict[str, Any] = field(default_factory=dict)

    def rule_text(self) -> str:
        return f"value = {self.value_meaning}; {self.thresholds.text()}"


GOLDEN = "Golden et al. v2"
CHEN = "Chen et al. 2023"
DIFFUSION_TTI = ("imagen", "stable-diffusion", "prod-image")  # Section III: the diffusion TTI workloads
TRANSFORMER_TTI = ("muse", "parti")
AUTOREGRESSIVE = ("llama", "parti")  # Table III: decode-like
DIFFUSION_ALL = ("imagen", "stable-diffusion", "prod-image", "make-a-video")
# The paper's Figure 7 has no "Other" class (GPU kernels only); genscope's Other is mostly CPU framework time.
NO_OTHER = "without Other (framework time, which the paper's GPU kernel breakdown has no class for)"

# Table II of Golden et al. ("End-to-end speedup of Flash Attention as compared to Baseline Attention", A100).
PAPER_TABLE_II: dict[str, float] = {
    "llama": 1.52, "imagen": 1.22, "stable-diffusion": 1.67, "muse": 1.11, "parti": 1.17, "prod-image": 1.04,
    "make-a-video": 1.06, "phenaki": 1.15,
}
TABLE_II_TOLERANCE = 0.15  # within 15% of the paper's speedup; "partly": flash still faster (speedup >= 1)

_TABLE_II_RULES = tuple(
    FindingRule(f"table2-{w}", f"flash attention's end-to-end speedup, {w}", f"{GOLDEN}, Table II",
                f"{s:.2f}x", "breakdown", "speedup", "column", within(s, TABLE_II_TOLERANCE, (1.0, INF)),
                "measured e2e_speedup (baseline_ms / flash_ms)", {"workloads": (w,), "column": "e2e_speedup",
                                                                  "fmt": "{:.2f}x"})
    for w, s in PAPER_TABLE_II.items())

FINDINGS: tuple[FindingRule, ...] = (
    FindingRule(
        "conv-largest-after-flash", "after flash attention, convolution is the largest operator class of "
        "diffusion TTI", f"{GOLDEN}, Fig. 7, Sec. IV-A", "Convolution largest with flash", "breakdown",
        "class_total", "largest_class", Thresholds((1.0, 1.0), (0.5, 1.0)),
        "fraction of diffusion TTI workloads whose largest class with flash is Convolution (Other excluded)",
        {"workloads": DIFFUSION_TTI, "op_class": "Convolution", "attention": "flash"}),
    FindingRule(
        "attention-share-flash-diffusion", "attention's share of time after flash, diffusion TTI",
        f"{GOLDEN}, Fig. 7, Sec. IV-A", "13-25%", "breakdown", "class_total", "class_share",
        Thresholds((0.13, 0.25), (0.05, 0.35)), f"mean share of Attention in the flash total {NO_OTHER}",
        {"workloads": DIFFUSION_TTI, "classes": ("Attention",), "attention": "flash", "exclude": ("Other",)}),
    FindingRule(
        "attention-share-flash-transformer", "attention's share of time after flash, LLaMA and transformer TTI",
        f"{GOLDEN}, Fig. 7, Sec. IV-A", "37-45%", "breakdown", "class_total", "class_share",
        Thresholds((0.37, 0.45), (0.25, 0.60)), f"mean share of Attention in the flash total {NO_OTHER}",
        {"workloads": ("llama", *TRANSFORMER_TTI), "classes": ("Attention",), "attention": "flash",
         "exclude": ("Other",)}),
    FindingRule(
        "linear-attention-transformer", "LLaMA and transformer TTI consist mainly of Attention and Linear",
        f"{GOLDEN}, Fig. 7, Sec. IV-A", "mainly Attention + Linear (> 50%)", "breakdown", "class_total",
        "class_share", Thresholds((0.5, 1.0), (0.3, 0.5)),
        f"mean share of Attention + Linear in the baseline total {NO_OTHER}",
        {"workloads": ("llama", *TRANSFORMER_TTI), "classes": ("Attention", "Linear"), "attention": "baseline",
         "exclude": ("Other",)}),
    FindingRule(
        "conv-share-baseline-diffusion", "convolution's share of baseline time, diffusion models",
        f"{GOLDEN}, Fig. 7, Sec. IV-A", "up to 36%", "breakdown", "class_total", "class_share",
        Thresholds((0.15, 0.36), (0.05, 0.5)), f"mean share of Convolution in the baseline total {NO_OTHER}",
        {"workloads": DIFFUSION_ALL, "classes": ("Convolution",), "attention": "baseline", "exclude": ("Other",)}),
    FindingRule(
        "groupnorm-share-diffusion", "GroupNorm's share of baseline time, diffusion models",
        f"{GOLDEN}, Fig. 7, Sec. IV-A", "4-11%", "breakdown", "class_total", "class_share",
        Thresholds((0.04, 0.11), (0.01, 0.2)), f"mean share of GroupNorm in the baseline total {NO_OTHER}",
        {"workloads": DIFFUSION_ALL, "classes": ("GroupNorm",), "attention": "baseline", "exclude": ("Other",)}),
    FindingRule(
        "attention-share-baseline-suite", "attention's share of baseline time, averaged over the suite",
        f"{GOLDEN}, Fig. 7, Sec. IV-A", "41.3%", "breakdown", "class_total", "class_share",
        within(0.413, 0.25, (0.15, 0.7)), f"mean share of Attention in the baseline total {NO_OTHER}",
        {"workloads": tuple(PAPER_TABLE_II), "classes": ("Attention",), "attention": "baseline",
         "exclude": ("Other",)}),
    *_TABLE_II_RULES,
    FindingRule(
        "attention-speedup-diffusion-vs-transformer", "flash's attention-module speedup is larger for diffusion "
        "than for transformer TTI", f"{GOLDEN}, Sec. IV-B (Fig. 7 red bars)", "1.1-2.5x greater", "breakdown",
        "speedup", "group_ratio", Thresholds((1.1, 2.5), (1.0, INF)),
        "mean attention_speedup of diffusion TTI / mean of transformer TTI",
        {"numerator": DIFFUSION_TTI, "denominator": TRANSFORMER_TTI, "column": "attention_speedup"}),
    FindingRule(
        "prefill-decode", "diffusion attention is prefill-like (long queries), autoregressive is decode-like, "
        "and flash helps the former more", f"{GOLDEN}, Table III, Sec. IV-B",
        "diffusion ~ prefill, autoregressive ~ decode", "prefill-decode", "workloads", "prefill_decode",
        Thresholds((3, 3), (2, 2)),
        "conditions met of 3: diffusion median query length > 1; autoregressive decode-call share > 0.5; mean "
        "attention speedup diffusion > autoregressive",
        {"diffusion": DIFFUSION_ALL, "autoregressive": AUTOREGRESSIVE}),
    FindingRule(
        "seqlen-step", "sequence length changes 4x between adjacent UNet levels", f"{GOLDEN}, Sec. I and V-A, "
        "Fig. 8", "up to 4x", "seqlen", "summary", "seqlen_step", Thresholds((3.5, 4.5), (2.0, 8.0)),
        "largest ratio between consecutive attention calls' sequence lengths (Stable Diffusion, paper preset)",
        {"workload": "stable-diffusion", "image_size": 512}),
    FindingRule(
        "seqlen-u-shape", "diffusion sequence length is U-shaped over one denoising step", f"{GOLDEN}, Fig. 8, "
        "Sec. V-A", "U-shaped", "seqlen", "period", "u_shape", Thresholds((1, 1)),
        "1 if the self-attention sequence lengths fall to one minimum and rise again, else 0",
        {"workload": "stable-diffusion", "image_size": 512}),
    FindingRule(
        "memory-l4", "similarity-matrix memory grows as O(L^4) in the latent side", f"{GOLDEN}, Sec. V-A",
        "O(L^4)", "memory-model", "fit", "memory_exponent", Thresholds((3.8, 4.2), (3.0, 5.0)),
        "log-log slope of similarity bytes vs latent side between the two largest sides",
        {"workload": "stable-diffusion"}),
    FindingRule(
        "memory-d2n", "per-level sequence length is H_L W_L / d^2n (v2), not d^n (v1)", f"{GOLDEN}, Sec. V-A "
        "(v2 formula; v1 wrote d^n)", "d^2n", "memory-model", "levels", "d2n_levels",
        Thresholds((1.0, 1.0), (0.5, 1.0)),
        "fraction of traced UNet levels (n >= 1) whose query length equals v2's H_L W_L / d^2n",
        {"workload": "stable-diffusion"}),
    FindingRule(
        "scaling-conv-vs-attention", "before flash attention scales faster with image size than convolution; "
        "after flash convolution scales faster", f"{GOLDEN}, Fig. 10, Sec. V-B",
        "baseline: attention steeper; flash: convolution steeper", "image-scaling", "slopes", "scaling_slopes",
        Thresholds((2, 2), (1, 1)),
        "halves met of 2: baseline attention slope > convolution slope; flash convolution slope > attention "
        "slope (log-log slopes of time vs image size)", {}),
    FindingRule(
        "temporal-time", "temporal attention takes ~2x the time of spatial attention", f"{GOLDEN}, Fig. 12a, "
        "Sec. VI-A", "2x", "temporal", "summary", "temporal_summary", within(2.0, 0.25, (1.0, INF)),
        "temporal / spatial attention time (Make-A-Video, standard layers)",
        {"workload": "make-a-video", "column": "time_ratio_temporal_to_spatial", "fmt": "{:.2f}x"}),
    FindingRule(
        "temporal-flops", "temporal attention does ~9x fewer FLOPs than spatial", f"{GOLDEN}, Fig. 12b, "
        "Sec. VI-A", "9x fewer", "temporal", "summary", "temporal_summary", within(9.0, 0.25, (1.0, INF)),
        "spatial / temporal attention matmul FLOPs (Make-A-Video)",
        {"workload": "make-a-video", "column": "flops_ratio_spatial_to_temporal", "fmt": "{:.1f}x"}),
    FindingRule(
        "temporal-quadratic", "temporal attention FLOPs grow quadratically in frames, spatial linearly",
        f"{GOLDEN}, Fig. 14, Sec. VI-B", "y = A F^2 (temporal), linear (spatial)", "temporal", "fits",
        "frame_exponents", Thresholds((0.0, 0.1), (0.0, 0.5)),
        "largest |k - expected| over fitted FLOP exponents k (temporal 2, spatial 1)", {}),
    FindingRule(
        "temporal-crossover", "temporal attention FLOPs overtake spatial as frames grow", f"{GOLDEN}, Fig. 14, "
        "Sec. VI-B", "crossover, later at higher resolution", "temporal", "crossover", "frame_crossover",
        Thresholds((1.0, 1.0), (0.01, 1.0)),
        "fraction of image sizes whose FLOP crossover lies within the swept frames", {}),
    FindingRule(
        "ai-gap", "diffusion TTI arithmetic intensity is up to 100x an LLM's", f"{GOLDEN}, Sec. I-II, Fig. 5",
        "up to 100x", "roofline", "workloads", "intensity_ratio", Thresholds((10 ** 1.5, 10 ** 2.5), (1.0, INF)),
        "max FLOPs-per-parameter-byte of diffusion TTI / LLaMA's (within half a decade of 100 reproduces)",
        {"numerator": DIFFUSION_TTI, "denominator": ("llama",), "reduce": "max"}),
    FindingRule(
        "ai-diffusion-vs-transformer", "diffusion TTI has higher arithmetic intensity than transformer TTI",
        f"{GOLDEN}, Fig. 5, Sec. II-C", "diffusion higher", "roofline", "workloads", "intensity_ratio",
        Thresholds((1.0, INF)), "min intensity of diffusion TTI / max of transformer TTI",
        {"numerator": DIFFUSION_TTI, "denominator": TRANSFORMER_TTI, "reduce": "min/max"}),
    FindingRule(
        "table1-classes", "compute / memory / latency classes of Table I", f"{GOLDEN}, Table I",
        "12 classes (4 models x 3 axes)", "taxonomy", "paper", "class_agreement", Thresholds((0.9, 1.0), (0.5, 0.9)),
        "fraction of the paper's classes genscope derives the same (not-measured cells left out)", {}),
    FindingRule(
        "chen-latency", "the optimizations together cut one UNet step's latency", f"{CHEN}, Table 1",
        "-52.2% (S23 Ultra), -32.9% (iPhone 14 Pro Max)", "optimization", "ablation", "ablation_change",
        Thresholds((0.279, 0.572), (0.0, 1.0)),
        "1 - time(+ Winograd) / time(baseline) (paper's span +-5 points reproduces)",
        {"row": "+ Winograd", "reference": "baseline", "column": "time_ms", "mode": "reduction"}),
    FindingRule(
        "chen-tensor-memory", "fused GroupNorm/GELU lowers intermediate tensor memory", f"{CHEN}, Table 1",
        "105 -> 85 MB (-19%)", "optimization", "ablation", "ablation_change", Thresholds((0.1, 1.0), (1e-9, 0.1)),
        "1 - peak_tensor_mb(+ fused GroupNorm/GELU) / peak_tensor_mb(baseline)",
        {"row": "+ fused GroupNorm/GELU", "reference": "baseline", "column": "peak_tensor_mb",
         "mode": "reduction"}),
    FindingRule(
        "chen-winograd-weights", "Winograd grows weight memory", f"{CHEN}, Table 1",
        "1639 -> 2093 MB (+27.7%)", "optimization", "ablation", "ablation_change",
        Thresholds((0.138, 0.554), (1e-9, INF)),
        "weight_mb(+ Winograd) / weight_mb(+ flash attention) - 1 (within 2x of +27.7% reproduces)",
        {"row": "+ Winograd", "reference": "+ flash attention", "column": "weight_mb", "mode": "growth"}),
    FindingRule(
        "chen-winograd-tiles", "Winograd tile sizes trade FLOPs for tensor and weight memory as tabulated",
        f"{CHEN}, Table 2", "4x4: 4x fewer FLOPs, 2.25x tensor, 4x weight", "optimization", "winograd",
        "winograd_tiles", Thresholds((0.0, 0.10), (0.0, 0.5)),
        "largest relative deviation of the measured weight multiplier (transformed / original weight bytes) "
        "from the paper's, over the tiles", {}),
)

BY_KEY: dict[str, FindingRule] = {r.key: r for r in FINDINGS}
assert len(BY_KEY) == len(FINDINGS), "finding keys must be unique"
