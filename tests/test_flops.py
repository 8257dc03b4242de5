"""FLOP counting, with every expectation derived independently of genscope's counter.

* a toy model: hand-derived conv, linear and attention FLOPs;
* every workload of the suite: each phase's FLOPs equal what plain ``torch.utils.flop_counter.FlopCounterMode``
  counts on the library's own model (diffusers / transformers class built here, on the meta device, from
  the preset's config, with the library's own attention - not genscope's build or attention routing),
  times the phase's calls (classifier-free guidance doubles the batch; N steps run N forwards). genscope's
  own modules (the MaskGIT transformer of Muse and Phenaki, Parti's ViT-VQGAN, Phenaki's C-ViViT) are
  checked against their closed form (2 x MACs of every matmul from the config + 4*B*H*Lq*Lk*d attention);
* how SDPA is counted in the reference: torch's mode decomposes ``scaled_dot_product_attention`` on meta
  tensors into the math path, whose two matmuls torch counts (4*B*H*Lq*Lk*d); for the CPU flash kernel
  (which torch 2.13 counts 0) the reference registers :func:`_sdpa_reference`, typed here.

The counts are exact integers: every assertion is ``==``.
"""

from __future__ import annotations

import importlib
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from genscope.cli import main
from genscope.instrument.flop_steps import SeriesBroken, fit_steps
from genscope.instrument.flops import SOFTMAX_FLOPS_PER_ELEMENT, FlopCounter, count_callable
from genscope.models.layers.attention import AttentionSite, attention, use_backend
from genscope.studies.flops import count_workload
from genscope.workloads import registry
from genscope.workloads.base import RunSettings
from genscope.workloads.phases import limit_steps, loop_steps, record_phases

aten = torch.ops.aten
META = torch.device("meta")


# ---------------------------------------------------------------------------------------------------------
# the reference: plain torch counting on the libraries' own models
# ---------------------------------------------------------------------------------------------------------
def _sdpa_reference(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    *lead, lq, d = q_shape
    return 4 * math.prod(lead) * lq * k_shape[-2] * d  # QK^T and PV, 2 x MACs each


def torch_flops(fn) -> int:
    """FLOPs of ``fn()`` by torch's own FlopCounterMode (inference mode, as every pipeline runs)."""
    with torch.inference_mode(), FlopCounterMode(
            display=False, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_reference}) as c:
        fn()
    return c.get_total_flops()


def library_model(spec) -> nn.Module:
    """The preset's network as the library's class builds it from its config dict, on meta (no genscope build)."""
    lib = importlib.import_module(spec.library)
    cls = getattr(lib, spec.class_name)
    with torch.device(META):
        model = cls.from_config(spec.kwargs()) if spec.library == "diffusers" else cls(cls.config_class(
            **spec.kwargs()))
    return model.eval()


def meta(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


def ids(*shape) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.long, device=META)


def phase_flops(name: str, **overrides) -> dict[str, int]:
    """genscope's count of a tiny run on meta: FLOPs per phase."""
    phases = count_workload(name, "tiny", **overrides).tables["phases"]
    return {p: int(f) for p, f in zip(phases["phase"], phases["flops"], strict=True) if f or p != "(outside phases)"}


def config(name: str):
    return registry.get(name).config("tiny")


def latent_side(image_size: int, vae_spec) -> int:
    return image_size // 2 ** (len(vae_spec["block_out_channels"]) - 1)  # one 2x upsampling per VAE level but one


# ---------------------------------------------------------------------------------------------------------
# closed forms of genscope's own modules (matmuls only: embeddings, norms, activations count 0)
# ---------------------------------------------------------------------------------------------------------
def attention_block_flops(n: int, lq: int, lk: int, d_model: int, kv_width: int, out_proj: bool = True) -> int:
    """q from n x lq tokens, k and v from n x lk tokens of width kv_width, the two attention matmuls, output."""
    return (2 * n * lq * d_model * d_model + 2 * 2 * n * lk * kv_width * d_model + 4 * n * lq * lk * d_model
            + (2 * n * lq * d_model * d_model if out_proj else 0))


