"""Phenaki: transformer text-to-video (Villegas et al. 2022, arXiv:2210.02399; the paper's TTV model [23]).

Components: T5 text encoder -> bidirectional MaskGIT transformer over video tokens (parallel decoding, cosine
schedule, classifier-free guidance) -> C-ViViT decoder (tokens -> frames).

C-ViViT decoder (hand-written: no library has C-ViViT). Phenaki's video tokenizer compresses the first frame
with 8x8 spatial patches and every later pair of frames with 2x8x8 tubelets, so F = 1 + 2k frames of HxW
pixels become (1 + k) x (H/8) x (W/8) tokens. Its decoder mirrors the encoder (Phenaki, C-ViViT section): tokens ->
embeddings -> *temporal* transformer (causal in time: each position attends to itself and earlier token
frames; layout [B*h*w, heads, T, d]) -> *spatial* transformer (all h*w positions of one token frame;
layout [B*T, heads, h*w, d]) -> one linear projection without activation back to pixel patches (one
projection for the first frame's 8x8x3 patch, one for the 2x8x8x3 tubelets). Its attention is genscope's
``attention(...)`` with sites of kind ``temporal`` and ``self`` so that the tracers see it; the blocks
are pre-norm (LayerNorm -> attention -> residual, LayerNorm -> GELU MLP -> residual).
Note: the order is the paper's (temporal, then spatial); the issue text lists spatial first.

``paper`` preset, with provenance:

* video: 11 frames (1 + 10) at 128x128 -> (1 + 5) x 16 x 16 = 1,536 tokens; C-ViViT patches 8x8 (first
  frame) and 2x8x8; 4 spatial + 4 temporal layers, width 512, MLP 2048, 8 heads, 8,192 codes - Phenaki
  (experiments / appendix); the same values (and "11 frames at 8 fps as in the paper") are in the open
  reproduction obvious-research/phenaki-cvivit (``train_cvivit.py``: dim 512, codebook 8192, image 128,
  patch 8, temporal patch 2, spatial/temporal depth 4, heads 8, MLP 2048). Code vectors of 32 dimensions
  projected to 512 (factorized codes, as that reproduction): Phenaki's own code width is not restated here.
* transformer (:class:`~genscope.models.layers.maskgit.MaskGITTransformer`, bidirectional, cross-attention
  to T5): 24 layers, hidden 2048, MLP 8192, 16 heads - Phenaki's appendix as we read it (this offline
  machine could not re-open the table); with the C-ViViT decoder it builds 1.68 B against the published
  "1.8B parameters" (-6.7 %: the published total also holds the C-ViViT encoder, which text-to-video does
  not run, and genscope projects the 4096-wide T5 states to 2048 once instead of per layer).
* text encoder: T5-XXL encoder (google/t5-v1_1-xxl config, as Muse/Imagen) - 4.76 B ("4.6B" in Muse).
* decoding: 12 iterations, cosine schedule, guidance 4.0, temperature 2 -> 0: MaskGIT-style defaults chosen by
  genscope (Phenaki's sampling settings are not reproduced); text_len 128: genscope's choice.
* position tables cover up to 2x the default token grid (23 frames, 256x256) for sequence-length studies.

``small`` keeps the structure (11 frames at 128x128, 1,536 tokens) with narrow, shallow networks, a 1,024-code
codebook and 8 iterations (about half a minute on 2 cores); ``tiny`` runs in milliseconds (3 frames at 32x32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from genscope.models.base import ModelConfig, PresetTable
from genscope.models.layers.attention import attention
from genscope.models.muse import maskgit_spec, t5_encoder_spec
from genscope.models.spec import ModuleSpec


class CViViTAttention(nn.Module):
    """Multi-head self-attention through genscope's entry point.

    kind "self" (spatial: over the h*w positions of one token frame) or "temporal" (over token frames, one
    spatial position at a time; causal in time).
    """

    def __init__(self, dim: int, heads: int, kind: str, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.genscope_attention_site = kind  # install_attention turns this into an AttentionSite
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, L, D]; spatial: N = B*T, L = h*w; temporal: N = B*h*w, L = T
        n, length, dim = x.shape
        q, k, v = self.to_qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: [N, heads, L, d]
        out = attention(q, k, v, site=getattr(self, "_genscope_site", None), kind=self.genscope_attention_site,
                        is_causal=self.causal)
        return self.to_out(out.transpose(1, 2).reshape(n, length, dim))


class CViViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, kind: str, causal: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CViViTAttention(dim, heads, kind, causal)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CViViTDecoder(ModelMixin, ConfigMixin):
    """C-ViViT decoder: video tokens [B, T, h, w] -> frames [B, 3, 1 + pt*(T-1), h*p, w*p] (pixels in [-1, 1]
    once trained; random weights give unbounded values, clamped by the workload)."""

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 8192,
        code_dim: int = 32,
        hidden_size: int = 512,
        num_heads: int = 8,
        mlp_size: int = 2048,
        spatial_layers: int = 4,
        temporal_layers: int = 4,
        patch_size: int = 8,
        temporal_patch_size: int = 2,
        grid_size: tuple[int, int, int] = (12, 32, 32),
        out_channels: int = 3,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        _, max_h, max_w = grid_size
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.proj_in = nn.Linear(code_dim, hidden_size)
        self.height_embedding = nn.Embedding(max_h, hidden_size)
        self.width_embedding = nn.Embedding(max_w, hidden_size)
        self.temporal_blocks = nn.ModuleList([
            CViViTBlock(hidden_size, num_heads, mlp_size, "temporal", True, norm_eps) for _ in range(temporal_layers)])
        self.spatial_blocks = nn.ModuleList([
            CViViTBlock(hidden_size, num_heads, mlp_size, "self", False, norm_eps) for _ in range(spatial_layers)])
        self.norm_out = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.to_pixels_first = nn.Linear(hidden_size, out_channels * patch_size**2)
        self.to_pixels = nn.Linear(hidden_size, out_channels * temporal_patch_size * patch_size**2)

    def num_frames(self, token_frames: int) -> int:
        return 1 + self.config.temporal_patch_size * (token_frames - 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, T, h, w] -> frames [B, C, F, h*p, w*p], F = 1 + pt*(T-1)."""
        b, t, h, w = tokens.shape
        p, pt, c = self.config.patch_size, self.config.temporal_patch_size, self.config.out_channels
        device = tokens.device
        x = self.proj_in(self.codebook(tokens))  # [B, T, h, w, D]
        x = x + self.height_embedding(torch.arange(h, device=device))[None, None, :, None]
        x = x + self.width_embedding(torch.arange(w, device=device))[None, None, None, :]
        d = x.shape[-1]
        # temporal transformer, causal in time: [B*h*w, T, D]
        x = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        for block in self.temporal_blocks:
            x = block(x)
        # spatial transformer: [B*T, h*w, D]
        x = x.view(b, h, w, t, d).permute(0, 3, 1, 2, 4).reshape(b * t, h * w, d)
        for block in self.spatial_blocks:
            x = block(x)
        x = self.norm_out(x).view(b, t, h, w, d)
        # linear projection to pixel patches (no activation)
        first = self.to_pixels_first(x[:, :1]).view(b, 1, h, w, 1, p, p, c)  # [B, 1, h, w, 1, p, p, C]
        rest = self.to_pixels(x[:, 1:]).view(b, t - 1, h, w, pt, p, p, c)  # [B, T-1, h, w, pt, p, p, C]
        first = first.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, 1, h * p, w * p)
        rest = rest.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, (t - 1) * pt, h * p, w * p)
        return torch.cat([first, rest], dim=2)  # [B, C, F, H, W]


