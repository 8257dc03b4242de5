"""Analytical model of one spatial or temporal attention layer of a video UNet (paper Section VI; the traffic
model is stated in :mod:`genscope.studies.temporal`): FLOPs (2 x MACs; softmax apart) and bytes per layer call,
arithmetic intensities, the FLOP-model crossover F = H*W, and the layer geometry checks.

Why by hand: closed-form arithmetic over a layer's shape; torch's FLOP counter counts a run, it does not model.
"""

from __future__ import annotations

from dataclasses import dataclass

from genscope.errors import UserError
from genscope.models.layers.temporal_attention import VAE_FACTOR

MAX_IMAGE_SIZE = 2048
SOFTMAX_FLOPS_PER_ELEMENT = 5  # max, subtract, exp, sum, divide (as genscope.instrument.flops)


@dataclass(frozen=True)
class LayerShape:
    """One attention layer of a video UNet: ``kind`` spatial or temporal, on latents [B*F, C, H, W]."""

    kind: str
    batch: int  # B (videos)
    frames: int  # F
    height: int  # latent H
    width: int  # latent W
    channels: int  # C = heads * d
    heads: int

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def tokens(self) -> int:
        return self.batch * self.frames * self.height * self.width  # T

    @property
    def attn_batch(self) -> int:
        """N: spatial B*F, temporal B*H*W."""
        return self.batch * self.frames if self.kind == "spatial" else self.batch * self.height * self.width

    @property
    def seq_len(self) -> int:
        """L: spatial H*W, temporal F."""
        return self.height * self.width if self.kind == "spatial" else self.frames

    @property
    def layout(self) -> str:
        return "[B*F, heads, H*W, d]" if self.kind == "spatial" else "[B*H*W, heads, F, d]"

    @property
    def qkv_shape(self) -> tuple[int, int, int, int]:
        return (self.attn_batch, self.heads, self.seq_len, self.head_dim)


def layer_model(shape: LayerShape, backend: str = "flash", variant: str = "standard",
                dtype_bytes: int = 4) -> dict[str, float]:
    """FLOPs (2 x MACs of the matmuls, as torch's counter counts them; softmax apart) and bytes (the traffic
    model of the module docstring) of one layer call, with the arithmetic intensities."""
    n, h, seq, d = shape.qkv_shape
    c, t = shape.channels, shape.tokens
    a = t * c  # elements of one activation
    m = n * h * seq * seq  # elements of one similarity matrix
    core_flops = 4 * n * h * seq * seq * d
    projection_flops = 4 * 2 * t * c * c  # to_q, to_k, to_v, to_out: [T, C] x [C, C]
    strided = variant == "strided" and shape.kind == "temporal"
    layout_elems = 0 if strided else 4 * a
    projection_elems = (6 * a + 4 * c * c + c) if strided else (8 * a + 4 * c * c + c)
    if backend == "baseline":
        core_elems = 10 * a + 4 * m if h > 1 else 4 * a + 4 * m
        head_elems = 2 * a
    else:
        core_elems = 4 * a
        head_elems = 2 * a if strided else 0
    residual_elems = 3 * a
    total_elems = layout_elems + projection_elems + core_elems + head_elems + residual_elems
    s = dtype_bytes
    out = {
        "core_flops": core_flops, "core_macs": core_flops // 2,
        "softmax_flops": SOFTMAX_FLOPS_PER_ELEMENT * m,
        "projection_flops": projection_flops, "layer_flops": core_flops + projection_flops,
        "layer_macs": (core_flops + projection_flops) // 2,
        "layout_bytes": layout_elems * s, "projection_bytes": projection_elems * s, "core_bytes": core_elems * s,
        "head_bytes": head_elems * s, "residual_bytes": residual_elems * s, "layer_bytes": total_elems * s,
        "similarity_bytes": m * s,
    }
    out["core_ai"] = out["core_flops"] / out["core_bytes"]
    out["layer_ai"] = out["layer_flops"] / out["layer_bytes"]
    return out


def predicted_crossover(height: int, width: int) -> int:
    """Frames at which temporal attention's matmul FLOPs equal spatial's: 4*B*H*W*F^2*C = 4*B*F*(H*W)^2*C."""
    return height * width


def check_image_size(size: int, *, factor: int = VAE_FACTOR) -> int:
    """Latent side of an image size the layer can take: a multiple of the VAE factor; returns the latent side."""
    if size < factor or size > MAX_IMAGE_SIZE or size % factor:
        raise UserError(f"image size {size} cannot be taken by the layer: accepted multiples of {factor} "
                        f"from {factor} to {MAX_IMAGE_SIZE} (latent side = image size / {factor})")
    return size // factor


def check_layer_config(channels: int, heads: int, batch: int) -> None:
    if channels < 1 or heads < 1 or channels % heads:
        raise UserError(f"channels ({channels}) must be a positive multiple of heads ({heads})")
    if not 1 <= batch <= 64:
        raise UserError(f"batch {batch} is out of range; accepted 1 to 64")