def maskgit_flops(spec, n: int, tokens: int, text_len: int) -> int:
    """MaskGITTransformer: text projection, per block self-attention, cross-attention, GELU MLP; the head."""
    d, mlp, layers = spec["hidden_size"], spec["mlp_size"], spec["num_layers"]
    block = (attention_block_flops(n, tokens, tokens, d, d) + attention_block_flops(n, tokens, text_len, d, d)
             + 2 * 2 * n * tokens * d * mlp)
    return 2 * n * text_len * spec["cond_dim"] * d + layers * block + 2 * n * tokens * d * spec["codebook_size"]


def vit_vqgan_flops(spec, batch: int, tokens: int) -> int:
    """ViTVQGANDecoder: code projection, blocks (self-attention, MLP), two-layer head to p x p x 3 pixels."""
    d, mlp, p = spec["hidden_size"], spec["mlp_size"], spec["patch_size"]
    block = attention_block_flops(batch, tokens, tokens, d, d) + 2 * 2 * batch * tokens * d * mlp
    return (2 * batch * tokens * spec["code_dim"] * d + spec["num_layers"] * block
            + 2 * batch * tokens * d * mlp + 2 * batch * tokens * mlp * p * p * 3)


def cvivit_flops(spec, batch: int, t: int, h: int, w: int) -> int:
    """CViViTDecoder: projection in, temporal blocks over T, spatial blocks over h*w, pixel heads."""
    d, mlp, p, pt = spec["hidden_size"], spec["mlp_size"], spec["patch_size"], spec["temporal_patch_size"]

    def block(n, length):  # fused qkv (3d) + output projection, attention, MLP
        return 2 * n * length * d * 3 * d + 2 * n * length * d * d + 4 * n * length * length * d + 4 * n * length * d * mlp

    return (2 * batch * t * h * w * spec["code_dim"] * d + spec["temporal_layers"] * block(batch * h * w, t)
            + spec["spatial_layers"] * block(batch * t, h * w) + 2 * batch * h * w * d * 3 * p * p
            + 2 * batch * (t - 1) * h * w * d * 3 * pt * p * p)


# ---------------------------------------------------------------------------------------------------------
# every workload: genscope's per-phase count == the reference
# ---------------------------------------------------------------------------------------------------------
def test_stable_diffusion_phases_match_torch_on_the_diffusers_models():
    cfg, steps = config("stable-diffusion"), 5  # 5 steps: 0, 1 and 4 run, 2 and 3 replicated
    unet, vae, clip = (library_model(cfg.denoiser), library_model(cfg.decoder), library_model(cfg.text_encoder))
    side = latent_side(cfg.image_size, cfg.decoder)
    cfg_batch = 2  # [uncond; cond]: the default guidance scale is above 1
    text = meta(cfg_batch, cfg.text_len, cfg.denoiser["cross_attention_dim"])
    expected = {
        "text_encoder": torch_flops(lambda: clip(ids(cfg_batch, cfg.text_len))),
        "denoise": steps * torch_flops(lambda: unet(meta(cfg_batch, cfg.denoiser["in_channels"], side, side),
                                                    torch.tensor(999), encoder_hidden_states=text)),
        "decoder": torch_flops(lambda: vae.decode(meta(1, cfg.decoder["latent_channels"], side, side))),
    }
    assert phase_flops("stable-diffusion", steps=steps) == expected
    # without guidance the UNet sees half the batch: half the denoising FLOPs
    assert phase_flops("stable-diffusion", steps=steps, guidance_scale=1.0)["denoise"] * 2 == expected["denoise"]


def test_prod_image_phases_match_torch_on_the_diffusers_models():
    cfg, steps = config("prod-image"), 4
    unet, vae = library_model(cfg.denoiser), library_model(cfg.decoder)
    side = latent_side(cfg.image_size, cfg.decoder)
    # SDXL: with force_zeros_for_empty_prompt the encoders see the prompt only; the UNet sees [zeros; cond]
    encoder_batch = 1 if cfg.force_zeros_for_empty_prompt else 2
    encoders = [library_model(cfg.text_encoder), library_model(cfg.text_encoder_2)]
    width = sum(e.config.hidden_size for e in encoders)
    added = {"text_embeds": meta(2, encoders[1].config.projection_dim), "time_ids": meta(2, 6)}
    expected = {
        "text_encoder": sum(torch_flops(lambda e=e: e(ids(encoder_batch, cfg.text_len), output_hidden_states=True))
                            for e in encoders),
        "denoise": steps * torch_flops(lambda: unet(meta(2, cfg.denoiser["in_channels"], side, side),
                                                    torch.tensor(999), encoder_hidden_states=meta(2, cfg.text_len, width),
                                                    added_cond_kwargs=added)),
        "decoder": torch_flops(lambda: vae.decode(meta(1, cfg.decoder["latent_channels"], side, side))),
    }
    assert phase_flops("prod-image", steps=steps) == expected


