"""Muse: masked image transformer with parallel decoding (the paper's Table I "Muse", [21]).

Components: text encoder -> masked-token transformer, run for a fixed number of parallel-decoding
iterations (MaskGIT cosine schedule, classifier-free guidance) -> VQ-GAN decoder (tokens -> pixels).

Presets
-------
``paper`` - Muse-3B's base stage, as the characterization paper's Table I gives it (3 B parameters, 48 layers,
model dimension 2048) with the rest from the Muse paper (Chang et al. 2023, arXiv:2301.00704):

* transformer (:class:`~genscope.models.layers.maskgit.MaskGITTransformer`): 48 layers, hidden 2048
  (Table I / Muse); MLP 8192 and 32 heads (Muse appendix, base-model configuration table, as we read it -
  this offline machine could not re-open the table; heads change no parameter count and no FLOP count, only
  the similarity matrix's [B*heads, L, L] size); cross-attention to T5 states projected to the hidden size
  (Muse: the T5 embeddings are linearly projected to the transformer's hidden size); codebook 8192, 256x256
  images as 16x16 tokens (Muse: f16 VQGAN with 8192 codes for the base model).
  Built count: 3.26 B = 3 B + 8.8 % (the paper rounds; see tests/test_muse.py).
* text encoder: T5-XXL encoder (Muse, Introduction: "the T5-XXL model has an additional 4.6B parameters"); config
  of google/t5-v1_1-xxl ``config.json`` (d_model 4096, d_ff 10240, 24 layers, 64 heads, d_kv 64, vocab
  32128, gated-gelu) - the T5 v1.1 XXL that Imagen and Muse use. Built: 4.76 B encoder (+3.5 %). The issue
  text says "a CLIP text encoder": that is aMUSEd's choice (preset ``amused-512``), not Muse's.
* decoding: 24 iterations for the base model ("inference of 256 tokens using only 24 decoding steps in our
  base model", Muse); cosine masking schedule (MaskGIT); classifier-free guidance on - Muse varies
  its scale during sampling; genscope uses aMUSEd's constant 10.0.
* VQ-GAN decoder: Muse does not publish its VQGAN's layer config; genscope uses the open reproduction's
  (amused/amused-512 ``vqvae/config.json``: f16, 8192 codes, no attention) - what a Muse-style tokenizer
  costs, not Google's exact network.
* **Not included: the super-resolution transformer** (Muse-3B's second stage, 16x16 -> 64x64 tokens for
  512x512). Table I and Figure 8 of the characterization paper describe Muse by one 48-layer transformer
  with a constant sequence length; the super-res stage is a second model, and the single-stage 512x512
  path is what ``amused-512`` measures.
* ``text_len`` 128: not published for Muse; genscope's choice (the T5 encoder takes any length).

``amused-512`` - the open aMUSEd model (Patil et al. 2024, arXiv:2401.01808; huggingface.co/amused/amused-512),
so that ``--weights DIR`` (diffusers layout: ``text_encoder``, ``transformer``, ``vqvae``, optional
``tokenizer``) loads real weights:

* transformer: amused-512 ``transformer/config.json`` (``UVit2DModel``: hidden 1024, 22 layers, 16 heads,
  intermediate 2816, block_out_channels 768, 3 res blocks, downsample/upsample, codebook 8192, vocab 8256,
  sample_size 32, micro-conditioning 5 x 256 -> 1280) - 608,257,792 parameters.
* VQ-GAN: amused-512 ``vqvae/config.json`` (``VQModel``: channels 128/256/256/512/768, latent 64, 8192
  codes, no mid-block attention, lookup_from_codebook) - 146,244,675 parameters (aMUSEd paper: 146M).
* text encoder: CLIP-L/14 text tower with projection (aMUSEd model card: "a pre-trained CLIP-L/14 text
  encoder"; width 768 and projection 768 agree with the transformer's encoder_hidden_size and
  cond_embed_dim 768; quick_gelu as openai/clip-vit-large-patch14 - with ``--weights`` the folder's
  config.json decides) - 123,650,304 parameters; the penultimate hidden states are the cross-attention
  context and the projected pooled output conditions the adaptive norms, as diffusers' ``AmusedPipeline``.
* scheduler: amused-512 ``scheduler/scheduler_config.json`` (``AmusedScheduler``, mask id 8255, cosine);
  12 iterations, guidance 10, temperature (2, 0), micro-conditioning aesthetic score 6: ``AmusedPipeline``
  defaults. Model card: amused-512 808M parameters; genscope counts 819 M for what generation runs (text
  encoder + transformer + the VQ's codebook, post_quant_conv and decoder) (+1.4 %).

``small`` keeps the ``paper`` structure (T5 -> MaskGITTransformer -> f16 VQ-GAN, 16x16 tokens at 256 px) at a
size that runs in seconds; ``tiny`` runs in milliseconds (same classes; an f8 VQ-GAN, see below);
``amused-tiny`` keeps the ``amused-512`` structure at test size (used to check that a saved aMUSEd-layout
folder loads and reproduces the built output).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from genscope.models.base import ModelConfig, PresetTable
from genscope.models.spec import ModuleSpec
from genscope.models.stable_diffusion import clip_text_spec


def t5_encoder_spec(*, d_model: int, d_ff: int, layers: int, heads: int, d_kv: int = 64,
                    vocab: int = 32128) -> ModuleSpec:
    """A T5 v1.1-style encoder (gated-GELU MLP, relative position buckets); google/t5-v1_1-xxl at
    d_model=4096, d_ff=10240, layers=24, heads=64, d_kv=64, vocab=32128."""
    return ModuleSpec.of(
        "T5EncoderModel", vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers,
        num_heads=heads, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        is_encoder_decoder=False, use_cache=False,
    )


def vq_spec(*, channels: tuple[int, ...], latent_channels: int = 64, codebook: int = 8192,
            layers_per_block: int = 2, groups: int = 32, sample_size: int = 32) -> ModuleSpec:
    """A VQ-GAN as aMUSEd's (diffusers ``VQModel``): f = 2^(levels-1), codebook lookup for decoding."""
    return ModuleSpec.of(
        "VQModel", act_fn="silu", block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), in_channels=3, out_channels=3,
        latent_channels=latent_channels, layers_per_block=layers_per_block, lookup_from_codebook=True,
        mid_block_add_attention=False, norm_num_groups=groups, norm_type="group",
        num_vq_embeddings=codebook, sample_size=sample_size, scaling_factor=0.18215, vq_embed_dim=None,
        force_upcast=True,
    )