def cvivit_spec(*, hidden: int, layers: int, heads: int, mlp: int, codebook: int = 8192, code_dim: int = 32,
                patch: int = 8, temporal_patch: int = 2, grid: tuple[int, int, int] = (12, 32, 32)) -> ModuleSpec:
    return ModuleSpec.of(
        "CViViTDecoder", codebook_size=codebook, code_dim=code_dim, hidden_size=hidden, num_heads=heads,
        mlp_size=mlp, spatial_layers=layers, temporal_layers=layers, patch_size=patch,
        temporal_patch_size=temporal_patch, grid_size=grid, out_channels=3, norm_eps=1e-6,
    )


@dataclass(frozen=True)
class PhenakiConfig(ModelConfig):
    """T5 encoder -> MaskGIT video-token transformer (parallel decoding) -> C-ViViT decoder."""

    text_encoder: ModuleSpec = None  # type: ignore[assignment]
    transformer: ModuleSpec = None  # type: ignore[assignment]
    decoder: ModuleSpec = None  # type: ignore[assignment]
    text_len: int = 128
    image_size: int = 128  # frame size (pixels)
    frames: int = 11
    steps: int = 12
    guidance_scale: float = 4.0
    temperature: tuple[float, float] = (2.0, 0.0)
    masking_schedule: str = "cosine"

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("transformer", "transformer"), ("decoder", "decoder"))

    @property
    def patch_size(self) -> int:
        return self.decoder["patch_size"]

    @property
    def temporal_patch_size(self) -> int:
        return self.decoder["temporal_patch_size"]

    @property
    def max_grid(self) -> tuple[int, int, int]:
        """Largest token grid (T, h, w) both the transformer's and the decoder's position tables cover."""
        t1, h1, w1 = self.transformer["grid_size"]
        _, h2, w2 = self.decoder["grid_size"]
        return t1, min(h1, h2), min(w1, w2)

    def token_grid(self, frames: int, image_size: int) -> tuple[int, int, int]:
        side = image_size // self.patch_size
        return 1 + (frames - 1) // self.temporal_patch_size, side, side

    @property
    def mask_token_id(self) -> int:
        return self.transformer["codebook_size"]