def test_make_a_video_phases_match_torch_on_the_diffusers_models():
    cfg, steps = config("make-a-video"), 4
    unet, vae, clip = library_model(cfg.denoiser), library_model(cfg.decoder), library_model(cfg.text_encoder)
    side, frames = latent_side(cfg.image_size, cfg.decoder), cfg.frames
    text = meta(2, cfg.text_len, cfg.denoiser["cross_attention_dim"])
    expected = {
        "text_encoder": torch_flops(lambda: clip(ids(2, cfg.text_len))),
        "denoise": steps * torch_flops(lambda: unet(meta(2, cfg.denoiser["in_channels"], frames, side, side),
                                                    torch.tensor(999), encoder_hidden_states=text)),
        # every frame decoded by the image VAE: a batch of B*F latents
        "decoder": torch_flops(lambda: vae.decode(meta(frames, cfg.decoder["latent_channels"], side, side))),
    }
    assert phase_flops("make-a-video", steps=steps) == expected


def test_imagen_phases_match_torch_on_the_diffusers_and_transformers_models():
    cfg, steps = config("imagen"), 4  # 4 steps in every stage; guidance 5 in every stage: CFG batch 2
    t5, clip = library_model(cfg.text_encoder), library_model(cfg.text_encoder_2)
    base_unet, sr, x4, vae = (library_model(s) for s in (cfg.denoiser, cfg.sr_256, cfg.sr_1024, cfg.decoder))
    base, mid, _ = cfg.stage_sizes(cfg.image_size)
    t5_states = meta(2, cfg.text_len, t5.config.d_model)
    clip_states = meta(2, cfg.text_len, clip.config.hidden_size)
    level = torch.zeros(2, dtype=torch.long, device=META)
    expected = {
        "text_encoder": torch_flops(lambda: t5(ids(2, cfg.text_len))) + torch_flops(lambda: clip(ids(2, cfg.text_len))),
        "denoise": steps * torch_flops(lambda: base_unet(meta(2, cfg.denoiser["in_channels"], base, base),
                                                         torch.tensor(999), encoder_hidden_states=t5_states)),
        "sr_256": steps * torch_flops(lambda: sr(meta(2, cfg.sr_256["in_channels"], mid, mid), torch.tensor(999),
                                                 encoder_hidden_states=t5_states, class_labels=level)),
        "sr_1024": steps * torch_flops(lambda: x4(meta(2, cfg.sr_1024["in_channels"], mid, mid), torch.tensor(999),
                                                  encoder_hidden_states=clip_states, class_labels=level)),
        "decoder": torch_flops(lambda: vae.decode(meta(1, cfg.decoder["latent_channels"], mid, mid))),
    }
    assert phase_flops("imagen", steps=steps, guidance_scale=5.0) == expected


def test_llama_prefill_and_decode_match_torch_on_the_transformers_model():
    from transformers import DynamicCache

    cfg, new_tokens = config("llama"), 9  # 4 decode steps run, 5 extrapolated from them
    model = library_model(cfg.language_model)
    cache = DynamicCache(config=model.config)
    logits = []
    prefill = torch_flops(lambda: logits.append(model(input_ids=ids(1, cfg.prompt_len), past_key_values=cache,
                                                      use_cache=True, logits_to_keep=1).logits))

    def decode():
        token = logits[-1][:, -1].argmax(dim=-1, keepdim=True)
        for _ in range(new_tokens):  # step i: query 1 token over P + 1 + i keys
            token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, True)

    assert phase_flops("llama", decode_tokens=new_tokens) == {"prefill": prefill, "decode": torch_flops(decode)}