def maskgit_spec(*, hidden: int, layers: int, heads: int, mlp: int, cond_dim: int, codebook: int = 8192,
                 grid: tuple[int, int, int] = (1, 16, 16)) -> ModuleSpec:
    return ModuleSpec.of(
        "MaskGITTransformer", codebook_size=codebook, hidden_size=hidden, num_layers=layers, num_heads=heads,
        mlp_size=mlp, cond_dim=cond_dim, grid_size=grid, activation_fn="gelu", attention_bias=False,
        norm_eps=1e-6,
    )


def uvit_spec(*, hidden: int = 1024, layers: int = 22, heads: int = 16, intermediate: int = 2816,
              block_channels: int = 768, block_heads: int = 12, res_blocks: int = 3, in_channels: int = 768,
              codebook: int = 8192, vocab: int = 8256, cond_embed_dim: int = 768, encoder_hidden_size: int = 768,
              micro_cond_encode_dim: int = 256, sample_size: int = 32, down_up: bool = True) -> ModuleSpec:
    """diffusers ``UVit2DModel`` with amused-512's ``transformer/config.json`` values as defaults."""
    return ModuleSpec.of(
        "UVit2DModel", attention_dropout=0.0, block_num_heads=block_heads, block_out_channels=block_channels,
        codebook_size=codebook, cond_embed_dim=cond_embed_dim, downsample=down_up,
        encoder_hidden_size=encoder_hidden_size, hidden_dropout=0.0, hidden_size=hidden, in_channels=in_channels,
        intermediate_size=intermediate, layer_norm_eps=1e-6, ln_elementwise_affine=True,
        micro_cond_embed_dim=5 * micro_cond_encode_dim, micro_cond_encode_dim=micro_cond_encode_dim,
        num_attention_heads=heads, num_hidden_layers=layers, num_res_blocks=res_blocks, sample_size=sample_size,
        upsample=down_up, use_bias=False, vocab_size=vocab,
    )


