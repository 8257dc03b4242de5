"""Parti: the paper's autoregressive encoder-decoder text-to-image transformer (Table I, "Parti" [19]).

Components: text encoder -> image-token decoder (one image token per step, causal self-attention with a KV
cache + cross-attention to the text, classifier-free guidance) -> detokenizer (ViT-VQGAN decoder: image
tokens -> pixels).

Sources of the ``paper`` preset (Yu et al. 2022, "Scaling Autoregressive Models for Content-Rich
Text-to-Image Generation", arXiv:2206.10789):
* Table 1, "Parti" (20B): 16 encoder layers, 64 decoder layers, model dim 4096, MLP dim 16384, 64 heads
  (head dim 64), "20B" total parameters (ViT-VQGAN not included). The paper's Table I lists the same
  80 layers / 4096 / 20B.
* Sec. 2.2: SentencePiece text vocabulary of 16,000; at most 128 text tokens; 1024 image tokens
  (32 x 32 codes of a 256 x 256 image); Sec. 2.3/5.4: image vocabulary of 8192 codes; Sec. 3: "at the
  output of both the encoder and decoder, we apply an additional layer normalization".
* Sec. 2.1: ViT-VQGAN image tokenizer (Yu et al. 2021, "Vector-quantized Image Modeling with Improved
  VQGAN", arXiv:2110.04627) with 8 x 8 patches, l2-normalized and factorized codes, 8192 codes; the decoder
  Parti uses at inference is the finetuned larger one: 32 blocks, 16 heads, model dimension 1280, hidden
  dimension 5120, "about 600M" parameters; no final sigmoid (raw values are the RGB pixels in [0, 1]).
* Table 5: classifier-free guidance scale 1.2 ("similar to DALL-E 2").

What genscope builds, and where it departs from the published model:
* text encoder: transformers' ``T5EncoderModel`` (pre-norm blocks, ReLU MLP, relative position bias, final
  layer norm) at Table 1's sizes. Parti's encoder is "a standard Transformer" in Lingvo; T5's is the
  closest open encoder of that lineage.
* decoder: transformers' ``GPT2LMHeadModel`` with ``add_cross_attention`` (pre-norm blocks: causal
  self-attention, cross-attention to the text states, GELU MLP, final layer norm), vocabulary = the 8192
  codes + one start token (the output head is tied to that embedding, GPT-2's default), learned positions
  for the 1024 image tokens. transformers has no other causal
  decoder with cross-attention and its own vocabulary as a top-level model; its ``EncoderDecoderCache``
  gives the KV cache (self-attention keys grow by one per step, cross-attention keys are computed once).
  Parti's conv-shaped sparse attention (Sec. 2.2) is not modelled: the decoder attends to every earlier
  image token (full causal attention), which is what Figure 8's linearly growing sequence length shows.
* detokenizer: :class:`ViTVQGANDecoder` below (hand-written container around diffusers' transformer block).
Parameter count at ``paper``: text encoder 3,286,898,688 + decoder 17,222,610,944 = 20,509,509,632
(+2.5 % over Table 1's rounded "20B": embeddings, biases and per-block norms are counted here).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from genscope.models.base import ModelConfig, PresetTable
from genscope.models.spec import ModuleSpec


class ViTVQGANDecoder(ModelMixin, ConfigMixin):
    """ViT-VQGAN's decoder: image token ids on a grid -> RGB pixels (Yu et al. 2021, Sec. 3).

    codes: the token's entry of the ``codebook_size`` x ``code_dim`` codebook, l2-normalized (ViT-VQGAN's
    factorized, l2-normalized codes: the lookup happens in a low-dimensional space; ``code_dim`` = 32 is
    genscope's choice), projected to ``hidden_size``; + learned row/column position embeddings
    (factorized, genscope's choice; a smaller grid uses the top-left part) -> ``num_layers`` pre-norm
    transformer blocks (bidirectional self-attention over all H*W tokens, GELU MLP) -> layer norm -> a
    two-layer feed-forward with tanh in the middle (ViT-VQGAN's output head as we read its Sec. 3.1) -> one
    ``patch_size`` x ``patch_size`` x 3 pixel patch per token, regrouped into the image. No output
    activation (Parti, Sec. 2.1). Parameters at ``paper``: 637,608,896 (Parti: "about 600M").

    Why hand-written: neither diffusers nor transformers ships a ViT-VQGAN (diffusers' ``VQModel`` is the
    convolutional VQGAN). Only the container is written here; each block is diffusers'
    ``BasicTransformerBlock``, whose ``Attention`` ``install_attention`` routes through genscope's entry point.

    Shapes: tokens [B, H, W] -> pixels [B, 3, H*p, W*p] (nominally in [0, 1]).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 8192,
        code_dim: int = 32,
        hidden_size: int = 1280,
        num_layers: int = 32,
        num_heads: int = 16,
        mlp_size: int = 5120,
        patch_size: int = 8,
        grid_size: int = 32,
        out_channels: int = 3,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.code_proj = nn.Linear(code_dim, hidden_size)
        self.row_embedding = nn.Embedding(grid_size, hidden_size)
        self.col_embedding = nn.Embedding(grid_size, hidden_size)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(hidden_size, num_heads, hidden_size // num_heads, activation_fn="gelu",
                                  attention_bias=True, norm_type="layer_norm", norm_eps=norm_eps,
                                  ff_inner_dim=mlp_size)
            for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.head = nn.Sequential(nn.Linear(hidden_size, mlp_size), nn.Tanh(),
                                  nn.Linear(mlp_size, patch_size * patch_size * out_channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, H, W] code ids -> pixels [B, C, H*p, W*p]."""
        batch, height, width = tokens.shape
        grid, p, channels = self.config.grid_size, self.config.patch_size, self.config.out_channels
        if height > grid or width > grid:
            raise ValueError(f"token grid {height}x{width} exceeds the position tables ({grid}x{grid})")
        device = tokens.device
        codes = nn.functional.normalize(self.codebook(tokens), dim=-1)  # [B, H, W, code_dim], l2-normalized
        x = self.code_proj(codes)  # [B, H, W, D]
        x = x + self.row_embedding(torch.arange(height, device=device))[None, :, None]
        x = x + self.col_embedding(torch.arange(width, device=device))[None, None, :]
        x = x.reshape(batch, height * width, -1)  # [B, L, D], L = H*W
        for block in self.transformer_blocks:
            x = block(x)  # self-attention over all L tokens, then MLP
        x = self.head(self.norm_out(x))  # [B, L, p*p*C]
        x = x.reshape(batch, height, width, p, p, channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height * p, width * p)


def t5_text_encoder_spec(*, hidden: int, layers: int, heads: int, mlp: int, vocab: int = 16000) -> ModuleSpec:
    return ModuleSpec.of(
        "T5EncoderModel",
        vocab_size=vocab, d_model=hidden, d_kv=hidden // heads, d_ff=mlp, num_layers=layers, num_heads=heads,
        feed_forward_proj="relu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1,
    )


def image_decoder_spec(*, hidden: int, layers: int, heads: int, mlp: int, codebook: int = 8192,
                       max_tokens: int = 1024) -> ModuleSpec:
    """Causal decoder over image tokens with cross-attention; vocabulary = codes + one start token."""
    return ModuleSpec.of(
        "GPT2LMHeadModel",
        vocab_size=codebook + 1, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=mlp, n_positions=max_tokens,
        add_cross_attention=True, activation_function="gelu_new", layer_norm_epsilon=1e-6,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=codebook, eos_token_id=codebook,
        use_cache=True,
    )


def vit_vqgan_decoder_spec(*, hidden: int, layers: int, heads: int, mlp: int, codebook: int = 8192,
                           code_dim: int = 32, patch_size: int = 8, grid_size: int = 32) -> ModuleSpec:
    return ModuleSpec.of(
        "ViTVQGANDecoder", codebook_size=codebook, code_dim=code_dim, hidden_size=hidden, num_layers=layers,
        num_heads=heads, mlp_size=mlp, patch_size=patch_size, grid_size=grid_size,
    )


@dataclass(frozen=True)
class PartiConfig(ModelConfig):
    """An encoder-decoder autoregressive text-to-image transformer with a ViT-VQGAN detokenizer."""

    text_encoder: ModuleSpec = None  # type: ignore[assignment]
    decoder: ModuleSpec = None  # type: ignore[assignment]
    detokenizer: ModuleSpec = None  # type: ignore[assignment]
    text_len: int = 128  # text tokens per prompt (Sec. 2.2: at most 128)
    image_size: int = 256  # default output size (pixels)
    guidance_scale: float = 1.2  # Table 5
    temperature: float = 1.0  # sampling temperature of the image tokens

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("decoder", "decoder"), ("detokenizer", "detokenizer"))

    @property
    def patch_size(self) -> int:
        return int(self.detokenizer["patch_size"])

    @property
    def codebook_size(self) -> int:
        return int(self.detokenizer["codebook_size"])

    @property
    def max_image_size(self) -> int:
        return int(self.detokenizer["grid_size"]) * self.patch_size

    def image_tokens(self, image_size: int) -> int:
        """Image tokens of a ``image_size`` x ``image_size`` picture: (size / patch)^2."""
        return (image_size // self.patch_size) ** 2


PAPER = PartiConfig(
    preset="paper",
    text_encoder=t5_text_encoder_spec(hidden=4096, layers=16, heads=64, mlp=16384),  # Table 1; vocab 16k
    decoder=image_decoder_spec(hidden=4096, layers=64, heads=64, mlp=16384),  # Table 1; 8192 codes; 32x32
    detokenizer=vit_vqgan_decoder_spec(hidden=1280, layers=32, heads=16, mlp=5120),  # Sec. 2.1, ~600M
    text_len=128, image_size=256, guidance_scale=1.2,
)

# small: same components and block types, the 1:4 encoder:decoder depth ratio and the real vocabularies
# (16k text, 8192 codes, 8x8 patches); width 512 and a 16 x 16 token grid (128 px, 256 decode steps) so a
# whole image takes seconds on 2 CPU cores.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=t5_text_encoder_spec(hidden=512, layers=2, heads=8, mlp=2048),
    decoder=image_decoder_spec(hidden=512, layers=8, heads=8, mlp=2048, max_tokens=256),
    detokenizer=vit_vqgan_decoder_spec(hidden=256, layers=4, heads=4, mlp=1024, grid_size=16),
    image_size=128,
)

# tiny: milliseconds, for tests; a 4 x 4 grid (32 px) by default, up to 8 x 8 (64 px).
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=t5_text_encoder_spec(hidden=32, layers=1, heads=2, mlp=64, vocab=1000),
    decoder=image_decoder_spec(hidden=32, layers=2, heads=2, mlp=64, codebook=64, max_tokens=64),
    detokenizer=vit_vqgan_decoder_spec(hidden=32, layers=1, heads=2, mlp=64, codebook=64, code_dim=8,
                                       grid_size=8),
    text_len=16, image_size=32,
)

PRESETS = PresetTable("parti", {"paper": PAPER, "small": SMALL, "tiny": TINY})
