"""``genscope.profile`` on a real diffusers pipeline: a StableDiffusionPipeline built from tiny configs (the
sizes of diffusers' own pipeline tests), random weights, a word-level CLIP tokenizer written to a temporary
folder - nothing downloaded.

What is expected follows from the call, not from genscope: with ``guidance_scale`` > 1 diffusers encodes the
prompt and the (empty) negative prompt in two text-encoder calls, runs the UNet once per inference step and
decodes once; every UNet block with cross-attention and the VAE's mid-block attention go through attention.
"""

from __future__ import annotations

import json

import pytest
import torch

import genscope

STEPS = 2


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    words = ["a", "cat", "on", "mat"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
                                                intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                                vocab_size=64, max_position_embeddings=16))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CALL = {"prompt": "a cat on a mat", "num_inference_steps": STEPS, "guidance_scale": 7.5, "height": 16,
        "width": 16, "output_type": "np"}


@pytest.mark.slow  # about 15 s on 2 busy cores (imports included)
def test_profile_a_diffusers_pipeline(pipeline):
    tables = genscope.profile(pipeline, call_kwargs=CALL, repeat=1, warmup=1)
    phases = tables["phase_time"]
    for backend in ("baseline", "flash"):
        calls = phases[phases.attention == backend].set_index("phase")["calls"].to_dict()
        assert calls == {"text_encoder": 2, "denoise": STEPS, "decoder": 1}
    ct = tables["class_time"]
    for backend in ("baseline", "flash"):
        mine = ct[ct.attention == backend].pivot_table(index="phase", columns="op_class", values="time_ms",
                                                       aggfunc="sum").fillna(0.0)
        for phase_name in ("text_encoder", "denoise", "decoder"):
            assert mine.loc[phase_name, "Attention"] > 0, (backend, phase_name)  # every component attends
            assert mine.loc[phase_name, "Linear"] > 0, (backend, phase_name)
        assert mine.loc["denoise", "Convolution"] > 0 and mine.loc["decoder", "Convolution"] > 0
        assert mine.loc["text_encoder", "Convolution"] == 0  # CLIP has none
    speedup = tables["speedup"].iloc[0]
    assert speedup.attention_baseline_ms > 0 and speedup.attention_flash_ms > 0
    assert not speedup.stable  # one profiled repetition cannot give an interval of the median
    # the pipeline still runs after profiling: genscope's hooks are removed
    image = pipeline(**CALL).images
    assert image.shape == (1, 16, 16, 3)


def test_profile_a_module_and_a_callable():
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(1, 12, 16)
    tables = genscope.profile(attn, inputs=(x,), repeat=1, warmup=0, mode="fast")
    totals = tables["class_total"].set_index(["attention", "op_class"])["time_ms"]
    assert totals[("baseline", "Attention")] > 0 and totals[("flash", "Attention")] > 0
    calls = []
    one = genscope.profile(lambda: calls.append(1), attention="as-is", repeat=3, warmup=2)
    assert len(calls) == 5 and set(one) >= {"class_total", "phase_time"}
