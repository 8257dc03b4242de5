"""One video DiT block with full 3-D attention (Wan) or factorized spatial + temporal attention (Make-A-Video).

The block of the ``dit-temporal`` study (:mod:`genscope.studies.dit_temporal`): pre-norm self-attention, a
cross-attention to the text and a GELU feed-forward - the layers of a Wan 2.1 block (``WanTransformerBlock``:
self-attention, cross-attention, FFN; without its timestep modulation and RoPE, which are elementwise and the
same in both variants) - over video tokens ``x: [B, F*S, D]`` (F latent frames of S tokens each):

* ``full``: one self-attention over all F*S tokens (Wan; kind ``spatiotemporal``): q ``[B, heads, F*S, d]``;
* ``factorized``: self-attention within each frame (q ``[B*F, heads, S, d]``, kind ``self``), then a second,
  temporal self-attention across frames at each position (q ``[B*S, heads, F, d]``, kind ``temporal``), as
  Make-A-Video / ModelScope's pseudo-3D layers (paper Section VI, Figure 11).

Every attention is a diffusers ``Attention`` routed through the entry point, so the sequence-length tracer,
the FLOP counter and the profiler see each call with its kind.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("full", "factorized")


class VideoDiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, text_dim: int, mode: str = "full"):
        super().__init__()
        from diffusers.models.attention import FeedForward
        from diffusers.models.attention_processor import Attention

        if mode not in MODES:
            from genscope.errors import choice_error

            raise choice_error("attention mode", mode, MODES)
        self.mode = mode
        head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn_video = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=True, out_bias=True)
        if mode == "factorized":
            self.norm_temporal = nn.LayerNorm(dim, eps=1e-6)
            self.attn_temporal = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=True, out_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn_text = Attention(query_dim=dim, cross_attention_dim=text_dim, heads=heads, dim_head=head_dim,
                                   bias=True, out_bias=True)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")

    def forward(self, x: torch.Tensor, text: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B, F*S, D] (frame-major); text: [B, T, text_dim] -> [B, F*S, D]."""
        batch, tokens, dim = x.shape
        per_frame = tokens // frames
        h = self.norm1(x)
        if self.mode == "full":
            x = x + self.attn_video(h)  # q: [B, heads, F*S, d]
        else:
            h = h.reshape(batch * frames, per_frame, dim)
            x = x + self.attn_video(h).reshape(batch, tokens, dim)  # q: [B*F, heads, S, d]
            h = self.norm_temporal(x).reshape(batch, frames, per_frame, dim).transpose(1, 2)
            h = h.reshape(batch * per_frame, frames, dim)
            t = self.attn_temporal(h)  # q: [B*S, heads, F, d]
            x = x + t.reshape(batch, per_frame, frames, dim).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.attn_text(self.norm2(x), encoder_hidden_states=text)  # q: [B, heads, F*S, d], k: T
        return x + self.ffn(self.norm3(x))


def attention_kind(path: str, module: nn.Module) -> str:
    """Kinds of the block's attention sites: spatiotemporal (full), self / temporal (factorized), cross."""
    if path.endswith("attn_text"):
        return "cross"
    if path.endswith("attn_temporal"):
        return "temporal"
    return "spatiotemporal" if path.endswith("attn_video") and getattr(module, "_genscope_full", False) else "self"


def build_block(dim: int, heads: int, ffn_dim: int, text_dim: int, mode: str, device="cpu",
                dtype: torch.dtype = torch.float32, seed: int = 0) -> VideoDiTBlock:
    """A block with seeded random weights, its attention routed through the entry point."""
    from genscope.models.layers.attention import install_attention

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        block = VideoDiTBlock(dim, heads, ffn_dim, text_dim, mode)
    block = block.to(dtype).eval().requires_grad_(False)
    block.attn_video._genscope_full = mode == "full"
    install_attention(block, prefix=f"block_{mode}", kind_fn=attention_kind)
    return block