def test_parti_phases_match_torch_and_the_vit_vqgan_closed_form():
    from transformers import DynamicCache, EncoderDecoderCache

    cfg = config("parti")
    grid = cfg.image_size // cfg.patch_size
    tokens, rows = grid * grid, 2  # one decode step per image token (4 run, the rest extrapolated); CFG rows
    t5, decoder = library_model(cfg.text_encoder), library_model(cfg.decoder)
    text = meta(rows, cfg.text_len, t5.config.d_model)

    def decode():
        cache = EncoderDecoderCache(DynamicCache(config=decoder.config), DynamicCache(config=decoder.config))
        token = ids(rows, 1)
        for _ in range(tokens):  # self-attention over 1 + i cached keys, cross-attention over the text
            logits = decoder(input_ids=token, encoder_hidden_states=text, past_key_values=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1).repeat(1)[:, None]

    expected = {"text_encoder": torch_flops(lambda: t5(ids(rows, cfg.text_len))), "decode": torch_flops(decode),
                "detokenizer": vit_vqgan_flops(cfg.detokenizer, 1, tokens)}
    assert phase_flops("parti") == expected


def test_muse_phases_match_torch_and_the_maskgit_closed_form():
    cfg = config("muse")
    t5, vq = library_model(cfg.text_encoder), library_model(cfg.decoder)
    side = cfg.image_size // cfg.vq_factor
    shape = (1, side, side, cfg.decoder["latent_channels"])
    expected = {
        "text_encoder": torch_flops(lambda: t5(input_ids=ids(2, cfg.text_len))),
        "decode": cfg.steps * maskgit_flops(cfg.transformer, 2, side * side, cfg.text_len),
        "decoder": torch_flops(lambda: vq.decode(ids(1, side * side), force_not_quantize=True, shape=shape)),
    }
    assert phase_flops("muse") == expected


