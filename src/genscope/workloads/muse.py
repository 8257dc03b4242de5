"""``muse``: masked-image-transformer text-to-image with parallel decoding (paper: Muse, Table I).

text_encoder (T5-XXL for ``paper``, CLIP-L/14 for ``amused-512``; prompt and empty prompt)
-> decode x N (the transformer over all H*W image tokens, [uncond; cond] with guidance; MaskGIT sampling)
-> decoder (VQ-GAN: codebook lookup + convolutional decoder -> pixels).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genscope.errors import UserError
from genscope.models.base import check_multiple, component
from genscope.models.layers.attention import install_attention
from genscope.models.muse import PRESETS, MaskedImageConfig
from genscope.workloads.base import Generation, Pipeline, Request, Workload, to_pil
from genscope.workloads.maskgit import parallel_decode
from genscope.workloads.phases import phase
from genscope.workloads.text import make_tokenizer

WEIGHTS_FOLDERS = ("text_encoder", "transformer", "vqvae")  # diffusers' AmusedPipeline layout


def vq_decoder_component(name: str, vq: torch.nn.Module):
    """A VQModel as generation uses it: codebook lookup + post_quant_conv + decoder (the encoder is unused)."""
    used = torch.nn.ModuleList([vq.quantize, vq.post_quant_conv, vq.decoder])
    return component(name, vq, used, note="codebook + post_quant_conv + decoder (the encoder is unused)")


def build_components(config, device, dtype, weights: Path | None, folders: tuple[str, ...] = WEIGHTS_FOLDERS):
    """Build (or load from a diffusers-layout folder) text encoder, transformer and VQ decoder; route attention."""
    from genscope.models.weights import load_pretrained

    comps, sites = [], []
    for (name, spec), folder in zip(config.component_specs(), folders, strict=True):
        if weights is not None:
            module = load_pretrained(spec.class_name, weights / folder, dtype, torch.device(device))
        else:
            module = spec.build(device, dtype)
        sites += install_attention(module, prefix=name)
        comps.append(vq_decoder_component(name, module) if name == "decoder" else component(name, module))
    return comps, sites


def prompt_batch(request: Request) -> list[str]:
    """[negative]*B + [prompt]*B with guidance (uncond first, as the decode loop's chunk(2)), else [prompt]*B."""
    prompts = [request.prompt] * request.batch_size
    if request.use_cfg:
        prompts = [request.negative_prompt] * request.batch_size + prompts
    return prompts


def text_tokenizer(config, request: Request):
    """T5: no start token, pad id 0, end id 1 (hash ids stand in for SentencePiece); CLIP: start/end, eos-padded."""
    spec = config.text_encoder
    if spec.class_name == "T5EncoderModel":
        return make_tokenizer(spec["vocab_size"], config.text_len, request.weights, add_bos=False,
                              pad_with_eos=False)
    return make_tokenizer(spec["vocab_size"], config.text_len, request.weights)


class MusePipeline(Pipeline):
    config: MaskedImageConfig

    def encode_prompt(self, request: Request) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (context [N, S, D], pooled [N, P] or None); N = 2B with guidance ([uncond; cond]), else B."""
        text_encoder = self.component("text_encoder")
        ids = text_tokenizer(self.config, request)(prompt_batch(request), device=self.device)  # [N, S]
        if self.config.text_encoder.class_name == "T5EncoderModel":
            return text_encoder(input_ids=ids).last_hidden_state, None  # [N, S, 4096] at paper scale
        out = text_encoder(ids, output_hidden_states=True)
        # aMUSEd: the penultimate layer's states are the context, the projected pooled output a condition
        return out.hidden_states[-2], out.text_embeds  # [N, 77, 768], [N, 768]

    def logits_fn(self, request: Request, context: torch.Tensor, pooled: torch.Tensor | None, side: int):
        transformer = self.component("transformer")
        if not self.config.uses_uvit:
            def maskgit(tokens: torch.Tensor) -> torch.Tensor:
                # tokens: [N, L] -> [N, 1, h, w]; context: [N, S, D_text] -> logits [N, L, V]
                return transformer(tokens.view(-1, 1, side, side), context)
            return maskgit

        # UVit2DModel micro-conditioning (AmusedPipeline): original size (w, h), crop (0, 0), aesthetic score
        size = request.image_size
        micro = torch.tensor([size, size, 0, 0, self.config.aesthetic_score], device=self.device,
                             dtype=context.dtype)[None].expand(context.shape[0], -1)  # [N, 5]

        def uvit(tokens: torch.Tensor) -> torch.Tensor:
            logits = transformer(tokens.view(-1, side, side), micro_conds=micro, pooled_text_emb=pooled,
                                 encoder_hidden_states=context)  # [N, V, h, w]
            return logits.flatten(2).transpose(1, 2)  # [N, L, V]
        return uvit

    def generate(self, request: Request) -> Generation:
        vq = self.component("decoder")
        with phase("text_encoder"):
            context, pooled = self.encode_prompt(request)
        side = request.image_size // self.config.vq_factor  # tokens per image side (16 at 256 px, f16)
        result = parallel_decode(
            self.logits_fn(request, context, pooled, side), request.batch_size, side * side,
            self.config.mask_token_id, request.steps, request.guidance_scale, request.seed, self.device,
            temperature=self.config.temperature, masking_schedule=self.config.masking_schedule,
        )
        with phase("decoder"):
            shape = (request.batch_size, side, side, vq.config.latent_channels)
            pixels = vq.decode(result.tokens, force_not_quantize=True, shape=shape).sample  # [B, 3, H, W] in [0, 1]
            images = pixels.clamp(0, 1) * 2 - 1  # -> [-1, 1]
        # the image tokens and iteration 0's guided logits ride in info (Generation sets one output kind)
        return Generation(images=to_pil(images), raw=images.float(),
                          info={"token_grid": [side, side], "image_tokens": side * side,
                                "tokens": result.tokens, "first_logits": result.first_logits})


class Muse(Workload):
    name = "muse"
    paper_model = "Muse (masked image transformer, parallel decoding TTI)"
    family = "transformer (parallel decode)"
    modality = "image"
    phases = ("text_encoder", "decode", "decoder")
    presets = PRESETS
    weights_subfolders = WEIGHTS_FOLDERS
    weights_note = "aMUSEd (amused/amused-512) diffusers layout, presets amused-512 / amused-tiny"

    def validate(self, config: MaskedImageConfig, request: Request) -> None:
        super().validate(config, request)
        check_multiple("image size", request.image_size, config.size_multiple, maximum=config.max_image_size)
        tokens = (request.image_size // config.vq_factor) ** 2
        if request.steps > tokens:
            raise UserError(f"steps {request.steps} exceed the {tokens} image tokens of a {request.image_size}px "
                            f"image: parallel decoding fixes at least one token per iteration (use 1 to {tokens})")
        if request.weights is not None and not config.uses_uvit:
            raise UserError(f"preset {request.preset!r} has no open weights; --weights takes an aMUSEd folder "
                            "with presets amused-512 or amused-tiny")
        text_tokenizer(config, request)(prompt_batch(request))  # a prompt longer than text_len fails here

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> MusePipeline:
        comps, sites = build_components(config, device, dtype, weights)
        return MusePipeline(config, comps, torch.device(device), dtype, sites)
