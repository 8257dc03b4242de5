"""A bidirectional masked-token transformer (MaskGIT / Muse / Phenaki) over a grid of VQ tokens.

The transformer that Muse (Chang et al. 2023, "Muse: Text-To-Image Generation via Masked Generative
Transformers") and Phenaki (Villegas et al. 2022, "Phenaki: Variable Length Video Generation From Open Domain
Textual Description") run at every parallel-decoding iteration: discrete image/video tokens (with a [MASK]
id) are embedded, position embeddings are added, and N blocks of *bidirectional* self-attention over all
tokens + cross-attention to the text encoder's output + MLP predict a distribution over the codebook at
every position (MaskGIT, Chang et al. 2022).

Why hand-written: diffusers and transformers have the blocks but no model of this shape. diffusers'
``UVit2DModel`` (aMUSEd) adds convolutional stages, adaptive norms and gated MLPs (5.35 B parameters at
Muse's 48 x 2048, not Muse's 3 B); ``Transformer2DModel``'s discrete path (VQ-Diffusion) has no projection
of the text embeddings (cross-attention keys from 4096-wide T5-XXL states: 3.66 B) and only square 2-D
grids; transformers' BERT-like models make self-attention causal once cross-attention is on. So only the
container is written here - token/position embeddings, the text projection and the output head - and every
block is diffusers' ``BasicTransformerBlock`` (layer norm, self-attention, cross-attention, GELU MLP), whose
``Attention`` modules ``install_attention`` routes through genscope's entry point like any other diffusers
model. A ``ModelMixin``/``ConfigMixin`` so that ``ModuleSpec`` builds it from a config (on ``meta`` too).

Shapes: tokens [B, T, H, W] (T = 1 for images) -> logits [B, T*H*W, codebook_size].
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class MaskGITTransformer(ModelMixin, ConfigMixin):
    """Bidirectional transformer over masked VQ tokens, conditioned on text by cross-attention.

    ``codebook_size`` ids are real codes; id ``codebook_size`` is [MASK] (so the embedding table has
    ``codebook_size + 1`` rows and the head predicts ``codebook_size`` classes).
    ``grid_size`` = (T, H, W): the largest token grid the learned position embeddings cover
    (factorized: one table per axis, summed). ``cond_dim``: width of the text encoder's states; they are
    projected to ``hidden_size`` once (as Muse does) and serve as keys/values of every cross-attention.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 8192,
        hidden_size: int = 2048,
        num_layers: int = 48,
        num_heads: int = 32,
        mlp_size: int = 8192,
        cond_dim: int = 4096,
        grid_size: tuple[int, int, int] = (1, 16, 16),
        activation_fn: str = "gelu",
        attention_bias: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        max_t, max_h, max_w = grid_size
        self.token_embedding = nn.Embedding(codebook_size + 1, hidden_size)
        self.time_embedding = nn.Embedding(max_t, hidden_size)
        self.height_embedding = nn.Embedding(max_h, hidden_size)
        self.width_embedding = nn.Embedding(max_w, hidden_size)
        self.text_proj = nn.Linear(cond_dim, hidden_size)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(
                hidden_size, num_heads, hidden_size // num_heads, cross_attention_dim=hidden_size,
                activation_fn=activation_fn, attention_bias=attention_bias, norm_type="layer_norm",
                norm_eps=norm_eps, ff_inner_dim=mlp_size,
            )
            for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.to_logits = nn.Linear(hidden_size, codebook_size)

    @property
    def mask_token_id(self) -> int:
        return self.config.codebook_size

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, T, H, W] token ids (mask = codebook_size); encoder_hidden_states: [B, S, cond_dim]
        -> logits [B, T*H*W, codebook_size]."""
        batch, frames, height, width = input_ids.shape
        max_t, max_h, max_w = self.config.grid_size
        if frames > max_t or height > max_h or width > max_w:
            raise ValueError(f"token grid {(frames, height, width)} exceeds the position tables {(max_t, max_h, max_w)}")
        device = input_ids.device
        x = self.token_embedding(input_ids)  # [B, T, H, W, D]
        x = x + self.time_embedding(torch.arange(frames, device=device))[None, :, None, None]
        x = x + self.height_embedding(torch.arange(height, device=device))[None, None, :, None]
        x = x + self.width_embedding(torch.arange(width, device=device))[None, None, None, :]
        x = x.reshape(batch, frames * height * width, -1)  # [B, L, D], L = T*H*W
        context = self.text_proj(encoder_hidden_states)  # [B, S, D]
        for block in self.transformer_blocks:
            # attn1: self-attention over all L tokens (bidirectional); attn2: cross-attention to the S text states
            x = block(x, encoder_hidden_states=context)
        return self.to_logits(self.norm_out(x))  # [B, L, codebook_size]
