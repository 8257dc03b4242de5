"""``parti``: autoregressive encoder-decoder text-to-image (paper: Parti; here Parti-20B at ``paper`` scale).

text_encoder (the prompt and, with guidance, the empty prompt) -> decode x T (one image token per step:
the decoder sees the previous token, attends causally to all earlier ones through its KV cache and to the
text through cross-attention; classifier-free guidance on the logits; seeded sampling) -> detokenizer
(ViT-VQGAN decoder: the H x W token grid -> pixels).

Conventions (what the hooks and tests see):
* T = (image_size / patch)^2 image tokens (1024 for 256 px at ``paper``), one ``decode`` phase each;
* decode step i feeds one token (the start token at i = 0, else the token sampled at step i - 1):
  self-attention has query length 1 and key length 1 + i; cross-attention has query length 1 and key
  length ``text_len`` (the padded prompt); with guidance the batch is doubled ([uncond; cond]);
* sampling: guided logits = uncond + scale * (cond - uncond) (Parti Eq. 1), divided by the temperature,
  then the Gumbel-max trick with noise drawn on the CPU from the seed (same tokens on every device);
* ``Generation.raw`` = the image [B, 3, H, W] in [-1, 1]; the token ids are in ``info["image_tokens"]``.

Written out (rather than transformers' ``generate``) so that each step is its own phase and guidance
combines the two halves' logits; the models, the KV cache (``EncoderDecoderCache``) and every attention
module are the libraries', routed through genscope's entry point.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from genscope.errors import UserError
from genscope.models.base import check_multiple, component
from genscope.models.layers.attention import install_attention
from genscope.models.parti import PRESETS, PartiConfig
from genscope.workloads.base import Generation, Pipeline, Request, RunSettings, Workload, to_pil
from genscope.workloads.phases import loop_steps, phase
from genscope.workloads.text import HashTokenizer


def text_tokenizer(config: PartiConfig) -> HashTokenizer:
    return HashTokenizer(vocab_size=int(config.text_encoder["vocab_size"]), max_len=config.text_len)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ Uniform(0, 1), drawn on the CPU."""
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1.0 - 1e-12)
    return -torch.log(-torch.log(uniform))


class PartiPipeline(Pipeline):
    config: PartiConfig

    def encode_prompt(self, request: Request) -> torch.Tensor:
        """-> [2B, S, D] ([uncond; cond]) with guidance, else [B, S, D]; S = text_len."""
        prompts = [request.prompt] * request.batch_size
        if request.use_cfg:
            prompts = [request.negative_prompt] * request.batch_size + prompts
        ids = text_tokenizer(self.config)(prompts, device=self.device)  # [2B, S]
        return self.component("text_encoder")(input_ids=ids).last_hidden_state

    def generate(self, request: Request) -> Generation:
        from transformers import DynamicCache, EncoderDecoderCache

        decoder = self.component("decoder")
        detokenizer = self.component("detokenizer")
        codebook = self.config.codebook_size
        grid = request.image_size // self.config.patch_size
        num_tokens = request.decode_tokens  # = grid * grid (validated)
        batch = request.batch_size
        with phase("text_encoder"):
            text = self.encode_prompt(request)  # [2B, 128, 4096] at paper scale
        rows = text.shape[0]  # 2B with guidance, else B
        cache = EncoderDecoderCache(DynamicCache(config=decoder.config), DynamicCache(config=decoder.config))
        token = torch.full((rows, 1), decoder.config.bos_token_id, dtype=torch.long, device=self.device)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        sampled = []
        for i in loop_steps("decode", num_tokens, growing=True):
            with phase("decode", step=i):
                # token: [rows, 1]; self-attention keys: 1 + i (cached), cross-attention keys: text_len
                out = decoder(input_ids=token, encoder_hidden_states=text, past_key_values=cache, use_cache=True)
                logits = out.logits[:, -1, :codebook].float()  # [rows, K]; the start token is never sampled
                if request.use_cfg:
                    uncond, cond = logits.chunk(2)
                    logits = uncond + request.guidance_scale * (cond - uncond)  # [B, K]
                if self.device.type == "meta":  # shapes only: no values to sample from
                    next_token = logits.argmax(dim=-1)  # [B]
                else:
                    scores = logits.double().cpu() / self.config.temperature + gumbel_noise((batch, codebook),
                                                                                             generator)
                    next_token = scores.argmax(dim=-1).to(self.device)  # [B]
                token = (next_token.repeat(2) if request.use_cfg else next_token)[:, None]
            sampled.append(next_token)
        # a StepLimit (shape-only counts) may have cut the loop: the tokens not decoded repeat the last one
        sampled += sampled[-1:] * (num_tokens - len(sampled))
        tokens = torch.stack(sampled, dim=1)  # [B, T]
        with phase("detokenizer"):
            pixels = detokenizer(tokens.view(batch, grid, grid))  # [B, 3, H, W], RGB in [0, 1]
            images = pixels * 2 - 1  # [-1, 1]
        info = {"image_tokens": tokens if tokens.device.type == "meta" else tokens.cpu(), "token_grid": grid, "decode_steps": num_tokens,
                "text_tokens": int(text.shape[1]), "cfg_batch": rows}
        return Generation(images=to_pil(images), raw=images.float(), info=info)


