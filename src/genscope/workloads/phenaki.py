"""``phenaki``: transformer text-to-video with parallel decoding (paper: Phenaki).

text_encoder (T5, prompt and empty prompt) -> decode x N (bidirectional transformer over all T*h*w video
tokens, [uncond; cond] with guidance; MaskGIT sampling) -> decoder (C-ViViT: causal temporal transformer,
spatial transformer, linear projection to pixel patches) -> frames, written as an animated GIF.
"""

from __future__ import annotations

import torch

from genscope.errors import UserError
from genscope.models.base import check_multiple, component
from genscope.models.layers.attention import install_attention
from genscope.models.phenaki import PRESETS, PhenakiConfig
from genscope.workloads.base import MAX_FRAMES, Generation, Pipeline, Request, Workload, to_pil
from genscope.workloads.maskgit import parallel_decode
from genscope.workloads.muse import prompt_batch, text_tokenizer
from genscope.workloads.phases import phase


class PhenakiPipeline(Pipeline):
    config: PhenakiConfig

    def generate(self, request: Request) -> Generation:
        text_encoder = self.component("text_encoder")
        transformer = self.component("transformer")
        decoder = self.component("decoder")
        with phase("text_encoder"):
            ids = text_tokenizer(self.config, request)(prompt_batch(request), device=self.device)  # [N, S]
            context = text_encoder(input_ids=ids).last_hidden_state  # [N, S, 4096] at paper scale
        grid = self.config.token_grid(request.frames, request.image_size)  # (T, h, w): (6, 16, 16) at paper scale
        t, h, w = grid

        def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
            # tokens: [N, T*h*w] -> [N, T, h, w]; self-attention over all T*h*w tokens -> logits [N, L, V]
            return transformer(tokens.view(-1, t, h, w), context)

        result = parallel_decode(
            logits_fn, request.batch_size, t * h * w, self.config.mask_token_id, request.steps,
            request.guidance_scale, request.seed, self.device, temperature=self.config.temperature,
            masking_schedule=self.config.masking_schedule,
        )
        with phase("decoder"):
            frames = decoder(result.tokens.view(-1, t, h, w)).clamp(-1, 1)  # [B, 3, F, H, W]
        videos = [to_pil(video.transpose(0, 1)) for video in frames]  # per sample: F frames [3, H, W]
        return Generation(videos=videos, raw=frames.float(),
                          info={"token_grid": list(grid), "video_tokens": t * h * w,
                                "tokens": result.tokens, "first_logits": result.first_logits})


class Phenaki(Workload):
    name = "phenaki"
    paper_model = "Phenaki (transformer TTV, parallel decoding)"
    family = "transformer (parallel decode)"
    modality = "video"
    phases = ("text_encoder", "decode", "decoder")
    presets = PRESETS
    weights_subfolders = ()  # no open weights

    def validate(self, config: PhenakiConfig, request: Request) -> None:
        super().validate(config, request)
        max_t, max_h, max_w = config.max_grid
        p, pt = config.patch_size, config.temporal_patch_size
        check_multiple("image size", request.image_size, p, maximum=p * min(max_h, max_w))
        max_frames = min(1 + pt * (max_t - 1), MAX_FRAMES)
        if not 1 <= request.frames <= max_frames or (request.frames - 1) % pt:
            raise UserError(f"frames {request.frames} is not supported: C-ViViT encodes the first frame alone and "
                            f"then {pt}-frame tubelets, so frames must be 1 + {pt}k up to {max_frames} "
                            f"(e.g. 1, {1 + pt}, {1 + 2 * pt}, ..., {max_frames})")
        t, h, w = config.token_grid(request.frames, request.image_size)
        if request.steps > t * h * w:
            raise UserError(f"steps {request.steps} exceed the {t * h * w} video tokens ({t}x{h}x{w}): parallel "
                            f"decoding fixes at least one token per iteration (use 1 to {t * h * w})")
        text_tokenizer(config, request)(prompt_batch(request))  # a prompt longer than text_len fails here

    def build(self, config, device="cpu", dtype=torch.float32, weights=None) -> PhenakiPipeline:
        comps, sites = [], []
        for name, spec in config.component_specs():
            module = spec.build(device, dtype)
            sites += install_attention(module, prefix=name)
            comps.append(component(name, module))
        return PhenakiPipeline(config, comps, torch.device(device), dtype, sites)