@dataclass(frozen=True)
class MaskedImageConfig(ModelConfig):
    """Text encoder -> masked-token transformer (parallel decoding) -> VQ-GAN decoder."""

    text_encoder: ModuleSpec = None  # type: ignore[assignment]
    transformer: ModuleSpec = None  # type: ignore[assignment]
    decoder: ModuleSpec = None  # type: ignore[assignment]
    text_len: int = 128  # tokens per prompt
    image_size: int = 256  # default output size (pixels)
    max_image_size: int = 256  # largest size the transformer's position tables (or a sane cap) allow
    steps: int = 24  # parallel-decoding iterations
    guidance_scale: float = 10.0
    temperature: tuple[float, float] = (2.0, 0.0)  # AmusedScheduler: linearly from 2 to 0 over the iterations
    masking_schedule: str = "cosine"
    aesthetic_score: float = 6.0  # aMUSEd micro-conditioning (UVit2DModel only)

    COMPONENTS: ClassVar = (("text_encoder", "text_encoder"), ("transformer", "transformer"), ("decoder", "decoder"))

    @property
    def uses_uvit(self) -> bool:
        return self.transformer.class_name == "UVit2DModel"

    @property
    def vq_factor(self) -> int:
        """Pixels per token side: 2^(VQ levels - 1)."""
        return 2 ** (len(self.decoder["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be a multiple of this: the VQ factor, x2 where the U-ViT downsamples its tokens."""
        down = 2 if self.uses_uvit and self.transformer["downsample"] else 1
        return self.vq_factor * down

    @property
    def mask_token_id(self) -> int:
        if self.uses_uvit:
            return self.transformer["vocab_size"] - 1  # amused-512: 8255
        return self.transformer["codebook_size"]

    @property
    def codebook_size(self) -> int:
        return self.transformer["codebook_size"]


PAPER = MaskedImageConfig(
    preset="paper",
    text_encoder=t5_encoder_spec(d_model=4096, d_ff=10240, layers=24, heads=64),  # T5-XXL (v1.1) encoder
    transformer=maskgit_spec(hidden=2048, layers=48, heads=32, mlp=8192, cond_dim=4096, grid=(1, 16, 16)),
    decoder=vq_spec(channels=(128, 256, 256, 512, 768)),  # aMUSEd's f16 VQ-GAN (Muse's is unpublished)
    text_len=128, image_size=256, max_image_size=256, steps=24, guidance_scale=10.0,
)

AMUSED_512 = MaskedImageConfig(
    preset="amused-512",
    text_encoder=clip_text_spec(hidden=768, layers=12, heads=12, mlp=3072, projection_dim=768,
                                with_projection=True),  # CLIP-L/14 text tower
    transformer=uvit_spec(),
    decoder=vq_spec(channels=(128, 256, 256, 512, 768)),
    text_len=77, image_size=512, max_image_size=1024, steps=12, guidance_scale=10.0,
)

# small: the paper structure (T5 -> 16x16-token MaskGIT transformer -> f16 VQ-GAN), narrow and shallow.
SMALL = replace(
    PAPER, preset="small",
    text_encoder=t5_encoder_spec(d_model=256, d_ff=1024, layers=4, heads=4, d_kv=64),
    transformer=maskgit_spec(hidden=256, layers=8, heads=4, mlp=1024, cond_dim=256, grid=(1, 32, 32)),
    decoder=vq_spec(channels=(32, 64, 64, 128, 128), layers_per_block=1, groups=32),
    text_len=32, image_size=256, max_image_size=512, steps=12,
)

# tiny: milliseconds, for tests. Its VQ-GAN is f8 (4 levels), not f16, so that a 256 px test image already
# gives 32x32 = 1,024 tokens: long enough for the similarity matrix to dominate the run's peak memory while
# the decoder's activations (which grow with pixels, not tokens^2) stay small. 64 px -> 8x8 tokens by default.
TINY = replace(
    PAPER, preset="tiny",
    text_encoder=t5_encoder_spec(d_model=32, d_ff=64, layers=2, heads=2, d_kv=16, vocab=1000),
    transformer=maskgit_spec(hidden=32, layers=2, heads=2, mlp=64, cond_dim=32, codebook=64, grid=(1, 32, 32)),
    decoder=vq_spec(channels=(8, 8, 16, 16), latent_channels=8, codebook=64, layers_per_block=1, groups=4),
    text_len=16, image_size=64, max_image_size=256, steps=4,
)

# amused-tiny: the amused-512 structure (CLIP with projection -> UVit2DModel with down/up-sampling -> VQ-GAN).
AMUSED_TINY = replace(
    AMUSED_512, preset="amused-tiny",
    text_encoder=clip_text_spec(hidden=32, layers=2, heads=2, mlp=64, projection_dim=32, vocab=1000,
                                max_positions=16, with_projection=True),
    transformer=uvit_spec(hidden=32, layers=2, heads=2, intermediate=64, block_channels=16, block_heads=2,
                          res_blocks=1, in_channels=16, codebook=64, vocab=80, cond_embed_dim=32,
                          encoder_hidden_size=32, micro_cond_encode_dim=4, sample_size=4),
    decoder=vq_spec(channels=(8, 8, 16, 16, 16), latent_channels=8, codebook=64, layers_per_block=1, groups=4),
    text_len=16, image_size=128, max_image_size=512, steps=4,
)

PRESETS = PresetTable("muse", {"paper": PAPER, "amused-512": AMUSED_512, "small": SMALL, "tiny": TINY,
                               "amused-tiny": AMUSED_TINY})