class Parti(Workload):
    name = "parti"
    paper_model = "Parti (autoregressive transformer TTI)"
    family = "transformer (autoregressive)"
    extra_options = ("--decode-tokens",)  # derived from the image size and checked against it
    modality = "image"
    phases = ("text_encoder", "decode", "detokenizer")
    presets = PRESETS
    weights_subfolders = ()  # Parti's weights were never released
    weights_note = "Parti's weights are not public"

    def request(self, settings: RunSettings) -> Request:
        """The number of decode steps follows from the image size: (size / patch)^2 unless given."""
        config = self.config(settings.preset)
        size = settings.image_size if settings.image_size is not None else config.image_size
        self._check_image_size(config, size)
        if settings.decode_tokens is None:
            settings = replace(settings, decode_tokens=config.image_tokens(size))
        return super().request(settings)

    @staticmethod
    def _check_image_size(config: PartiConfig, size: object) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise UserError(f"image size {size!r} is not an integer")
        check_multiple("image size", size, config.patch_size, maximum=config.max_image_size)

    def validate(self, config: PartiConfig, request: Request) -> None:
        super().validate(config, request)
        self._check_image_size(config, request.image_size)
        expected = config.image_tokens(request.image_size)
        if request.decode_tokens != expected:
            grid = request.image_size // config.patch_size
            raise UserError(f"decode tokens {request.decode_tokens} do not fit a {request.image_size} px image: "
                            f"parti generates its {grid}x{grid} grid = {expected} image tokens; "
                            "leave --decode-tokens out or change --image-size")
        tokenizer = text_tokenizer(config)
        tokenizer.ids(request.prompt)  # a prompt longer than text_len -> UserError
        tokenizer.ids(request.negative_prompt)

    def build(self, config: PartiConfig, device="cpu", dtype=torch.float32, weights: Path | None = None
              ) -> PartiPipeline:
        if weights is not None:
            raise UserError("parti has no open weights format; --weights is not supported for it")
        comps, sites = [], []
        for name, spec in config.component_specs():
            module = spec.build(device, dtype)
            sites += install_attention(module, prefix=name)
            note = "T5-style encoder over the padded prompt"
            if name == "decoder":
                note = "self-attention (causal, KV cache) + cross-attention to the text per block"
            elif name == "detokenizer":
                note = "ViT-VQGAN decoder (not in Parti's published 20B count)"
            comps.append(component(name, module, note=note))
        return PartiPipeline(config, comps, torch.device(device), dtype, sites)
