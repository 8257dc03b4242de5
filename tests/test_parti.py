import json

import pytest
import torch
from helpers import assert_backends_agree, run_tiny

from genscope.cli import main
from genscope.models.layers.attention import register_call_hook
from genscope.workloads import registry
from genscope.workloads.phases import current_phase

TINY = registry.get("parti").config("tiny")


def test_tiny_run_has_one_decode_phase_per_image_token():
    pipeline, request, gen, times = run_tiny("parti")
    grid = request.image_size // TINY.patch_size  # 32 px / 8 = 4
    assert request.decode_tokens == grid * grid == 16
    assert times.counts() == {"text_encoder": 1, "decode": 16, "detokenizer": 1}
    assert gen.images[0].size == (request.image_size, request.image_size)
    assert gen.raw.shape == (1, 3, request.image_size, request.image_size)
    tokens = gen.info["image_tokens"]
    assert tokens.shape == (1, 16) and 0 <= tokens.min() and tokens.max() < TINY.codebook_size


def test_image_size_sets_the_token_grid():
    _, request, gen, times = run_tiny("parti", image_size=64, guidance_scale=1.0)
    assert request.decode_tokens == 64 and times.counts()["decode"] == 64
    assert gen.raw.shape == (1, 3, 64, 64)


def test_seeded_runs_are_deterministic_and_seed_matters():
    a = run_tiny("parti", seed=1)[2].info["image_tokens"]
    b = run_tiny("parti", seed=1)[2].info["image_tokens"]
    c = run_tiny("parti", seed=2)[2].info["image_tokens"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_baseline_and_flash_agree():
    assert_backends_agree("parti")


def test_decode_steps_have_query_length_1_growing_keys_and_text_cross_keys():
    calls = []

    def hook(call):
        calls.append((current_phase(), call))

    with register_call_hook(hook):
        pipeline, request, _, _ = run_tiny("parti")  # guidance 1.2 (Parti's) -> batch doubled
    layers = pipeline.component("decoder").config.n_layer
    assert {c.kind for p, c in calls if p.name == "text_encoder"} == {"self"}
    for step in range(request.decode_tokens):
        here = [c for p, c in calls if p.name == "decode" and p.step == step]
        causal = [c for c in here if c.kind == "causal"]
        cross = [c for c in here if c.kind == "cross"]
        assert len(causal) == len(cross) == layers and len(here) == 2 * layers
        assert all(c.batch == 2 and c.query_len == 1 for c in here)
        assert all(c.key_len == 1 + step for c in causal)  # start token + the tokens sampled before
        assert all(c.key_len == TINY.text_len for c in cross)
    detok = [c for p, c in calls if p.name == "detokenizer"]
    assert detok and all(c.kind == "self" and c.query_len == c.key_len == 16 for c in detok)
    # every installed site was called
    assert {c.site for _, c in calls} == set(pipeline.sites)


def test_guidance_off_keeps_the_batch():
    calls = []
    with register_call_hook(calls.append):
        run_tiny("parti", guidance_scale=1.0, batch_size=2)
    assert {c.batch for c in calls if c.path.startswith("decoder")} == {2}
    calls.clear()
    with register_call_hook(calls.append):
        run_tiny("parti", batch_size=2)  # guidance 1.2: [uncond; cond]
    assert {c.batch for c in calls if c.path.startswith("decoder")} == {4}


def test_paper_preset_is_parti_20b():
    """Encoder + decoder at Table 1's sizes, against the published 20B (the ViT-VQGAN is counted apart)."""
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5EncoderModel

    info = {c.name: c for c in registry.get("parti").describe("paper")}
    with torch.device("meta"):
        ref_enc = T5EncoderModel(T5Config(vocab_size=16000, d_model=4096, d_kv=64, d_ff=16384, num_layers=16,
                                          num_heads=64, feed_forward_proj="relu"))
        ref_dec = GPT2LMHeadModel(GPT2Config(vocab_size=8193, n_embd=4096, n_layer=64, n_head=64, n_inner=16384,
                                             n_positions=1024, add_cross_attention=True, bos_token_id=8192,
                                             eos_token_id=8192))
    assert info["text_encoder"].params == sum(p.numel() for p in ref_enc.parameters())
    # GPT-2 ties its output head to the token embedding: count shared tensors once
    assert info["decoder"].params == sum(p.numel() for p in {id(p): p for p in ref_dec.parameters()}.values())
    assert ref_enc.config.num_layers + ref_dec.config.n_layer == 80  # Table 1: 16 + 64 layers
    transformer = info["text_encoder"].params + info["decoder"].params
    assert abs(transformer / 20e9 - 1) < 0.10  # Table 1: "20B"
    assert abs(info["detokenizer"].params / 600e6 - 1) < 0.10  # Sec. 2.1: "about 600M"


@pytest.mark.parametrize("argv, needle", [
    (["run", "parti", "--preset", "tiny", "--image-size", "36"], "multiple of 8"),
    (["run", "parti", "--preset", "tiny", "--image-size", "128"], "up to 64"),
    (["run", "parti", "--preset", "tiny", "--decode-tokens", "0"], "decode tokens 0 do not fit"),
    (["run", "parti", "--preset", "tiny", "--decode-tokens", "10"], "4x4 grid = 16 image tokens"),
    (["run", "parti", "--preset", "tiny", "--prompt", "word " * 40], "shorten the prompt"),
    (["run", "parti", "--preset", "tiny", "--guidance-scale", "-1"], "guidance"),
    (["run", "parti", "--preset", "tiny", "--weights", "."], "--weights is not supported"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_cli_run_writes_png_and_summary(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "parti", "--preset", "tiny", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase_calls"] == {"text_encoder": 1, "decode": 16, "detokenizer": 1}
    assert (out / summary["outputs"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