def test_phenaki_phases_match_torch_and_the_closed_forms():
    cfg = config("phenaki")
    t5 = library_model(cfg.text_encoder)
    t, h, w = 1 + (cfg.frames - 1) // cfg.decoder["temporal_patch_size"], *(
        [cfg.image_size // cfg.decoder["patch_size"]] * 2)
    expected = {
        "text_encoder": torch_flops(lambda: t5(input_ids=ids(2, cfg.text_len))),
        "decode": cfg.steps * maskgit_flops(cfg.transformer, 2, t * h * w, cfg.text_len),
        "decoder": cvivit_flops(cfg.decoder, 1, t, h, w),
    }
    assert phase_flops("phenaki") == expected


# ---------------------------------------------------------------------------------------------------------
# a toy model: hand-derived counts, both backends, both devices
# ---------------------------------------------------------------------------------------------------------
B, CIN, COUT, HW, K = 2, 3, 8, 8, 3  # conv input [B, CIN, HW, HW], kernel K x K, padding 1
D_MODEL, HEADS = 16, 2  # tokens: L = HW*HW = 64 of width COUT -> linear to D_MODEL -> 2 heads of 8
L = HW * HW
HEAD_DIM = D_MODEL // HEADS


class Toy(nn.Module):
    """conv -> tokens -> linear (q = k = v) -> attention through the entry point."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(CIN, COUT, K, padding=1)
        self.proj = nn.Linear(COUT, D_MODEL)
        self.site = AttentionSite(path="toy.attn", kind="self")

    def forward(self, x):
        h = self.conv(x)  # [B, COUT, HW, HW]
        tokens = h.flatten(2).transpose(1, 2)  # [B, L, COUT]
        q = self.proj(tokens).view(B, L, HEADS, HEAD_DIM).transpose(1, 2)  # [B, H, L, d]
        return attention(q, q, q, site=self.site)


# hand-derived (FLOPs = 2 x MACs; biases are not multiply-accumulates)
CONV_FLOPS = 2 * B * COUT * HW * HW * CIN * K * K  # one MAC per output element per input channel per tap
LINEAR_FLOPS = 2 * (B * L) * COUT * D_MODEL
ATTENTION_FLOPS = 4 * B * HEADS * L * L * HEAD_DIM  # QK^T and PV
SOFTMAX_FLOPS = SOFTMAX_FLOPS_PER_ELEMENT * B * HEADS * L * L


def count_toy(device: str, backend: str) -> FlopCounter:
    model = Toy().to(device)
    x = torch.randn(B, CIN, HW, HW, device=device)
    with use_backend(backend):
        return count_callable(lambda: model(x), {"toy": model})


@pytest.mark.parametrize("device,backend", [("cpu", "flash"), ("cpu", "baseline"), ("meta", "flash"),
                                            ("meta", "baseline")])
def test_hand_derived_count(device, backend):
    counter = count_toy(device, backend)
    rows = counter.table()
    by_class = rows.groupby("op_class")["flops"].sum()
    assert by_class["Convolution"] == CONV_FLOPS
    assert by_class["Linear"] == LINEAR_FLOPS
    assert by_class["Attention"] == ATTENTION_FLOPS
    assert rows["softmax_flops"].sum() == SOFTMAX_FLOPS
    assert counter.get_total_flops() == CONV_FLOPS + LINEAR_FLOPS + ATTENTION_FLOPS
    assert (rows["macs"] * 2 == rows["flops"]).all()
    assert set(rows.loc[rows["op_class"] == "Convolution", "module"]) == {"toy.conv"}


def test_baseline_and_flash_agree_on_real_cpu_tensors():
    flash, base = count_toy("cpu", "flash").table(), count_toy("cpu", "baseline").table()
    assert "aten::scaled_dot_product_attention" in set(flash["op"])  # one fused op, not decomposed
    assert "aten::bmm" in set(base["op"])  # the materialized path
    for col in ("flops", "softmax_flops"):
        assert flash.groupby("op_class")[col].sum().equals(base.groupby("op_class")[col].sum())
    assert flash["bytes"].sum() < base["bytes"].sum()  # the fused op never writes the similarity matrix


# ---------------------------------------------------------------------------------------------------------
# counting a loop from a few steps
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides", [("stable-diffusion", {"steps": 6}), ("llama", {"decode_tokens": 9}),
                                            ("parti", {}), ("imagen", {"steps": 5}), ("muse", {"steps": 5})])
def test_counting_a_few_steps_equals_running_every_step(name, overrides):
    fast = count_workload(name, "tiny", **overrides)
    exact = count_workload(name, "tiny", memoize=False, **overrides)  # every step of every loop runs
    assert fast.summary["memoized_calls"] + fast.summary["predicted_calls"] > 0
    assert fast.summary["replayed_blocks"] > 0  # repeated block calls answered from a checked recording
    assert exact.summary["memoized_calls"] == exact.summary["predicted_calls"] == exact.summary["replayed_blocks"] == 0
    for table in ("phases", "classes", "modules", "ops", "steps"):
        pd.testing.assert_frame_equal(fast.tables[table], exact.tables[table])


def test_whole_run_backends_agree_and_real_tensors_match_meta():
    flash = count_workload("stable-diffusion", "tiny", steps=5, device="cpu", attention="flash")
    base = count_workload("stable-diffusion", "tiny", steps=5, device="cpu", attention="baseline")
    meta_run = count_workload("stable-diffusion", "tiny", steps=5, device="meta")  # steps 0, 1, 4 run
    for key in ("flops", "attention_flops", "softmax_flops"):
        assert flash.summary[key] == base.summary[key] == meta_run.summary[key], key
    assert flash.summary["attention_flops"] > 0
    phases = meta_run.tables["phases"].set_index("phase")
    assert phases.loc["denoise", "entries"] == 5
    for name, df in meta_run.tables.items():
        if {"flops", "macs"} <= set(df.columns):
            assert (df["flops"] == 2 * df["macs"]).all(), name


def test_step_rule_replicates_identical_steps_and_extrapolates_affine_ones():
    row = ("m", "aten.mm", False)
    same = fit_steps("denoise", [{row: [10, 1, 100, 2]}, {row: [10, 1, 100, 2]}])
    assert same.identical and same.sum_over(2, 5) == [(row, [30, 3, 300, 6])]
    # step s: flops 8 + 2s (step 0 differs: an empty cache)
    grow = fit_steps("decode", [{row: [1, 0, 0, 1]}, {row: [10, 0, 0, 1]}, {row: [12, 0, 0, 1]}, {row: [14, 0, 0, 1]}],
                     growing=True)
    assert not grow.identical
    assert grow.sum_over(4, 7) == [(row, [16 + 18 + 20, 0, 0, 3])]
    assert grow.totals_at(6) == (20, 0, 0)
    with pytest.raises(SeriesBroken):  # quadratic: the second difference is not zero
        fit_steps("decode", [{row: [1, 0, 0, 1]}, {row: [4, 0, 0, 1]}, {row: [9, 0, 0, 1]}], growing=True)
    with pytest.raises(SeriesBroken):  # a step ran another op
        fit_steps("denoise", [{row: [1, 0, 0, 1]}, {("m", "aten.bmm", False): [1, 0, 0, 1]}])
    with pytest.raises(SeriesBroken):  # identical steps must be equal: growth is not replicated
        fit_steps("denoise", [{row: [1, 0, 0, 1]}, {row: [2, 0, 0, 1]}])
    # a first step that differs (a scheduler's set-up) is allowed: the last two decide
    assert fit_steps("denoise", [{row: [7, 0, 0, 1]}, {row: [1, 0, 0, 1]}, {row: [1, 0, 0, 1]}]).identical


def test_loop_steps_under_a_limit_run_the_leading_steps_and_the_last():
    ended = []
    with record_phases() as times, limit_steps(2, on_loop_end=lambda *a: ended.append(a), max_growing_steps=4,
                                               run_last=True):
        assert list(loop_steps("denoise", 50)) == [0, 1, 49]
        assert list(loop_steps("decode", 9, growing=True)) == [0, 1, 2, 3]
        assert list(loop_steps("short", 3)) == [0, 1, 2]
    assert ended == [("denoise", 50, 2), ("decode", 9, 4), ("short", 3, 3)]
    assert times.counts() == {"denoise": 47, "decode": 5}  # the steps cut, entered as replicated
    assert list(loop_steps("denoise", 50)) == list(range(50))  # no limit: every step


def test_a_counter_on_real_tensors_runs_every_step():
    workload = registry.get("stable-diffusion")
    request = workload.request(RunSettings(preset="tiny", steps=4))
    pipeline = workload.build(workload.config("tiny"))
    with record_phases() as times, FlopCounter(pipeline.components) as counter:
        pipeline(request)
    assert counter.memo_replays == counter.predicted_calls == 0
    assert counter.block_replay is None  # real tensors: every block runs
    assert times.counts()["denoise"] == 4 and not times.replicated


# ---------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------
def test_cli_flops_json(capsys):
    assert main(["flops", "stable-diffusion", "--preset", "tiny", "--json", "--no-store"]) == 0
    payload = json.loads(capsys.readouterr().out)
    s = payload["summary"]
    assert s["flops"] == 2 * s["macs"] > 0
    assert sum(p["flops"] for p in payload["phases"]) == s["flops"]
    assert {c["op_class"] for c in payload["classes"]} >= {"Convolution", "Linear", "Attention"}


def test_cli_flops_bad_input(capsys):
    assert main(["flops", "no-such-model", "--no-store"]) == 2
    assert "accepted" in capsys.readouterr().err
    assert main(["flops", "stable-diffusion", "--preset", "tiny", "--device", "tpu", "--no-store"]) == 2
    assert main(["flops", "stable-diffusion", "--preset", "tiny", "--steps", "0", "--no-store"]) == 2


def test_shape_only_pipelines_are_built_once_per_config_and_dtype():
    """Workload.shapes_pipeline shares one meta pipeline per (workload, config, dtype) and keeps a bounded few;
    a count on the shared pipeline leaves it unpatched (block replay restores every forward)."""
    from genscope.workloads import base

    workload = registry.get("stable-diffusion")
    config = workload.config("tiny")
    first = workload.shapes_pipeline(config)
    assert workload.shapes_pipeline(config) is first
    assert workload.shapes_pipeline(config, torch.float16) is not first
    assert next(first.component("denoiser").parameters()).device.type == "meta"
    count_workload("stable-diffusion", "tiny", steps=4)  # counted on the shared float32 pipeline
    assert not any("forward" in vars(m) for c in first.components for m in c.module.modules())
    for name in registry.available():  # more workloads than are kept: the oldest is dropped
        registry.get(name).shapes_pipeline(registry.get(name).config("tiny"))
    assert len(base._SHAPES_PIPELINES) <= base.SHAPES_PIPELINES_KEPT
