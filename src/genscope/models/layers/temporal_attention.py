"""One spatial or temporal attention layer of the ModelScope UNet3D (paper Section VI), as an ``nn.Module``.

The benchmark layer of the frames sweep (:mod:`genscope.studies.temporal_sweep`): a diffusers ``Attention``
routed through genscope's attention entry point, between the layout changes of diffusers'
``Transformer2DModel`` (spatial: ``[B*F, C, H, W] -> [B*F, H*W, C]``) or ``TransformerTemporalModel``
(temporal: ``[B*F, C, H, W] -> [B*H*W, F, C]``), plus their residual add.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from genscope.errors import UserError
from genscope.models.layers.attention import install_attention, use_backend

# ModelScope text-to-video UNet3D, first level (ali-vilab/text-to-video-ms-1.7b unet/config.json:
# block_out_channels[0] = 320, attention_head_dim = 64). diffusers' UNet3D passes attention_head_dim as the
# *number of heads* argument; its blocks build Transformer2DModel / TransformerTemporalModel with
# (in_channels // 64 = 5 heads, 64 channels per head) - checked on the built paper UNet (5 heads, to_q 320x320).
MODELSCOPE_CHANNELS = 320
MODELSCOPE_HEADS = 5
VAE_FACTOR = 8  # KL-f8 VAE of ModelScope / Stable Diffusion: latent side = image side / 8
LAYERS = ("spatial", "temporal")
VARIANTS = ("standard", "strided")


@contextlib.contextmanager
def null_section(name: str):
    yield


class VideoAttentionLayer(nn.Module):
    """One spatial or temporal attention layer of the ModelScope UNet3D, on the UNet's [B*F, C, H, W] layout.

    A diffusers ``Attention`` (to_q/to_k/to_v without bias, to_out with bias, as ``BasicTransformerBlock``
    builds it) between the layout changes of ``Transformer2DModel`` (spatial) or ``TransformerTemporalModel``
    (temporal), plus their residual add; the GroupNorm and proj_in/proj_out of those models are left out (the
    same for both kinds). ``variant="strided"`` (temporal only) runs
    :func:`genscope.passes.temporal.frame_strided_attention` on the same weights.
    """

    def __init__(self, kind: str, channels: int = MODELSCOPE_CHANNELS, heads: int = MODELSCOPE_HEADS):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        if kind not in LAYERS:
            raise UserError(f"unknown layer kind {kind!r}; accepted: {', '.join(LAYERS)}")
        self.kind = kind
        self.attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False,
                              out_bias=True)
        self.sites = install_attention(self.attn, prefix=f"layer.{kind}.attn",
                                       kind_fn=lambda path, m: "temporal" if kind == "temporal" else "self")
        self._cache: dict = {}

    def forward(self, x: torch.Tensor, frames: int, variant: str = "standard", timer=None
                ) -> torch.Tensor:
        # x: [B*F, C, H, W]
        bf, c, h, w = x.shape
        b = bf // frames
        section = timer.section if timer is not None else null_section  # timer: anything with .section(name)
        if self.kind == "spatial":
            with section("layout"):
                tokens = x.permute(0, 2, 3, 1).reshape(bf, h * w, c)  # [B*F, H*W, C] (Transformer2DModel)
            y = self.attn(tokens)
            with section("layout"):
                y = y.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()  # [B*F, C, H, W]
            return y + x
        if variant == "strided":
            tokens = x.view(bf, c, h * w).transpose(1, 2)  # [B*F, H*W, C]: a view, no copy
            # the pass's kernel, imported here: models come before passes, and only this variant needs it
            from genscope.passes.temporal import frame_strided_attention

            y = frame_strided_attention(self.attn, tokens, frames, site=self.sites[0], cache=self._cache)
            return torch.add(x, y.transpose(1, 2).view(bf, c, h, w))  # the add writes channel-first
        with section("layout"):
            # TransformerTemporalModel: [B*F, C, H, W] -> [B, F, C, H, W] -> [B, H, W, F, C] -> [B*H*W, F, C]
            tokens = x.reshape(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c)
        y = self.attn(tokens)  # [B*H*W, F, C]
        with section("layout"):
            y = y.reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).contiguous().reshape(bf, c, h, w)
        return y + x


def probe_main(argv: list[str]) -> int:
    """``python -m genscope.models.layers.temporal_attention probe LAYER VARIANT BACKEND SIZE FRAMES C HEADS B DTYPE``:
    one layer call on CUDA, the process Nsight Compute measures."""
    from genscope.models.runtime import parse_dtype

    layer, variant, backend, size, frames, channels, heads, batch, dtype = argv
    device = torch.device("cuda")
    dt = parse_dtype(dtype)
    side = int(size) // VAE_FACTOR
    torch.manual_seed(0)
    module = VideoAttentionLayer(layer, int(channels), int(heads)).to(device=device, dtype=dt).eval()
    x = torch.randn(int(batch) * int(frames), int(channels), side, side, device=device, dtype=dt)
    with torch.inference_mode(), use_backend(backend):
        module(x, int(frames), variant)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "probe":
    sys.exit(probe_main(sys.argv[2:]))