PAPER = PhenakiConfig(
    preset="paper",
    text_encoder=t5_encoder_spec(d_model=4096, d_ff=10240, layers=24, heads=64),  # T5-XXL (v1.1) encoder
    transformer=maskgit_spec(hidden=2048, layers=24, heads=16, mlp=8192, cond_dim=4096, grid=(12, 32, 32)),
    decoder=cvivit_spec(hidden=512, layers=4, heads=8, mlp=2048, grid=(12, 32, 32)),
    text_len=128, image_size=128, frames=11, steps=12, guidance_scale=4.0,
)

# small: the paper's video (11 frames, 128x128, 1,536 tokens), narrow and shallow networks.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=t5_encoder_spec(d_model=256, d_ff=1024, layers=4, heads=4),
    transformer=maskgit_spec(hidden=256, layers=6, heads=4, mlp=1024, cond_dim=256, codebook=1024,
                             grid=(12, 32, 32)),
    decoder=cvivit_spec(hidden=128, layers=2, heads=4, mlp=512, codebook=1024, grid=(12, 32, 32)),
    text_len=32, steps=8,
)

# tiny: 3 frames at 32x32 -> 2 x 4 x 4 = 32 tokens by default; tables up to 4 x 8 x 8 (7 frames, 64x64).
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=t5_encoder_spec(d_model=32, d_ff=64, layers=2, heads=2, d_kv=16, vocab=1000),
    transformer=maskgit_spec(hidden=32, layers=2, heads=2, mlp=64, cond_dim=32, codebook=64, grid=(4, 8, 8)),
    decoder=cvivit_spec(hidden=16, layers=1, heads=2, mlp=32, codebook=64, code_dim=8, grid=(4, 8, 8)),
    text_len=16, image_size=32, frames=3, steps=3,
)

PRESETS = PresetTable("phenaki", {"paper": PAPER, "small": SMALL, "tiny": TINY})
